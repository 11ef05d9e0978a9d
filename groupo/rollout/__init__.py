"""Rollout engines: prompts in, G completions per prompt out (see base.RolloutEngine)."""

from __future__ import annotations

from typing import Any

from groupo.rollout.base import EngineError, RolloutEngine


def _hf(model, tokenizer, *, batch_size: int = 64, autocast: str = "auto", **_) -> RolloutEngine:
    from groupo.rollout.hf import HFEngine

    return HFEngine(model, tokenizer, batch_size=batch_size, autocast=autocast)


def _vllm(model, tokenizer, *, url: str = "", **kw) -> RolloutEngine:
    """Colocated (a vllm.LLM in this process), or a running server when `url` is given."""
    if url:
        from groupo.rollout.vllm_server import VLLMServerEngine

        return VLLMServerEngine(model, tokenizer, url=url, **kw)
    from groupo.rollout.vllm import VLLMEngine

    return VLLMEngine(model, tokenizer, **kw)


ENGINES: dict[str, Any] = {"hf": _hf, "vllm": _vllm}


def make_engine(name: str, model, tokenizer, **kw) -> RolloutEngine:
    """The engine registered as `name`, sampling from `model`'s weights. Keywords go to its
    constructor; each engine takes the ones it needs (see hf.HFEngine, vllm.VLLMEngine)."""
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; valid: {', '.join(ENGINES)}")
    return ENGINES[name](model, tokenizer, **kw)


__all__ = ["ENGINES", "EngineError", "RolloutEngine", "make_engine"]
