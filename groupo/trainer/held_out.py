"""The held-out evaluation of a training run: greedy accuracy on the task's test problems, and on
the further held-out splits of task.extra_eval_splits."""

from __future__ import annotations

import time
from collections.abc import Callable

from groupo.distributed import Dist, gather_objects
from groupo.eval.evaluate import evaluate
from groupo.trainer import parallel


def held_out_accuracy(sampler, module, task, problems: list, reward_fns: dict, *, max_new_tokens: int,
                      batch_size: int, world: Dist) -> tuple[float, int, float]:
    """(accuracy, problems, seconds): each rank evaluates every W-th problem, the counts are summed.
    `sampler` is the run's (groupo.rollout.sampler): with tools, the evaluation runs episodes too."""
    t0 = time.monotonic()
    with parallel.full_params(module):
        res = evaluate(sampler, task, problems[world.rank::world.world_size], samples=1, temperature=0.0,
                       max_new_tokens=max_new_tokens, batch_size=batch_size, reward_fns=reward_fns)
    shares = gather_objects((res.accuracy * res.n, res.n), world)
    n = sum(k for _, k in shares)
    return (sum(c for c, _ in shares) / n if n else 0.0), n, time.monotonic() - t0


class HeldOut:
    """The run's held-out sets, all evaluated at the same moments: the main one (task.eval_split,
    split None in the run log) and each of task.extra_eval_splits.

    `accuracy(problems)` is the (accuracy, problems, seconds) of one set, `held_out_accuracy` bound
    to the run's sampler and module.
    """

    def __init__(self, accuracy: Callable[[list], tuple[float, int, float]], main: list,
                 extra: dict[str, list]):
        self.accuracy = accuracy
        self.sets: dict[str | None, list] = {None: main, **extra}

    def evaluate(self, run, step: int, *, before: bool = False) -> float | None:
        """Evaluate every set at `step` and record it with `run.evaluation`; the main set's accuracy.
        before=True: the evaluation before training, of the sets without one yet (a resumed run
        keeps its "before" figures)."""
        main = None
        for split, problems in self.sets.items():
            if before and run.evaluated_before(split):
                continue
            accuracy = run.evaluation(step, *self.accuracy(problems), split=split)
            main = accuracy if split is None else main
        return main
