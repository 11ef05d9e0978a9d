"""Builders for the built-in tasks: `TaskConfig` -> `Task`.

Synthetic tasks (arithmetic, countdown) need no files. File tasks read `task.path` (`mcq`: rows of a
question, its options and the right letter, groupo.data.mcq):

* a folder with one file per split (`train.jsonl`, `test.jsonl`, ...) gives the split by name;
* a benchmark file that is itself one test set (MATH, MATH-500, SVAMP, MGSM, CMATH; in a folder,
  its usual file name) is its "test" split (also "all"); asking it for "train" explains how to
  train on it anyway;
* any other single file is split with a seeded shuffle: `task.test_fraction` of it is "test", the
  rest "train", and "all" is every row.

Training problems are shuffled (seeded) and cut to `task.train_size`; the held-out problems keep
file order and are cut to `task.eval_size`. Few-shot examples come from the training rows, or for
test-only benchmarks from the last rows of the file, which are then left out of the test set.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import cache
from pathlib import Path

from groupo.data import arithmetic, big_arithmetic, countdown
from groupo.data.arithmetic import MappedSequence
from groupo.data.loaders import (
    read_cmath,
    read_generic,
    read_gsm8k,
    read_hub,
    read_math,
    read_metamath,
    read_mgsm,
    read_svamp,
)
from groupo.data.mcq import read_mcq
from groupo.data.prompts import Example
from groupo.data.task import DataError, Task, default_rewards, seeded_split, subsample, to_problem

SUPPORTED = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
Reader = Callable[..., list[dict]]
log = logging.getLogger("groupo")


class NoSplit(Sequence):
    """Stands in for a split a task does not have: any use raises a DataError saying why."""

    def __init__(self, message: str):
        self.message = message

    def __len__(self) -> int:
        raise DataError(self.message)

    def __getitem__(self, i):
        raise DataError(self.message)


def _examples(rows: Sequence[dict], n: int) -> list[Example]:
    return [Example(r["question"], r.get("solution") or "", r["answer"]) for r in rows[:n]]


def _finish(name: str, cfg, train_rows: Sequence[dict] | NoSplit, test_rows: list[dict],
            examples: list[Example]) -> Task:
    examples = _showing_the_tool(name, cfg, examples)
    if isinstance(train_rows, NoSplit):
        train: Sequence = train_rows
    else:
        rows = subsample(train_rows, cfg.train_size, cfg.seed)
        train = [to_problem(r, cfg, examples, f"{name}-train-{i}") for i, r in enumerate(rows)]
    test_rows = test_rows[: cfg.eval_size or None]
    test = [to_problem(r, cfg, examples, f"{name}-test-{i}") for i, r in enumerate(test_rows)]
    return Task(name, train, test, default_rewards(cfg.prompt_style), "accuracy")


# ---------------------------------------------------------------------------------------------
# Synthetic tasks

# The held-out splits (`task.eval_split`, `task.extra_eval_splits`) of the generated tasks, checked
# when the config is (groupo.config_rules); file tasks' splits are known only once their files are read.
EVAL_SPLITS: dict[str, tuple[str, ...]] = {
    "arithmetic": ("test", "unseen"), "big_arithmetic": ("test",), "countdown": ("test",)}


def check_eval_split(task: str, split: str, key: str | None = "task.eval_split") -> None:
    """Refuse a held-out split a generated task does not have, in one line naming the valid ones."""
    if task in EVAL_SPLITS and split not in EVAL_SPLITS[task]:
        raise DataError(f"{key + ': ' if key else ''}split {split!r} is unknown for task {task!r}; "
                        f"valid: {', '.join(EVAL_SPLITS[task])}")


def arithmetic_task(cfg) -> Task:
    check_eval_split("arithmetic", cfg.eval_split)
    stream, test = arithmetic.splits(cfg.difficulty, cfg.seed, next_level_share=cfg.next_level_share)
    if cfg.eval_split == "unseen":
        test = arithmetic.unseen_problems(cfg.seed)
    return synthetic_task(cfg, f"arithmetic-d{cfg.difficulty}", stream, test, split=cfg.eval_split)


def _worked(p, style: str) -> str:
    """A worked example's reasoning: the expression and its value, or (python_tool) the program
    that prints it and its output block, as an episode with the python tool shows them."""
    if style == "python_tool":
        return f"```python\nprint({p.expression})\n```\n```output\n{p.answer}\n```"
    return f"{p.expression.replace('*', '×')} = {p.answer}."


def tool_examples(seed: int, n: int) -> list[Example]:
    """n worked episodes of the python_tool protocol (a program, its output block, the answer):
    big_arithmetic's, the ones configs/tools_quickstart.yaml trains with at the same task.seed."""
    stream, _ = big_arithmetic.splits(seed)
    return [Example(p.question, _worked(p, "python_tool"), str(p.answer))
            for p in (stream[len(stream) - 1 - i] for i in range(n))]


