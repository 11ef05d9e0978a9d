"""The task registry: a plain dict of builders, and `load_task`."""

from __future__ import annotations

from collections.abc import Callable

from groupo.data.builtin import BUILDERS, SUPPORTED, generic_task
from groupo.data.task import DataError, Task

TASKS: dict[str, Callable[..., Task]] = dict(BUILDERS)


def load_task(cfg) -> Task:
    """The task named by `cfg.name` (a `TaskConfig`): a registry key, or a path to a data file
    (.jsonl/.json/.csv/.tsv/.parquet with question and answer fields; see `task.question_field`)."""
    if cfg.name.lower().endswith(SUPPORTED):
        return generic_task(cfg, path=cfg.name)
    if cfg.name not in TASKS:
        raise DataError(f"task {cfg.name!r} is unknown; valid: {', '.join(TASKS)}, "
                        f"or a path to a {'/'.join(SUPPORTED)} file")
    return TASKS[cfg.name](cfg)


# Tasks answered with code (math solved by a Python program; MBPP; HumanEval).
from groupo.data.code_tasks import CODE_TASKS  # noqa: E402

TASKS.update(CODE_TASKS)

# Several tasks as one training pool (task.mix).
from groupo.data.mix import mix_task  # noqa: E402

TASKS["mix"] = lambda cfg: mix_task(cfg, load_task)
