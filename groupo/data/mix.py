"""`task.name: mix`: several tasks trained on as one pool (e.g. GSM8K and MATH, as DeepSeekMath's RL
stage did, arXiv 2402.03300 sec. 4.2).

`task.mix` maps each component task's name to its `task.path` (null for tasks that need no files);
every other `task.*` setting (split, prompt style, seed ...) applies to each component alike.
Training problems: all components' training problems, shuffled together (seeded), then cut to
`task.train_size`. Held-out problems: the components' test sets taken in turn (one of each, then
the next of each ...), then cut to `task.eval_size`, so a small evaluation still sees every
component. The components must agree on their rewards and on the reward evaluation counts,
which holds for the math tasks (their rewards follow the prompt style).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

from groupo.data.builtin import NoSplit
from groupo.data.task import DataError, Task, subsample


def mix_task(cfg, load) -> Task:
    """The mixed task; `load(task_cfg)` builds one component (the registry's `load_task`)."""
    if len(cfg.mix) < 2:
        raise DataError("task.name = 'mix' needs task.mix to name at least two tasks, e.g. "
                        "task.mix={gsm8k: data/gsm8k, math: data/math}")
    if "mix" in cfg.mix:
        raise DataError("task.mix cannot contain 'mix'")
    parts = [load(replace(cfg, name=name, path=path, mix={}, train_size=0, eval_size=0))
             for name, path in cfg.mix.items()]
    for part in parts[1:]:
        if (part.rewards, part.eval_reward) != (parts[0].rewards, parts[0].eval_reward):
            raise DataError(f"task.mix: {parts[0].name!r} and {part.name!r} have different rewards "
                            f"({parts[0].rewards} vs {part.rewards}); mix tasks graded alike")
    for part in parts:
        if isinstance(part.train, NoSplit):
            raise DataError(f"task.mix: {part.name!r}: {part.train.message}")
    train = [p for part in parts for p in part.train]
    random.Random(f"mix/{cfg.seed}").shuffle(train)
    train = subsample(train, cfg.train_size, cfg.seed)
    turns = itertools.zip_longest(*(part.test for part in parts))
    test = [p for turn in turns for p in turn if p is not None][: cfg.eval_size or None]
    name = "mix-" + "+".join(part.name for part in parts)
    return Task(name, train, test, dict(parts[0].rewards), parts[0].eval_reward)