def _showing_the_tool(name: str, cfg, examples: list[Example]) -> list[Example]:
    """A python_tool prompt's worked examples must show the protocol. A data file's rows have no
    programs, and an example that answers without the tool is what the model copies (a tools run
    scored 0% on the user's own file, base and trained alike, against 100% on its own task): such
    examples are replaced by `tool_examples`, and one line says so."""
    if cfg.prompt_style != "python_tool" or all("```python" in e.reasoning for e in examples[:cfg.few_shot]):
        return examples
    log.info("note: task %s has no ```python solutions to show, so its %d worked example(s) for "
             "task.prompt_style=python_tool are big_arithmetic episodes (program, output, answer)",
             name, cfg.few_shot)
    return tool_examples(cfg.seed, cfg.few_shot)


def big_arithmetic_task(cfg) -> Task:
    check_eval_split("big_arithmetic", cfg.eval_split)
    stream, test = big_arithmetic.splits(cfg.seed)
    return synthetic_task(cfg, "big_arithmetic", stream, test)


def synthetic_task(cfg, name: str, stream: Sequence, test: list, split: str = "test") -> Task:
    """A task over a generated training stream and held-out list of ArithmeticProblem (the held-out
    problems' ids name `split`)."""
    n_train = min(cfg.train_size or len(stream), len(stream) - cfg.few_shot)
    # Worked examples: the stream's last items, which training (the first n_train) never reaches
    # (for big_arithmetic in python_tool style, exactly `tool_examples`).
    shots = [stream[len(stream) - 1 - i] for i in range(cfg.few_shot)]
    examples = [Example(p.question, _worked(p, cfg.prompt_style), str(p.answer)) for p in shots]

    def problem(i: int):
        p = stream[i]
        return to_problem({"question": p.question, "answer": str(p.answer)}, cfg, examples, f"{name}-train-{i}")

    test_problems = [to_problem({"question": p.question, "answer": str(p.answer)}, cfg, examples,
                                f"{name}-{split}-{i}") for i, p in enumerate(test[: cfg.eval_size or None])]
    return Task(name, MappedSequence(range(n_train), problem), test_problems,
                default_rewards(cfg.prompt_style), "accuracy")


def countdown_task(cfg) -> Task:
    check_eval_split("countdown", cfg.eval_split)
    if cfg.path:
        test_rows = countdown.read_countdown(cfg.path, skip_bad=cfg.skip_bad_rows)
    else:
        test_rows = countdown.test_rows(cfg.difficulty, cfg.seed)
    held_out = countdown.held_out_keys(test_rows)
    n_train = cfg.train_size or countdown.TRAIN_LEN
    examples = []
    for i in range(cfg.few_shot):  # solved examples from a stream training never draws from
        nums, target, expr = countdown.make_problem(random.Random(f"countdown/shots/{cfg.seed}/{i}"),
                                                    cfg.difficulty)
        examples.append(Example(countdown.question(nums, target), f"{expr} = {target}.", expr))
    name = f"countdown-d{cfg.difficulty}"

    def problem(i: int):
        return to_problem(countdown.train_row(cfg.difficulty, cfg.seed, i, held_out), cfg, examples,
                          f"{name}-train-{i}")

    test = [to_problem(r, cfg, examples, f"{name}-test-{i}")
            for i, r in enumerate(test_rows[: cfg.eval_size or None])]
    style_bonus = {k: v for k, v in default_rewards(cfg.prompt_style).items() if k != "accuracy"}
    return Task(name, MappedSequence(range(n_train), problem), test, {"countdown": 1.0, **style_bonus},
                "countdown")


# ---------------------------------------------------------------------------------------------
# File tasks

def _path(name: str, cfg) -> Path:
    if not cfg.path:
        raise DataError(f"task {name!r} reads files: set task.path to its data file or folder")
    return Path(cfg.path).expanduser()


def _no_rows(name: str, cfg, where: Path, n_read: int, n_eval: int) -> NoSplit:
    """The training split of a task with no training rows: refused with the counts, so an empty
    file, or one whose every row went to the held-out split, fails before a model loads and not
    as a misleading error deep in the first step."""
    held = (f", task.test_fraction={cfg.test_fraction} held {n_eval} out for evaluation" if n_read
            else "")
    return NoSplit(f"task {name!r}: {where} has no rows to train on ({n_read} read{held}); add rows"
                   + (", or lower task.test_fraction" if n_read else ""))


