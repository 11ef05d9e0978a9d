"""`async def` reward functions (TRL's async rewards): the same values, None and error rules as
synchronous ones, calls in flight together up to rewards.max_concurrency, overlapping the
synchronous functions, and cut off at rewards.async_timeout_s with None rather than a hung step."""

import asyncio
import functools
import logging
import threading
import time

import pytest

from groupo.config import RewardsConfig
from groupo.rewards import RewardError, aio, resolve_rewards, score
from groupo.rewards.trl_compat import RewardLog

PROMPT = [{"role": "user", "content": "What is 3 + 4?"}]
TEXTS = ["7", "<answer>7</answer>", "8"]
ROWS = [{"answer": "7"}] * 3


def _score(fns, **kw):
    return score(fns, [PROMPT] * 3, TEXTS, ROWS, **kw)


def test_an_async_reward_scores_as_a_sync_one_and_sums_with_it():
    async def has_tag(prompts, completions, **kw):
        await asyncio.sleep(0)
        return [1.0 if "<answer>" in c[0]["content"] else None for c in completions]

    fns = {"has_tag": (has_tag, 0.5), **resolve_rewards({"accuracy": 1.0}, {})}
    total, per_fn = _score(fns)
    assert per_fn == {"has_tag": [None, 1.0, None], "accuracy": [1.0, 1.0, 0.0]}
    assert total == [1.0, 1.5, 0.0]


def test_calls_run_together_up_to_max_concurrency():
    state = {"active": 0, "peak": 0}

    async def meet(prompts, completions, **kw):
        state["active"] += 1
        state["peak"] = max(state["peak"], state["active"])
        deadline = time.monotonic() + 5
        while state["peak"] < 2 and time.monotonic() < deadline:  # waits for a second call to be in flight
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        state["active"] -= 1
        return [1.0 if state["peak"] >= 2 else 0.0] * len(completions)

    cfg = RewardsConfig(max_concurrency=2)
    lim = aio.limits(cfg.max_concurrency, cfg.async_timeout_s)
    fns = {name: (aio.Limited(meet, lim), 1.0) for name in ("a", "b", "c")}
    _, per_fn = _score(fns)
    assert state["peak"] == 2  # three calls, at most two at once
    assert per_fn["a"] == per_fn["b"] == [1.0] * 3  # the first two met: they ran at the same time


def test_async_calls_overlap_the_sync_functions():
    seen = threading.Event()

    def sync_first(prompts, completions, **kw):
        seen.set()
        return [0.0] * len(completions)

    async def waits_for_sync(prompts, completions, **kw):
        ok = await asyncio.to_thread(seen.wait, 5)  # only true if the sync function ran while this one waited
        return [float(ok)] * len(completions)

    _, per_fn = _score({"waits": (waits_for_sync, 1.0), "sync": (sync_first, 1.0)})
    assert per_fn["waits"] == [1.0] * 3


def test_a_call_past_its_limit_scores_none_and_is_counted(caplog):
    async def hangs(prompts, completions, **kw):
        await asyncio.sleep(60)
        return [1.0] * len(completions)

    fns = resolve_rewards(RewardsConfig(funcs={"accuracy": 1.0}, async_timeout_s=0.2), {})
    fns["hangs"] = (aio.Limited(hangs, aio.limits(8, 0.2)), 1.0)
    log, start = RewardLog(), time.monotonic()
    with caplog.at_level(logging.WARNING, logger="groupo.rewards.combine"):
        total, per_fn = _score(fns, log=log)
    assert time.monotonic() - start < 5
    assert per_fn["hangs"] == [None] * 3 and total == [1.0, 1.0, 0.0]
    assert log.call_timeouts == {"hangs": 1}
    assert "ran past its 0.2 s limit (rewards.async_timeout_s)" in caplog.text


def test_an_async_reward_that_raises_is_named_with_its_sample():
    async def picky(prompts, completions, **kw):
        if any(c[0]["content"] == "8" for c in completions):
            raise ValueError("no eights")
        return [1.0] * len(completions)

    with pytest.raises(RewardError, match=r"reward 'picky' \(.*picky\) raised ValueError on sample 2 "
                                          r"\(completion '8'\): no eights"):
        _score({"picky": (picky, 1.0)})


@pytest.mark.parametrize(("values", "message"), [([1.0], "returned 1 values for 3 completions"),
                                                 ([1.0, float("nan"), 0.0], "returned nan for sample 1")])
def test_bad_async_output_is_an_error(values, message):
    async def bad(prompts, completions, **kw):
        return values

    with pytest.raises(RewardError, match=message):
        _score({"bad": (bad, 1.0)})


def test_async_forms_are_recognised_and_resolved_from_files(tmp_path):
    class Judge:
        async def __call__(self, prompts, completions, **kw):
            return [0.5] * len(completions)

    async def f(prompts, completions, scale=1.0, **kw):
        return [scale] * len(completions)

    assert aio.is_async(f) and aio.is_async(functools.partial(f, scale=2.0)) and aio.is_async(Judge())
    assert not aio.is_async(lambda **kw: [])
    (tmp_path / "r.py").write_text("import asyncio\n\nasync def later(prompts, completions, **kw):\n"
                                   "    await asyncio.sleep(0.1)\n    return [2.0] * len(completions)\n")
    name = f"{tmp_path / 'r.py'}:later"
    fns = resolve_rewards(RewardsConfig(funcs={name: 1.0}, max_concurrency=3, async_timeout_s=7.0,
                                        completion_format="text"), {})
    fn = fns[name][0]
    assert isinstance(fn, aio.Limited) and (fn.limits.max_concurrency, fn.limits.timeout_s) == (3, 7.0)
    log = RewardLog()
    assert _score(fns, log=log)[1][name] == [2.0] * 3
    assert 0.1 <= log.seconds[name] < 5  # the call's own time
