"""Rewards that come from a model rather than a verifier: a reward model (a sequence classifier)
and an LLM judge (a chat model asked for a verdict, in this process or behind an OpenAI-compatible
server). Both are reward functions in TRL's signature; the trainer and `groupo eval` add them to
the configured rewards with `with_model_rewards`.

    reward_model.py   rewards.reward_model: a frozen classifier scoring prompt + completion
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from groupo.config import Config, ConfigError


def model_rewards(cfg: Config, *, device: Any = "cpu", run_dir: Path | None = None, rank: int = 0) -> dict:
    """name -> (function, weight) of the rewards.reward_model and rewards.judge sections that are set."""
    out: dict[str, tuple[Any, float]] = {}
    if cfg.rewards.reward_model.path:
        from groupo.judges.reward_model import load_reward_model

        out["reward_model"] = (load_reward_model(cfg.rewards.reward_model, device), cfg.rewards.reward_model.weight)
    return out


def with_model_rewards(reward_fns: dict, cfg: Config, **kwargs: Any) -> dict:
    """`reward_fns` plus the model rewards (`model_rewards`); a name taken twice is a ConfigError."""
    extra = model_rewards(cfg, **kwargs)
    if twice := sorted(set(extra) & set(reward_fns)):
        raise ConfigError(f"rewards.funcs names {twice[0]!r}, which rewards.{twice[0]} adds too: rename the function")
    return {**reward_fns, **extra}
