"""Progress display: a live rich bar on a terminal, plain one-line-per-step logs otherwise."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _fmt(stats: dict[str, float]) -> str:
    parts = []
    for key, label, spec in (("reward/mean", "reward", ".3f"), ("accuracy/train", "acc", ".2f"),
                             ("completion/len_mean", "len", ".1f"), ("loss/kl", "kl", ".4f"),
                             ("time/step_s", "s/step", ".1f")):
        if stats.get(key) is not None:
            parts.append(f"{label} {stats[key]:{spec}}")
    return "  ".join(parts)


class TrainProgress:
    """`advance(stats)` after each step; `log(msg)` for events (evaluations, checkpoints).

    mode: "rich" (live bar), "plain" (a line per step), "auto" (rich on a terminal), "off" (silent:
    the ranks other than 0 of a distributed run)."""

    def __init__(self, total: int, start: int = 0, mode: str = "auto", budget_s: float = 0.0):
        self.total, self.done = total, start
        self.budget_s = budget_s  # a time budget (train.max_minutes) caps the ETA; 0 = none
        self.console = Console(stderr=False)
        interactive = self.console.is_terminal if mode == "auto" else mode == "rich"
        self._t0 = time.monotonic()
        self._start = start
        self._bar = None
        self.silent = mode == "off"
        if interactive and not self.silent:
            self._bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[stats]}"), console=self.console)
            self._task = self._bar.add_task("train", total=total, completed=start, stats="")
            self._bar.start()

    def advance(self, stats: dict[str, float]) -> None:
        self.done += 1
        if self.silent:
            return
        elapsed = time.monotonic() - self._t0
        eta = elapsed / max(1, self.done - self._start) * (self.total - self.done)
        capped = bool(self.budget_s) and self.budget_s - elapsed < eta
        if capped:
            eta = max(0.0, self.budget_s - elapsed)
        if self._bar is not None:
            budget = f"  budget left {eta / 60:.1f} min" if capped else ""
            self._bar.update(self._task, completed=self.done, stats=_fmt(stats) + budget)
            return
        label = "time budget left" if capped else "eta"
        print(f"step {self.done}/{self.total}  {_fmt(stats)}  {label} {eta / 60:.1f} min", flush=True)

    def log(self, message: str) -> None:
        if self.silent:
            return
        if self._bar is not None:
            self._bar.console.print(message)
        else:
            print(message, flush=True)
            sys.stdout.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
