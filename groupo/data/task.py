"""The `Task` a trainer and evaluator consume, and the helpers that build one from rows.

A row is a plain dict with at least "question" and "answer" (the normalised reference answer as
text); other keys become reward-function columns. Rows carry "_where" ("file:line") until they
become `Problem`s so errors can name their origin.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from groupo.config import ConfigError
from groupo.data.prompts import Example, build_messages
from groupo.types import Problem

log = logging.getLogger(__name__)


class DataError(ConfigError):
    """Bad task data: names the file, line and field (a ConfigError, so the CLI prints it plainly)."""


@dataclass
class Task:
    """train: training problems (may be a lazy sequence); test: the held-out problems.
    rewards: default reward name -> weight (used when `rewards.funcs` is empty).
    eval_reward: the reward whose value 1.0 means "correct" in evaluation.
    """

    name: str
    train: Sequence[Problem]
    test: list[Problem]
    rewards: dict[str, float]
    eval_reward: str = "accuracy"


def require_train(task: Task) -> None:
    """Refuse a task with nothing to train on (call before loading a model): a split a task does
    not have, or an empty one, raises its DataError here rather than in the first step."""
    if len(task.train) == 0:  # a missing split's own len() raises the DataError that says why
        raise DataError(f"task {task.name!r} has no training problems ({len(task.test)} held out for "
                        "evaluation); check task.path, task.split and task.train_size")


def default_rewards(prompt_style: str) -> dict[str, float]:
    """Accuracy, plus a small format bonus for the tagged styles (it teaches the tags early)."""
    return {"plain": {"accuracy": 1.0}, "boxed": {"accuracy": 1.0},
            "answer_tag": {"accuracy": 1.0, "answer_format": 0.1},
            "r1": {"accuracy": 1.0, "format": 0.1},
            "python_tool": {"accuracy": 1.0, "answer_format": 0.1},
            "choice": {"choice": 1.0, "answer_format": 0.1}}[prompt_style]


def to_problem(row: dict, cfg: Any, examples: Sequence[Example], pid: str) -> Problem:
    """A `Problem` from a row, with messages in the configured prompt style."""
    columns = {k: v for k, v in row.items() if not k.startswith("_")}
    messages = build_messages(row["question"], cfg.prompt_style, cfg.system_prompt,
                              examples[: cfg.few_shot])
    return Problem(messages=messages, answer=str(row["answer"]), columns=columns, id=pid)


def check_rows(rows: list[dict], *, skip_bad: bool, what: str,
               valid_answer=None) -> tuple[list[dict], int]:
    """Drop or reject rows with no question or an empty/unparseable answer.

    valid_answer: optional predicate on the answer string. Returns (good rows, skipped count);
    without `skip_bad` the first bad row raises a DataError naming its file, line and field.
    """
    good, bad = [], 0
    for row in rows:
        problem = None
        q, a = row.get("question"), row.get("answer")
        if not isinstance(q, str) or not q.strip():
            problem = "field 'question' is missing or empty"
        elif a is None or str(a).strip() == "":
            problem = "field 'answer' is missing or empty"
        elif valid_answer is not None and not valid_answer(str(a)):
            problem = f"field 'answer' cannot be parsed: {str(a)[:80]!r}"
        if problem is None:
            good.append(row)
        elif skip_bad:
            bad += 1
        else:
            raise DataError(f"{row.get('_where', what)}: {problem} "
                            "(set task.skip_bad_rows=true to skip such rows)")
    if bad:
        log.warning("%s: skipped %d bad row(s) of %d", what, bad, len(rows))
    return good, bad


def seeded_split(rows: list, seed: int, test_fraction: float) -> tuple[list, list]:
    """(train, test): a seeded shuffle, `test_fraction` of it (at least 1 row) held out."""
    order = list(range(len(rows)))
    random.Random(f"split/{seed}").shuffle(order)
    n_test = max(1, round(len(rows) * test_fraction)) if test_fraction > 0 and rows else 0
    test = [rows[i] for i in sorted(order[:n_test])]
    train = [rows[i] for i in order[n_test:]]
    return train, test


def subsample(rows: Sequence, n: int, seed: int) -> list:
    """The rows in a seeded shuffled order, cut to the first `n` (n = 0 keeps all)."""
    out = list(rows)
    random.Random(f"subsample/{seed}").shuffle(out)
    return out[:n] if n else out
