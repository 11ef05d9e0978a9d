"""The held-out evaluation of a training run: greedy accuracy on the task's test problems."""

from __future__ import annotations

import time

from groupo.distributed import Dist, gather_objects
from groupo.eval.evaluate import evaluate
from groupo.trainer import parallel


def held_out_accuracy(engine, module, tokenizer, task, problems: list, reward_fns: dict, *, max_new_tokens: int,
                      batch_size: int, world: Dist) -> tuple[float, int, float]:
    """(accuracy, problems, seconds): each rank evaluates every W-th problem, the counts are summed."""
    t0 = time.monotonic()
    with parallel.full_params(module):
        res = evaluate(engine, tokenizer, task, problems[world.rank::world.world_size], samples=1,
                       temperature=0.0, max_new_tokens=max_new_tokens, batch_size=batch_size, reward_fns=reward_fns)
    shares = gather_objects((res.accuracy * res.n, res.n), world)
    n = sum(k for _, k in shares)
    return (sum(c for c, _ in shares) / n if n else 0.0), n, time.monotonic() - t0
