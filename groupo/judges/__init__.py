"""Rewards that come from a model rather than a verifier: a reward model (a sequence classifier)
and an LLM judge (a chat model asked for a verdict, in this process or behind an OpenAI-compatible
server). Both are reward functions in TRL's signature; the trainer and `groupo eval` add them to
the configured rewards with `with_model_rewards`.

    reward_model.py   rewards.reward_model: a frozen classifier scoring prompt + completion
    judge.py          rewards.judge: the judge as an async reward, its backends, its record of replies
    client.py         an OpenAI-compatible chat client (standard library only)
What the judge is asked and how its replies are read is pure text work: groupo.rewards.judging.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from groupo.config import Config, ConfigError

log = logging.getLogger(__name__)
MODEL_REWARDS = ("reward_model", "judge")  # the names these rewards take in the run's reward functions


def model_rewards(cfg: Config, *, device: Any = "cpu", run_dir: Path | None = None, rank: int = 0) -> dict:
    """name -> (function, weight) of the rewards.reward_model and rewards.judge sections that are set."""
    out: dict[str, tuple[Any, float]] = {}
    if cfg.rewards.reward_model.path:
        from groupo.judges.reward_model import load_reward_model

        out["reward_model"] = (load_reward_model(cfg.rewards.reward_model, device), cfg.rewards.reward_model.weight)
    if cfg.rewards.judge.url or cfg.rewards.judge.model:
        from groupo.rewards import aio

        judge = build_judge(cfg, device=device, run_dir=run_dir, rank=rank)
        out["judge"] = (aio.Limited(judge, aio.limits(cfg.rewards.max_concurrency, cfg.rewards.async_timeout_s)),
                        cfg.rewards.judge.weight)
    return out


def build_judge(cfg: Config, *, device: Any = "cpu", run_dir: Path | None = None, rank: int = 0):
    """The `Judge` rewards.judge describes: against its server, or its model loaded here (frozen)."""
    from groupo.judges.judge import Judge, LocalBackend, Record, RemoteBackend
    from groupo.rewards.judging import load_template, parse_rule

    J = cfg.rewards.judge
    record = Record(Path(run_dir) / "judge" / f"replies-rank{rank}.jsonl") if run_dir is not None else None
    common = {"template": load_template(J.template), "rule": parse_rule(J.parse), "group": J.group, "record": record,
              "seeded": J.temperature > 0, "think": J.think}
    if J.url:
        from groupo.judges.client import ChatClient, RequestFailed

        client = ChatClient(J.url, api_key=os.environ.get(J.api_key_env) if J.api_key_env else None,
                            timeout_s=J.timeout_s)
        try:
            client.models(timeout_s=min(5.0, J.timeout_s))
        except RequestFailed as e:  # not fatal: the server may come up later; until then requests fail, counted
            log.warning("rewards.judge.url: %s does not answer (%s); its requests fail (judge/failure_frac, the "
                        "judge alarm) until it does", client.url, e)
        backend = RemoteBackend(client, J.model, max_tokens=J.max_tokens, temperature=J.temperature,
                                retries=J.retries, max_concurrency=J.max_concurrency)
        return Judge(backend, **common)
    from groupo.engines.hf import HFEngine
    from groupo.models import load_model

    model, tokenizer = load_model(J.model, dtype="float32", device=device)
    model.requires_grad_(False)
    engine = HFEngine(model, tokenizer, batch_size=J.max_concurrency, autocast=cfg.model.autocast)
    backend = LocalBackend(engine, tokenizer, max_tokens=J.max_tokens, temperature=J.temperature)
    return Judge(backend, special_tokens=backend.special_tokens(), **common)


def with_model_rewards(reward_fns: dict, cfg: Config, **kwargs: Any) -> dict:
    """`reward_fns` plus the model rewards (`model_rewards`); a name taken twice is a ConfigError."""
    extra = model_rewards(cfg, **kwargs)
    if twice := sorted(set(extra) & set(reward_fns)):
        raise ConfigError(f"rewards.funcs names {twice[0]!r}, which rewards.{twice[0]} adds too: rename the function")
    return {**reward_fns, **extra}
