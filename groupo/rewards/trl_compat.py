"""Calling reward functions exactly as TRL's `GRPOTrainer._calculate_rewards` does (TRL 1.16).

TRL calls every reward function with keywords:

    fn(prompts=..., completions=..., completion_ids=..., **columns,
       trainer_state=..., log_extra=..., log_metric=...)

- `completions` are message lists, ``[{"role": "assistant", "content": text}]``, when the prompts
  are conversational (a list of messages with "role"), and plain strings when they are text.
  groupo's prompts are chat messages, so its rewards get the message-list form; groupo's built-in
  rewards read both (`groupo.rewards.base.completion_text`).
- `columns` are every dataset column except "prompt", "completion" and "completion_ids", one value
  per completion. `rewards.column_aliases` exposes a column under a second name (TRL's
  `accuracy_reward` reads `solution`; `{solution: answer}` hands it groupo's reference answer).
- `trainer_state` has TRL's (transformers') `TrainerState` attributes `global_step`, `max_steps`
  and `epoch`; `log_extra(column, values)` and `log_metric(name, value)` collect into a
  `RewardLog`, whose metric means the trainer logs beside its own (as `reward_log/<name>`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from groupo.rewards.base import RewardError, completion_text


@dataclass
class RewardState:
    """What a reward sees as `trainer_state`: the attributes of transformers' `TrainerState` that
    reward schedules read. global_step: optimizer steps done before this batch was sampled;
    epoch: training prompts drawn so far / training set size."""

    global_step: int = 0
    max_steps: int = 0
    epoch: float = 0.0


@dataclass
class RewardLog:
    """Sink for the `log_extra` / `log_metric` callables TRL hands to reward functions, and for
    the seconds `score` spent in each function (`seconds`: name -> total over the calls)."""

    extra: dict[str, list] = field(default_factory=lambda: defaultdict(list))
    metrics: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    timeouts: int = 0  # symbolic answer checks that timed out during the calls (groupo.rewards.symbolic)
    call_timeouts: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # async calls cut off, per name
    # name -> counts a reward keeps of its own work (the judge's requests, failures, tokens ...: `pop_counters`)
    counters: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(float)))

    def log_extra(self, column: str, values: list) -> None:
        self.extra[column].extend(values)

    def log_metric(self, name: str, value: float) -> None:
        self.metrics[name].append(float(value))

    def metric_means(self) -> dict[str, float]:
        return {f"reward_log/{k}": sum(v) / len(v) for k, v in self.metrics.items() if v}

    def time_metrics(self) -> dict[str, float]:
        """`time/reward/<name>`: seconds spent in each function, summed over the calls logged."""
        return {f"time/reward/{metric_name(k)}": v for k, v in self.seconds.items()}


def metric_name(name: str) -> str:
    """A reward's name as metric keys carry it: a file spec, /path/to/rewards.py:fn, by its file's
    name, rewards.py:fn (the path put the machine's folders into metrics.jsonl, and a slash
    starts a TensorBoard tag level: `time/reward//home/...`). Other names are unchanged."""
    where, sep, func = name.rpartition(":")
    return f"{where.rsplit('/', 1)[-1]}:{func}" if sep and where.endswith(".py") else name


def is_conversational(prompt: Any) -> bool:
    """TRL's `is_conversational` for one prompt: a list whose first item is a dict with "role"."""
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], dict) and "role" in prompt[0]


def trl_completions(prompts: list, texts: list[str]) -> list:
    """The completions as TRL passes them: message lists for conversational prompts, else strings."""
    if prompts and is_conversational(prompts[0]):
        return [[{"role": "assistant", "content": t}] for t in texts]
    return list(texts)


class Adapted:
    """A reward function with dataset columns renamed in (`aliases`: keyword -> column) and, with
    `as_text`, completions handed over as plain strings (for functions written that way)."""

    def __init__(self, fn, aliases: dict[str, str], as_text: bool):
        self.func, self.aliases, self.as_text = fn, dict(aliases), as_text

    def __call__(self, **kwargs: Any) -> list:
        for name, column in self.aliases.items():
            if column not in kwargs:
                have = ", ".join(k for k in kwargs if k not in ("trainer_state", "log_extra", "log_metric"))
                raise RewardError(f"rewards.column_aliases: {name}: {column!r} is not a column of this task "
                                  f"(keywords: {have})")
            kwargs[name] = kwargs[column]
        if self.as_text and "completions" in kwargs:
            kwargs["completions"] = [completion_text(c) for c in kwargs["completions"]]
        return self.func(**kwargs)


def adapt(fn, aliases: dict[str, str], as_text: bool):
    """`fn` itself when there is nothing to adapt, else an `Adapted` wrapper."""
    return Adapted(fn, aliases, as_text) if aliases or as_text else fn
