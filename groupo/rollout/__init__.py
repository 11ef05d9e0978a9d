"""Rollout engines: prompts in, G completions per prompt out (see base.RolloutEngine).

Each engine builds itself from the run's configuration and a small `EngineContext`; the registry
maps `rollout.engine` names to those builders, and config validation reads its keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from groupo.config import Config
from groupo.distributed import Dist
from groupo.rollout.base import EngineError, RolloutEngine


@dataclass(frozen=True)
class EngineContext:
    """What an engine needs besides the configuration."""

    model: Any                 # the policy module whose weights are sampled (its trainer-side copy)
    tokenizer: Any
    run_dir: Path | None = None  # where engines with their own weights put the adapters they load
    world: Dist = field(default_factory=Dist)
    device: Any = "cpu"        # torch.device of the policy
    amp: str = "none"          # autocast kind of the trainer (groupo.models.precision)


def _hf(cfg: Config, ctx: EngineContext) -> RolloutEngine:
    from groupo.rollout.hf import HFEngine

    return HFEngine(ctx.model, ctx.tokenizer, batch_size=cfg.rollout.batch_size, autocast=ctx.amp)


def _vllm(cfg: Config, ctx: EngineContext) -> RolloutEngine:
    from groupo.rollout.vllm_config import from_config

    return from_config(cfg, ctx)


ENGINES: dict[str, Any] = {"hf": _hf, "vllm": _vllm}


def build_engine(cfg: Config, ctx: EngineContext) -> RolloutEngine:
    """The engine `cfg.rollout.engine` names, sampling from `ctx.model`'s weights."""
    if cfg.rollout.engine not in ENGINES:
        raise ValueError(f"unknown rollout engine {cfg.rollout.engine!r}; valid: {', '.join(ENGINES)}")
    return ENGINES[cfg.rollout.engine](cfg, ctx)


def describe(engine: RolloutEngine) -> str:
    """A few words on where the engine samples (empty for the in-process transformers engine)."""
    return engine.describe() if hasattr(engine, "describe") else ""


__all__ = ["ENGINES", "EngineContext", "EngineError", "RolloutEngine", "build_engine", "describe"]
