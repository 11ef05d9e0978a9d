"""Rollout engines: prompts in, G completions per prompt out (see base.RolloutEngine)."""

from __future__ import annotations

from typing import Any

from groupo.rollout.base import RolloutEngine


def _hf(model, tokenizer, **kw) -> RolloutEngine:
    from groupo.rollout.hf import HFEngine

    return HFEngine(model, tokenizer, **kw)


def _vllm(model, tokenizer, **kw) -> RolloutEngine:
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise ImportError("rollout.engine = 'vllm' needs vLLM: pip install 'groupo[vllm]' "
                          "(GPU only); or use rollout.engine = 'hf'") from None
    raise NotImplementedError("the vLLM rollout engine is not implemented yet; use rollout.engine = 'hf'")


ENGINES: dict[str, Any] = {"hf": _hf, "vllm": _vllm}


def make_engine(name: str, model, tokenizer, **kw) -> RolloutEngine:
    """The engine registered as `name`, sampling from `model` (keywords go to its constructor)."""
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; valid: {', '.join(ENGINES)}")
    return ENGINES[name](model, tokenizer, **kw)


__all__ = ["ENGINES", "RolloutEngine", "make_engine"]
