"""The held-out evaluation of a training run: greedy accuracy on the task's test problems (with
train.eval_samples, also pass@k, maj@k and mean@k of k samples each), and greedy accuracy on the
further held-out splits of task.extra_eval_splits."""

from __future__ import annotations

import time
from collections.abc import Callable

from groupo.distributed import Dist, gather_objects
from groupo.eval.evaluate import evaluate
from groupo.trainer import parallel


def held_out_accuracy(sampler, module, task, problems: list, reward_fns: dict, *, max_new_tokens: int,
                      batch_size: int, world: Dist, samples: int = 0, temperature: float = 1.0,
                      sampling: dict | None = None) -> tuple[float, int, float, dict[str, float]]:
    """(accuracy, problems, seconds, sampled): each rank evaluates every W-th problem, the counts are
    summed. `sampler` is the run's (groupo.rollout.sampler): with tools, the evaluation runs episodes too.

    samples = k > 0 (train.eval_samples): the same `evaluate` call as `groupo eval --samples k` also draws
    k completions per problem at `temperature`, and `sampled` holds pass@k, maj@k (answer-checked tasks)
    and mean@k over all ranks' problems; {} otherwise. `sampling`: the run's top_p, top_k, min_p and
    repetition_penalty (evaluate's keywords)."""
    t0 = time.monotonic()
    with parallel.full_params(module):
        res = evaluate(sampler, task, problems[world.rank::world.world_size], samples=max(1, samples),
                       temperature=temperature if samples else 0.0, max_new_tokens=max_new_tokens,
                       batch_size=batch_size, reward_fns=reward_fns, **(sampling or {}))
    n_mine = res.n
    sums = {"accuracy": (res.accuracy or 0.0) * n_mine}
    if samples:
        sums |= {f"pass@{samples}": res.pass_at_k.get(samples, 0.0) * n_mine,
                 f"mean@{samples}": (res.mean_at_k or 0.0) * n_mine}
        if samples > 1 and task.eval_reward == "accuracy":  # as evaluate decides: a vote needs answers
            sums[f"maj@{samples}"] = (res.maj_at_k or 0.0) * n_mine
    shares = gather_objects((sums, n_mine), world)
    n = sum(k for _, k in shares)
    total = {key: sum(s[key] for s, _ in shares) / n if n else 0.0 for key in sums}
    accuracy = total.pop("accuracy")
    return accuracy, n, time.monotonic() - t0, total


class HeldOut:
    """The run's held-out sets, all evaluated at the same moments: the main one (task.eval_split,
    split None in the run log) and each of task.extra_eval_splits.

    `accuracy(problems, sampled)` is the (accuracy, problems, seconds, sampled metrics) of one set,
    `held_out_accuracy` bound to the run's sampler and module; `sampled` is True for the main set only.
    """

    def __init__(self, accuracy: Callable[[list, bool], tuple[float, int, float, dict]], main: list,
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
            accuracy, n, seconds, sampled = self.accuracy(problems, split is None)
            accuracy = run.evaluation(step, accuracy, n, seconds, split=split, sampled=sampled)
            main = accuracy if split is None else main
        return main