def _split_rows(name: str, cfg, split: str, read: Callable[[Path], list[dict]],
                default_file: str | None, test_only: bool, training: bool = False) -> list[dict] | NoSplit:
    path = _path(name, cfg)
    if path.is_dir():
        files = [f for f in sorted(path.iterdir()) if f.stem == split and f.suffix in SUPPORTED]
        if files:
            rows = read(files[0])
            return _no_rows(name, cfg, files[0], 0, 0) if training and not rows else rows
        if not default_file or not (path / default_file).is_file():
            have = ", ".join(f.name for f in sorted(path.iterdir()) if f.suffix in SUPPORTED) or "none"
            raise DataError(f"task {name!r}: no {split}.* file in {path} (data files there: {have})")
        path = path / default_file
    elif not path.exists():
        raise DataError(f"task {name!r}: data path not found: {path}")
    if test_only:
        if split in ("test", "all"):
            return read(path)
        return NoSplit(f"task {name!r}: {path} is a test set and has no {split!r} split; set "
                       f"task.split=test to train on it anyway, or point the generic loader at a "
                       f"training file (task.name=path/to/train.jsonl)")
    rows = read(path)
    if split == "all":
        return rows
    if split not in ("train", "test"):
        raise DataError(f"task {name!r}: split {split!r} is unknown for the single file {path}; "
                        "valid: train, test, all")
    train, test = seeded_split(rows, cfg.seed, cfg.test_fraction)
    if training and split == "train" and not train:
        return _no_rows(name, cfg, path, len(rows), len(test))
    return train if split == "train" else test


def file_task(name: str, cfg, reader: Reader, default_file: str | None = None,
              test_only: bool = False) -> Task:
    """A task from `task.path` read with `reader(path, skip_bad=...)` (see the module doc)."""
    read = cache(lambda p: reader(p, skip_bad=cfg.skip_bad_rows))
    train_rows = _split_rows(name, cfg, cfg.split, read, default_file, test_only, training=True)
    test_rows = _split_rows(name, cfg, cfg.eval_split, read, default_file, test_only)
    if isinstance(test_rows, NoSplit):
        raise DataError(test_rows.message)
    if isinstance(train_rows, NoSplit) and cfg.few_shot:
        examples = _examples(test_rows[-cfg.few_shot:], cfg.few_shot)
        test_rows = test_rows[: -cfg.few_shot]
    elif isinstance(train_rows, NoSplit):
        examples = []
    else:
        examples = _examples(subsample(train_rows, cfg.few_shot, cfg.seed + 1), cfg.few_shot)
    return _finish(name, cfg, train_rows, test_rows, examples)


def generic_task(cfg, path: str | None = None) -> Task:
    """Any question/answer file (jsonl/json/csv/tsv/parquet), or a `datasets` hub id."""
    target = path or cfg.path
    if not target:
        raise DataError("task 'generic' needs task.path: a data file, a folder of split files, or a hub id")
    if not Path(target).expanduser().exists() and "/" in target and not target.endswith(SUPPORTED):
        def hub(split: str) -> list[dict]:
            return read_hub(target, split, cfg.question_field, cfg.answer_field, cfg.skip_bad_rows)
        train, test = hub(cfg.split), hub(cfg.eval_split)
        examples = _examples(subsample(train, cfg.few_shot, cfg.seed + 1), cfg.few_shot)
        return _finish(target, cfg, train, test, examples)

    def reader(p, skip_bad=False):
        return read_generic(p, cfg.question_field, cfg.answer_field, skip_bad)

    return file_task(Path(target).stem, replace(cfg, path=target), reader)


def mcq_task(cfg) -> Task:
    """Multiple-choice questions (groupo.data.mcq): scored by the `choice` reward, which is also
    the evaluation's, plus the prompt style's format bonus."""
    def reader(p, skip_bad=False):
        return read_mcq(p, cfg.question_field, cfg.answer_field, skip_bad)

    task = file_task("mcq", cfg, reader)
    bonus = {k: v for k, v in default_rewards(cfg.prompt_style).items() if k not in ("accuracy", "choice")}
    return replace(task, rewards={"choice": 1.0, **bonus}, eval_reward="choice")


def mgsm_task(cfg) -> Task:
    return file_task(f"mgsm-{cfg.language}", cfg, read_mgsm, f"mgsm_{cfg.language}.tsv", test_only=True)


BUILDERS: dict[str, Callable] = {
    "arithmetic": arithmetic_task,
    "big_arithmetic": big_arithmetic_task,
    "countdown": countdown_task,
    "gsm8k": lambda cfg: file_task("gsm8k", cfg, read_gsm8k),
    "math": lambda cfg: file_task("math", cfg, read_math, "test.jsonl", test_only=True),
    "math500": lambda cfg: file_task("math500", cfg, read_math, "test.jsonl", test_only=True),
    "svamp": lambda cfg: file_task("svamp", cfg, read_svamp, "SVAMP.json", test_only=True),
    "mgsm": mgsm_task,
    "cmath": lambda cfg: file_task("cmath", cfg, read_cmath, "cmath_dev.jsonl", test_only=True),
    "metamath": lambda cfg: file_task("metamath", cfg, read_metamath),
    "generic": generic_task,
    "mcq": mcq_task,
}
