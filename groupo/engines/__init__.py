"""Engines make tokens: prompts in, G completions per prompt out (see base.Engine).

Each engine builds itself from the run's configuration and a small `EngineContext`; the registry
maps `rollout.engine` names to those builders, and config validation reads its keys.

    hf.py           transformers' model in this process (kv.py its KV cache, prefixes.py the rows kept
                    across an episode's rounds)
    vllm.py         a colocated `vllm.LLM` (vllm_config.py: what it needs from the run's configuration)
    vllm_client.py  the client of a vLLM server that `groupo serve` (serve.py) starts
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from groupo.config import Config
from groupo.distributed import Dist
from groupo.engines.base import Engine, EngineError


@dataclass(frozen=True)
class EngineContext:
    """What an engine needs besides the configuration."""

    model: Any                 # the policy module whose weights are sampled (its trainer-side copy)
    tokenizer: Any
    run_dir: Path | None = None  # where engines with their own weights put the adapters they load
    world: Dist = field(default_factory=Dist)
    device: Any = "cpu"        # torch.device of the policy
    amp: str = "none"          # autocast kind of the trainer (groupo.models.precision)


def _hf(cfg: Config, ctx: EngineContext) -> Engine:
    from groupo.engines.hf import HFEngine

    return HFEngine(ctx.model, ctx.tokenizer, batch_size=cfg.rollout.batch_size, autocast=ctx.amp)


def _vllm(cfg: Config, ctx: EngineContext) -> Engine:
    """A server's client when rollout.vllm.url is set (rank 0 writes the adapters it loads, every rank
    names them), else a `vllm.LLM` in this process with its own copy of the base weights."""
    from groupo.engines.vllm_config import vllm_dtype, vllm_model_path, vllm_quantization

    R, world, run_dir = cfg.rollout, ctx.world, Path(ctx.run_dir)
    if R.vllm.url:
        from groupo.engines.vllm_client import VLLMServerEngine

        return VLLMServerEngine(ctx.model, ctx.tokenizer, url=R.vllm.url, adapter_dir=run_dir / "vllm-adapters",
                                lora_rank=cfg.lora.rank, world=world, timeout_s=R.vllm.timeout_s)
    from groupo.engines.vllm import VLLMEngine

    return VLLMEngine(ctx.model, ctx.tokenizer, model_path=str(vllm_model_path(cfg.model)), lora_rank=cfg.lora.rank,
                      device=ctx.device, seed=cfg.train.seed + world.rank, dtype=vllm_dtype(cfg.model, ctx.amp),
                      adapter_dir=run_dir / "vllm-adapters" / (f"rank{world.rank}" if world.enabled else ""),
                      max_model_len=R.vllm.max_model_len or None, memory_share=R.vllm.memory_share,
                      kv_cache_gb=R.vllm.kv_cache_gb,
                      quantization=vllm_quantization(cfg.model, getattr(ctx.device, "type", ctx.device) == "cuda"))


ENGINES: dict[str, Any] = {"hf": _hf, "vllm": _vllm}


def build_engine(cfg: Config, ctx: EngineContext) -> Engine:
    """The engine `cfg.rollout.engine` names, sampling from `ctx.model`'s weights."""
    if cfg.rollout.engine not in ENGINES:
        raise ValueError(f"unknown rollout engine {cfg.rollout.engine!r}; valid: {', '.join(ENGINES)}")
    return ENGINES[cfg.rollout.engine](cfg, ctx)


__all__ = ["ENGINES", "Engine", "EngineContext", "EngineError", "build_engine"]
