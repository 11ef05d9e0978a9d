"""Health alarms: pure functions of the metrics history that name what went wrong and what to try.

Each check takes the history (the metrics.jsonl records so far, oldest first, keys of
groupo.report.keys), the `alarms` config section and the name of the task's evaluation reward,
and returns (message, advice) when its condition holds at the newest record, else None.
`fired` turns the checks into `Alarm`s on the step where a condition starts to hold (not again
while it persists), so a run that stays broken logs one line, not one per step. `nan` is the
exception: it fires on every step it holds (the run stops at the first by default).

Failing reward functions (raising, NaN, wrong length) already stop the run with a RewardError in
groupo.rewards.combine; the reward_fn alarm covers the quiet failures (None, timeouts).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from groupo.config import AlarmsConfig
from groupo.report.keys import fn_key

History = list[dict[str, Any]]
Check = Callable[[History, AlarmsConfig, str], "tuple[str, str] | None"]
FIRST = 3  # steps whose mean is the "initial" level of a quantity (length, entropy)


def lookback(cfg: AlarmsConfig) -> tuple[int, int]:
    """(first, last): the alarms read at most the `first` oldest records (a quantity's initial level
    is the mean of its first FIRST values, which may start a few records in) and the `last` newest
    (their longest window, plus the record before it that `fired` compares against), so a history
    trimmed to those behaves as the whole one."""
    windows = [v for v in vars(cfg).values() if type(v) is int]
    return 10 * FIRST, max([FIRST, *windows]) + FIRST + 2


class TrainingStopped(RuntimeError):
    """An alarm set to `stop` fired; the message names it, the step and the last good checkpoint."""


@dataclass(frozen=True)
class Alarm:
    name: str      # the check's key in the alarms config section
    step: int
    action: str    # "stop" or "warn"
    message: str
    advice: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        return f"alarm {self.name} at step {self.step} ({self.action}): {self.message}. {self.advice}"


def _tail(history: History, key: str, n: int) -> list[float] | None:
    """The newest `n` values of `key`, or None unless each of the newest n records has one."""
    if len(history) < n:
        return None
    vals = [r.get(key) for r in history[-n:]]
    return None if any(v is None for v in vals) else [float(v) for v in vals]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _halves(xs: list[float]) -> tuple[float, float]:
    h = len(xs) // 2
    return _mean(xs[:h]), _mean(xs[len(xs) - h:])


def _first(history: History, key: str) -> float | None:
    vals = [float(r[key]) for r in history if r.get(key) is not None][:FIRST]
    return _mean(vals) if len(vals) == FIRST else None


NAN_KEYS = ("loss/", "reward/", "optim/grad_norm", "rollout/logprob_mismatch", "rollout/mismatch_kl")


def check_nan(history: History, cfg: AlarmsConfig, eval_reward: str):
    last = history[-1]
    bad = [k for k, v in last.items() if k.startswith(NAN_KEYS) and isinstance(v, float) and not math.isfinite(v)]
    if not bad:
        return None
    return (f"{' and '.join(f'{k} = {last[k]}' for k in bad)} at step {last['step']}",
            "This step's weights are not saved: the newest checkpoint is the last good one. Lower train.lr, "
            "keep train.max_grad_norm > 0, check the reward functions, then `groupo train --resume RUN_DIR`")


def check_kl(history: History, cfg: AlarmsConfig, eval_reward: str):
    last = history[-1].get("loss/kl")
    advice = "Raise algorithm.beta, lower train.lr or algorithm.eps_high: the policy is drifting from the reference"
    if last is not None and last > cfg.kl_max:
        return f"KL to the reference is {last:.3g} (above alarms.kl_max = {cfg.kl_max:g})", advice
    kl = _tail(history, "loss/kl", cfg.kl_rise_steps)
    if kl is None or kl[-1] < 1e-3:  # below 1e-3 the rise is rounding noise of a policy at the reference
        return None
    rises = sum(b > a for a, b in itertools.pairwise(kl))
    if rises >= 0.8 * (len(kl) - 1) and kl[-1] >= cfg.kl_rise_factor * max(kl[0], 1e-12):
        return (f"KL to the reference rose steadily over {len(kl)} steps, {kl[0]:.3g} -> {kl[-1]:.3g} "
                f"(x{kl[-1] / max(kl[0], 1e-12):.1f})"), advice
    return None


def check_no_signal(history: History, cfg: AlarmsConfig, eval_reward: str):
    zv = _tail(history, "rollout/zero_var_group_frac", cfg.no_signal_steps)
    if zv is None or min(zv) < cfg.no_signal_frac:
        return None
    share = "every group" if min(zv) == 1.0 else f"at least {min(zv):.0%} of the groups"
    return (f"no learning signal: in {share} all completions got the same reward, in each of the last "
            f"{len(zv)} steps, so the advantages (and the gradient) are 0",
            "Try a larger rollout.group_size, an easier task (task.difficulty) or a task the model sometimes "
            "solves, or dynamic sampling (algorithm.dynamic_sampling=true, or algorithm.preset=dapo)")


def check_reward_hacking(history: History, cfg: AlarmsConfig, eval_reward: str):
    acc = _tail(history, "accuracy/train", cfg.hacking_window)
    if acc is None:
        return None
    acc0, acc1 = _halves(acc)
    if acc0 - acc1 < cfg.hacking_delta:
        return None
    for key in sorted(history[-1]):
        if not key.startswith("reward/fn/") or key == fn_key(eval_reward):
            continue
        other = _tail(history, key, cfg.hacking_window)
        if other is not None and (o := _halves(other))[1] - o[0] >= cfg.hacking_delta:
            return (f"signs of reward hacking: {key} rose {o[0]:.2f} -> {o[1]:.2f} while accuracy/train fell "
                    f"{acc0:.2f} -> {acc1:.2f} (means of the halves of the last {len(acc)} steps)",
                    "The policy may be learning the shaping reward instead of the task: lower its weight in "
                    "rewards.funcs and read the completions in samples.jsonl or the report")
    return None


def check_length(history: History, cfg: AlarmsConfig, eval_reward: str):
    n = cfg.length_steps
    trunc = _tail(history, "completion/truncated_frac", n)
    if trunc is not None and min(trunc) >= cfg.truncated_frac:
        return (f"at least {min(trunc):.0%} of completions hit the length limit in each of the last {n} steps",
                "Truncated answers score badly and say nothing: raise rollout.max_new_tokens, add an overlong "
                "penalty (rewards.overlong_buffer) or mask them (algorithm.mask_truncated=true)")
    base, lens = _first(history, "completion/len_mean"), _tail(history, "completion/len_mean", n)
    if base is None or lens is None or len(history) < FIRST + n:
        return None
    if max(lens) < cfg.short_len_ratio * base:
        return (f"completions collapsed to {lens[-1]:.1f} tokens on average, from {base:.1f} in the first "
                f"{FIRST} steps", "Short completions may game a length or format reward: check samples, "
                "lower train.lr, or reward correctness only")
    return None


def check_answer_tags(history: History, cfg: AlarmsConfig, eval_reward: str):
    frac = history[-1].get("completion/multi_answer_frac")
    if frac is None or frac < cfg.multi_answer_frac:
        return None
    return (f"{frac:.0%} of completions hold more than one answer tag (<answer> or \\boxed)",
            "A completion listing several answers may be hedging against the checker: the last one counts; "
            "reward exactly one answer (tag_count / format rewards) or check the extraction order")


def check_reward_fn(history: History, cfg: AlarmsConfig, eval_reward: str):
    last = history[-1]
    for key in sorted(last):
        v = last[key]
        if key.startswith("reward/none_frac/") and v is not None and v >= cfg.reward_fn_frac:
            return (f"reward {key.split('/', 2)[2]!r} returned None (no score) for {v:.0%} of the samples",
                    "Such samples score 0 from it: check that the function reads the columns it needs; an async "
                    "function past rewards.async_timeout_s, or a judge that failed or was not understood, "
                    "scores None too (the log's warnings, judge/failure_frac, judge/unparsed_frac)")
    t = last.get("reward/timeout_frac")
    if t is not None and t >= cfg.reward_fn_frac:
        return (f"the symbolic answer check timed out on {t:.0%} of the samples (scored 0)",
                "Raise rewards.timeout_s, or shorten completions (rollout.max_new_tokens)")
    g = last.get("reward/gold_unparsed_frac")
    if g is not None and g >= cfg.gold_unparsed_frac:
        return (f"{g:.0%} of the step's reference answers are neither a number nor math the checker reads",
                "Every completion scores 0 on them: check task.answer_field, or task.skip_bad_rows=true")
    return None


def check_judge(history: History, cfg: AlarmsConfig, eval_reward: str):
    last = history[-1]
    failed, unparsed = last.get("judge/failure_frac"), last.get("judge/unparsed_frac")
    if failed is not None and failed >= cfg.judge_frac:
        return (f"the judge failed on {failed:.0%} of its requests (unreachable, timed out or erroring; those samples "
                "score None)", "Check that the server at rewards.judge.url is up and answers within "
                "rewards.judge.timeout_s (the log names the first failure of each kind); the run goes on meanwhile")
    if unparsed is not None and unparsed >= cfg.judge_frac:
        return (f"{unparsed:.0%} of the judge's replies did not parse under rewards.judge.parse (those samples score "
                "None)", "Read RUN_DIR/judge/replies-rank0.jsonl: a judge that ignores the format needs a stronger "
                "model, a clearer rewards.judge.template, or more rewards.judge.max_tokens")
    return None


def check_entropy(history: History, cfg: AlarmsConfig, eval_reward: str):
    base, ent = _first(history, "loss/entropy"), _tail(history, "loss/entropy", 1)
    acc = _tail(history, "accuracy/train", cfg.entropy_window)
    if base is None or ent is None or acc is None or len(history) < max(FIRST + 1, cfg.entropy_window):
        return None
    a0, a1 = _halves(acc)
    if ent[0] >= cfg.entropy_ratio * base or abs(a1 - a0) >= cfg.hacking_delta:
        return None
    return (f"entropy collapse: entropy fell to {ent[0]:.3g} from {base:.3g} while accuracy/train stayed at "
            f"{a1:.2f} over the last {len(acc)} steps",
            "The policy stopped exploring without getting better: raise rollout.temperature, lower train.lr, or "
            "use clip-higher (algorithm.eps_high, preset dapo)")


CHECKS: dict[str, Check] = {
    "nan": check_nan, "kl": check_kl, "no_signal": check_no_signal, "reward_hacking": check_reward_hacking,
    "length": check_length, "answer_tags": check_answer_tags, "reward_fn": check_reward_fn,
    "judge": check_judge, "entropy": check_entropy,
}


def fired(history: History, cfg: AlarmsConfig, eval_reward: str = "accuracy") -> list[Alarm]:
    """The alarms that fire at the newest record of `history`: its condition holds now and did not
    at the record before (nan: whenever it holds). Alarms set to `off` are skipped."""
    if not history:
        return []
    out = []
    for name, check in CHECKS.items():
        action = getattr(cfg, name)
        if action == "off" or (found := check(history, cfg, eval_reward)) is None:
            continue
        if name != "nan" and len(history) > 1 and check(history[:-1], cfg, eval_reward) is not None:
            continue
        out.append(Alarm(name, int(history[-1]["step"]), action, *found))
    return out


def loss_note(num_iterations: int, beta: float) -> str | None:
    """The start-up line on what the logged loss means (the commonest misreading of GRPO logs)."""
    if num_iterations != 1 or beta != 0:
        return None
    return ("note: with mu = 1 (algorithm.num_iterations) and beta = 0 the logged loss (loss/total) is ~0 by "
            "construction: the ratio is exactly 1 and a group's advantages sum to 0, but its gradient is not 0. "
            "The signal is reward/mean and accuracy/train (and the held-out accuracy); groups whose rewards are "
            "all equal (rollout/zero_var_group_frac) give no gradient")
