"""Run several reward functions on a batch and combine them into one weighted reward per sample.

Every function is called as TRL's GRPOTrainer calls it (`groupo.rewards.trl_compat`), with
keywords: ``fn(prompts=..., completions=..., completion_ids=..., completion_lengths=..., **columns,
trainer_state=..., log_extra=..., log_metric=...)``, where `columns` are the dataset columns
transposed to lists (one value per sample) and completions are message lists for chat prompts.
A function may return None for a sample ("no score"): that sample's total skips it (a sample no
function scores totals 0.0). A function that raises, returns the wrong number of values, a
non-number, NaN or infinity stops the run with a `RewardError` naming the function and the
sample; it never silently scores 0. "Raises" includes `SystemExit` and every other `BaseException`
but Ctrl-C: a reward that calls exit() would otherwise end the trainer with no word of why.

A function may be `async def` (TRL's async reward functions, `groupo.rewards.aio`): its call is
started on the reward event loop before the synchronous functions run, so they overlap; the same
rules apply to what it returns or raises. An async call that runs past its time limit
(`rewards.async_timeout_s`) is cancelled and its samples score None (counted in
`RewardLog.call_timeouts`, warned about): a remote service that hangs must not hang the run.

Each function's time is added to the `RewardLog` (`seconds`, logged as `time/reward/<name>`; an
async function's own time, not its wait for a slot); a call slower than SLOW_REWARD_S is warned
about once per function, since a reward that takes seconds per batch is otherwise invisible and
evaluation pays for it too.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import logging
import math
import numbers
import time
from collections.abc import Callable, Sequence
from typing import Any

from groupo.rewards import aio, symbolic
from groupo.rewards.base import RewardError, completion_text
from groupo.rewards.trl_compat import RewardLog, RewardState, trl_completions
from groupo.types import Completion, Problem

logger = logging.getLogger(__name__)

RewardFn = Callable[..., list]
SLOW_REWARD_S = 5.0  # seconds for one batch call of one function above which it is warned about
_warned_slow: set[str] = set()
SHARED = ("trainer_state", "log_extra", "log_metric")  # one value for the whole batch, not one per sample


def fn_name(fn: Any) -> str:
    inner = fn
    while hasattr(inner, "func"):  # functools.partial, trl_compat.Adapted
        inner = inner.func
    named = inner if hasattr(inner, "__qualname__") else type(inner)  # a callable object: its class
    return f"{getattr(named, '__module__', '?')}.{named.__qualname__}"


def _once(fn: RewardFn, lim: aio.AsyncLimits, **kwargs: Any) -> Any:
    """`fn`'s return value; an async function's awaited here (error path and tests only)."""
    out = fn(**kwargs)
    return aio.run(out, lim) if inspect.isawaitable(out) else out


def _first_bad_sample(fn: RewardFn, prompts: list, completions: list, kwargs: dict[str, list],
                      shared: dict[str, Any]) -> int | None:
    """Re-run `fn` one sample at a time to find the first sample it raises on (error path only)."""
    lim = getattr(fn, "limits", aio.DEFAULT_LIMITS)
    for i in range(len(completions)):
        one = {k: v[i:i + 1] for k, v in kwargs.items()}
        try:
            _once(fn, lim, prompts=prompts[i:i + 1], completions=completions[i:i + 1], **one, **shared)
        except KeyboardInterrupt:
            raise
        except BaseException:
            return i
    return None


def _failed(name: str, fn: RewardFn, e: BaseException, prompts: list, completions: list,
            kwargs: dict[str, list], shared: dict[str, Any]) -> RewardError:
    where = f"reward {name!r} ({fn_name(fn)})"
    if isinstance(e, RewardError):
        return RewardError(f"{where}: {e}")
    i = _first_bad_sample(fn, prompts, completions, kwargs, shared)
    sample = f" on sample {i} (completion {completion_text(completions[i])[:200]!r})" if i is not None else ""
    return RewardError(f"{where} raised {type(e).__name__}{sample}: {e}")


def _checked(name: str, fn: RewardFn, values: Any, completions: list) -> list[float | None]:
    """`values` as floats or None, one per completion; anything else is a RewardError."""
    where = f"reward {name!r} ({fn_name(fn)})"
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise RewardError(f"{where} returned {type(values).__name__}; expected a list of floats")
    values = list(values)
    if len(values) != len(completions):
        raise RewardError(f"{where} returned {len(values)} values for {len(completions)} completions")
    out: list[float | None] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        if hasattr(v, "item") and not isinstance(v, numbers.Number):
            v = v.item()  # 0-d tensors and numpy scalars
        if not isinstance(v, numbers.Real):
            raise RewardError(f"{where} returned {type(v).__name__} {v!r} for sample {i}; expected a float")
        if not math.isfinite(v):
            raise RewardError(f"{where} returned {v} for sample {i} "
                              f"(completion {completion_text(completions[i])[:200]!r})")
        out.append(float(v))
    return out


def _timed(name: str, fn: RewardFn, log: RewardLog, took: float, n: int) -> None:
    log.seconds[name] += took
    if took > SLOW_REWARD_S and name not in _warned_slow:
        _warned_slow.add(name)
        logger.warning("reward %r (%s) took %.1f s for %d completions (over %g s per call): it "
                       "slows every step and every evaluation", name, fn_name(fn), took, n, SLOW_REWARD_S)


def score(reward_fns: dict[str, tuple[RewardFn, float]], prompts: list, completions: list,
          columns: Sequence[dict[str, Any]],
          completion_ids: Sequence[Sequence[int]] | None = None, *,
          trainer_state: RewardState | None = None, log: RewardLog | None = None,
          messages: Sequence[list[dict]] | None = None, environments: Sequence[Any] | None = None,
          ) -> tuple[list[float], dict[str, list[float | None]]]:
    """(total_N, {name: values_N}): the weighted sum per sample and each function's raw values.

    prompts: N prompts (chat message lists, or strings), one per completion.
    completions: N completion texts; functions get them in TRL's form (`trl_completions`).
    columns: N dicts of dataset columns (each includes "answer").
    completion_ids: N token-id lists (or a "completion_ids" column); functions also get their
        lengths as `completion_lengths`.
    trainer_state: handed to functions as `trainer_state` (default: step 0 of 0).
    log: collects what functions pass to `log_extra` / `log_metric`, and the seconds each function
        took (`log.seconds[name]`, summed over calls; default: discarded).
    messages: for episodes with tools, each completion as its assistant and tool messages; functions
        then get these as `completions` (TRL's convention: the final answer is the last message).
    environments: each episode's environment instance, passed as `environments` (TRL's keyword).
    """
    n = len(completions)
    if len(prompts) != n or len(columns) != n:
        raise ValueError(f"score: {n} completions, {len(prompts)} prompts, {len(columns)} column rows")
    keys = sorted({k for row in columns for k in row} - {"prompt", "completion", "prompts", "completions", *SHARED})
    kwargs: dict[str, list] = {k: [row.get(k) for row in columns] for k in keys}
    if completion_ids is not None:
        kwargs["completion_ids"] = [list(ids) for ids in completion_ids]
    if "completion_ids" in kwargs and "completion_lengths" not in kwargs:
        kwargs["completion_lengths"] = [len(ids) for ids in kwargs["completion_ids"]]
    log = log if log is not None else RewardLog()
    shared = {"trainer_state": trainer_state if trainer_state is not None else RewardState(),
              "log_extra": log.log_extra, "log_metric": log.log_metric}
    if environments is not None:
        kwargs["environments"] = list(environments)
    prompts, texts = list(prompts), list(completions)
    completions = [list(m) for m in messages] if messages is not None else trl_completions(prompts, texts)
    timeouts_before = symbolic.stats["timeouts"]
    per_fn: dict[str, list[float | None]] = {}
    started: dict[str, tuple[concurrent.futures.Future, float]] = {}
    call = {"prompts": prompts, "completions": completions, **kwargs, **shared}
    for name, (fn, _) in reward_fns.items():  # async ones start on the loop, then the sync ones run meanwhile
        start = time.perf_counter()
        try:
            out = fn(**call)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # SystemExit, GeneratorExit ...: named like any other failure
            raise _failed(name, fn, e, prompts, completions, kwargs, shared) from e
        if inspect.isawaitable(out):
            started[name] = (aio.start(out, getattr(fn, "limits", aio.DEFAULT_LIMITS)), start)
            continue
        per_fn[name] = _checked(name, fn, out, completions)
        _timed(name, fn, log, time.perf_counter() - start, n)
    for k, (name, (future, start)) in enumerate(started.items()):
        fn = reward_fns[name][0]
        lim = getattr(fn, "limits", aio.DEFAULT_LIMITS)
        took = time.perf_counter() - start
        try:
            values, took = aio.result(future, lim, waves=1 + k // lim.max_concurrency)
            per_fn[name] = _checked(name, fn, values, completions)
        except TimeoutError:
            per_fn[name] = [None] * n
            log.call_timeouts[name] += 1
            logger.warning("reward %r (%s) ran past its %g s limit (rewards.async_timeout_s) on %d completions: "
                           "they score None from it", name, fn_name(fn), lim.timeout_s, n)
        except KeyboardInterrupt:
            raise
        except BaseException as e:
            raise _failed(name, fn, e, prompts, completions, kwargs, shared) from e
        _timed(name, fn, log, took, n)
    per_fn = {name: per_fn[name] for name in reward_fns}
    for name, (fn, _) in reward_fns.items():
        while not hasattr(fn, "pop_counters") and hasattr(fn, "func"):  # through Limited, Adapted, partial
            fn = fn.func
        for k, v in (fn.pop_counters() if hasattr(fn, "pop_counters") else {}).items():
            log.counters[name][k] += v
    log.timeouts += symbolic.stats["timeouts"] - timeouts_before
    total = [sum(w * per_fn[name][i] for name, (_, w) in reward_fns.items() if per_fn[name][i] is not None)
             for i in range(n)]
    return [float(t) for t in total], per_fn


def score_completions(reward_fns: dict[str, tuple[RewardFn, float]], problems: Sequence[Problem],
                      completions: Sequence[Completion], *, trainer_state: RewardState | None = None,
                      log: RewardLog | None = None) -> tuple[list[float], dict[str, list[float | None]]]:
    """`score` of sampled completions, `problems[i]` the problem of `completions[i]`: each gets its
    problem's prompt and columns, its token ids, and for episodes its messages and environment."""
    episodes = any(c.messages is not None for c in completions)
    return score(reward_fns, [p.messages for p in problems], [c.text for c in completions],
                 [p.columns for p in problems], completion_ids=[c.token_ids for c in completions],
                 trainer_state=trainer_state, log=log,
                 messages=[c.messages for c in completions] if episodes else None,
                 environments=[c.environment for c in completions] if episodes else None)
