"""The task registry: a plain dict of builders, and `load_task`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from groupo.data.builtin import BUILDERS, SUPPORTED, check_eval_split, generic_task
from groupo.data.task import DataError, Task
from groupo.types import Problem

TASKS: dict[str, Callable[..., Task]] = dict(BUILDERS)
log = logging.getLogger("groupo")


def load_task(cfg) -> Task:
    """The task named by `cfg.name` (a `TaskConfig`): a registry key, or a path to a data file
    (.jsonl/.json/.csv/.tsv/.parquet with question and answer fields; see `task.question_field`)."""
    if cfg.name.lower().endswith(SUPPORTED):
        return generic_task(cfg, path=cfg.name)
    if cfg.name not in TASKS:
        raise DataError(f"task {cfg.name!r} is unknown; valid: {', '.join(TASKS)}, "
                        f"or a path to a {'/'.join(SUPPORTED)} file")
    return TASKS[cfg.name](cfg)


def extra_eval_sets(cfg) -> dict[str, list[Problem]]:
    """`cfg.extra_eval_splits` (a `TaskConfig`'s): split name -> its held-out problems, each the
    task loaded with that `eval_split` and cut to `eval_size`.

    A split the task lacks is named in one warning line and skipped rather than refused: the
    quickstart lists the arithmetic task's `unseen`, and `groupo train task.name=gsm8k ...` on top
    of it should train, not stop on a split it never asked for. (A split no generated task has is
    refused with the config, groupo.config_rules.)"""
    out = {}
    for split in cfg.extra_eval_splits:
        try:
            check_eval_split(cfg.name, split, key=None)
            out[split] = load_task(replace(cfg, eval_split=split)).test[: cfg.eval_size or None]
        except DataError as e:
            log.warning("warning: task.extra_eval_splits: split %r skipped: %s", split, e)
    return out


# Tasks answered with code (math solved by a Python program; MBPP; HumanEval).
from groupo.data.code_tasks import CODE_TASKS  # noqa: E402

TASKS.update(CODE_TASKS)

# Several tasks as one training pool (task.mix).
from groupo.data.mix import mix_task  # noqa: E402

TASKS["mix"] = lambda cfg: mix_task(cfg, load_task)
