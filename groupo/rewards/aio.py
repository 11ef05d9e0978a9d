"""Async reward functions: `async def` rewards in TRL's signature, run concurrently on one event loop.

As in TRL's GRPOTrainer, the loop lives on a daemon thread for the whole process (started on the
first async call): a function may keep a client (an HTTP session, an OpenAI client) bound to the
loop across steps, which a fresh loop per call would break. `score` starts every async function's
call on the loop first and runs the synchronous ones meanwhile, so a judge waiting on the network
costs the step no more than the slowest of the two.

`AsyncLimits` bounds the calls: at most `max_concurrency` in flight at once (each call scores a
whole batch; a function that wants concurrency per sample gathers inside, as the LLM judge does),
and each at most `timeout_s` seconds, after which it is cancelled and its samples score None.
`limits(max_concurrency, timeout_s)` returns one shared object per setting, so every function
resolved from the same configuration shares one bound.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

GRACE_S = 5.0  # beyond a call's own limit, how long the caller waits before deciding the loop is blocked


@dataclass(eq=False)
class AsyncLimits:
    max_concurrency: int = 8
    timeout_s: float = 600.0
    _semaphore: asyncio.Semaphore | None = field(default=None, repr=False)

    def semaphore(self) -> asyncio.Semaphore:
        if self._semaphore is None:  # made on the loop's thread, on first use
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
        return self._semaphore


DEFAULT_LIMITS = AsyncLimits()
_shared: dict[tuple[int, float], AsyncLimits] = {}


def limits(max_concurrency: int, timeout_s: float) -> AsyncLimits:
    """The shared `AsyncLimits` of this setting (one semaphore for every function that uses it)."""
    return _shared.setdefault((max_concurrency, timeout_s), AsyncLimits(max_concurrency, timeout_s))


class Limited:
    """An async reward function with the limits it runs under (`score` reads `limits`)."""

    def __init__(self, fn, limits: AsyncLimits):
        self.func, self.limits = fn, limits

    def __call__(self, **kwargs: Any):
        return self.func(**kwargs)


def is_async(fn: Any) -> bool:
    """Whether calling `fn` returns a coroutine: an `async def` function, a partial of one, a
    callable object with an `async def __call__`, or a groupo wrapper (`.func`) of either."""
    while isinstance(fn, functools.partial) or (not inspect.isfunction(fn) and hasattr(fn, "func")):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def event_loop() -> asyncio.AbstractEventLoop:
    """The process's reward loop, started on a daemon thread on first use."""
    global _loop
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            threading.Thread(target=run, name="groupo-async-rewards", daemon=True).start()
            ready.wait()
            _loop = loop
    return _loop


async def _bounded(awaitable: Awaitable, lim: AsyncLimits) -> tuple[Any, float]:
    async with lim.semaphore():
        start = time.perf_counter()  # the call's own time, not its wait for a slot
        return await asyncio.wait_for(awaitable, lim.timeout_s), time.perf_counter() - start


def start(awaitable: Awaitable, lim: AsyncLimits) -> concurrent.futures.Future:
    """Run `awaitable` on the loop under `lim`; its future raises TimeoutError past the limit."""
    return asyncio.run_coroutine_threadsafe(_bounded(awaitable, lim), event_loop())


def result(future: concurrent.futures.Future, lim: AsyncLimits, waves: int = 1) -> tuple[Any, float]:
    """(the call's value, its seconds). TimeoutError when it ran past its limit, or when the loop
    itself stopped answering (a coroutine doing blocking work without awaiting holds every async
    reward up): `waves` is how many rounds of `max_concurrency` calls may run before this one's."""
    try:
        return future.result(timeout=lim.timeout_s * waves + GRACE_S)
    except TimeoutError:  # concurrent.futures' and asyncio's are this one since Python 3.11
        future.cancel()
        raise TimeoutError from None


def run(awaitable: Awaitable, lim: AsyncLimits = DEFAULT_LIMITS) -> Any:
    """`awaitable`'s value, run on the loop under `lim` (one call, waited for here)."""
    return result(start(awaitable, lim), lim)[0]
