"""Ctrl-C and SIGTERM during training: where they may land, and what they leave.

SIGTERM (a scheduler pre-empting the job) is handled like Ctrl-C. Inside `finish_first` (the
update and the step's record) an interrupt is held until the block ends, so the weights, the
optimizer, the step count, the data position and metrics.jsonl saved or written afterwards always
belong to one completed step; a second interrupt there ends the run at once, and then nothing is saved (the newest
periodic checkpoint is the state to resume from).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Interrupted(KeyboardInterrupt):
    """A second interrupt inside `finish_first`: the state is mid-update and must not be saved."""


@contextlib.contextmanager
def finish_first(note: Callable[[str], None]) -> Iterator[None]:
    """Hold SIGINT / SIGTERM until the block ends, then raise KeyboardInterrupt."""
    received: list[int] = []

    def hold(signum, frame):
        if received:
            raise Interrupted
        received.append(signum)
        note("interrupt received: finishing this step before saving (interrupt again to stop at once, "
             "without saving)")

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise KeyboardInterrupt
