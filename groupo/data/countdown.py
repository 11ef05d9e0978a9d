"""Countdown: combine the given numbers with + - * / (each used exactly once) to hit a target.

Problems are generated synthetically (seeded): draw the numbers, combine them in a random order
with random operations (keeping every intermediate result a positive integer, so a solution
exists), and take the result as the target. Difficulty: 1 = three numbers up to 20 with + and -;
2 = three numbers up to 100, all operations; 3 = four numbers up to 100; 4-5 = four or five
numbers with larger targets. The held-out set is generated from its own seed stream, disjoint
from training on (numbers, target). `read_countdown` reads the d1 / TinyZero file format
({"input": "30,100,93", "output": "23"}).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from groupo.data.loaders import read_records
from groupo.data.task import DataError

TEST_SIZE = 500
TRAIN_LEN = 10_000
# level -> (count of numbers, largest number, operations, largest target)
LEVELS = {1: (3, 20, "+-", 100), 2: (3, 100, "+-*/", 1000), 3: (4, 100, "+-*/", 1000),
          4: (4, 100, "+-*/", 10_000), 5: (5, 100, "+-*/", 10_000)}

log = logging.getLogger(__name__)

QUESTION = ("Using the numbers {nums}, create an equation that equals {target}. You can use basic "
            "arithmetic operations (+, -, *, /) and each number must be used exactly once.")


def question(numbers: list[int], target: int) -> str:
    return QUESTION.format(nums=numbers, target=target)


def row(numbers: list[int], target: int, where: str = "") -> dict:
    return {"question": question(numbers, target), "answer": str(target), "target": target,
            "numbers": list(numbers), "_where": where}


def make_problem(rng: random.Random, level: int) -> tuple[list[int], int, str]:
    """(numbers, target, one solution expression) at `level`."""
    if level not in LEVELS:
        raise ValueError(f"countdown difficulty {level} is unknown; valid: {', '.join(map(str, LEVELS))}")
    count, top, ops, max_target = LEVELS[level]
    while True:
        numbers = [rng.randint(1, top) for _ in range(count)]
        order = rng.sample(numbers, count)
        value, expr = order[0], str(order[0])
        for k, n in enumerate(order[1:]):
            op = rng.choice(ops)
            if op == "-" and value - n <= 0:
                op = "+"
            if op == "/" and (n == 1 or value % n):
                op = "*" if value * n <= max_target else "+"
            value = {"+": value + n, "-": value - n, "*": value * n, "/": value // n}[op]
            expr = f"{expr} {op} {n}" if k == 0 else f"({expr}) {op} {n}"
        if 1 <= value <= max_target and value not in numbers:
            return numbers, value, expr


def _key(numbers: list[int], target: int) -> tuple:
    return (*sorted(numbers), target)


def test_rows(level: int, seed: int, size: int = TEST_SIZE) -> list[dict]:
    rng = random.Random(f"countdown/test/{level}/{seed}")
    out: dict[tuple, dict] = {}
    while len(out) < size:
        nums, target, _ = make_problem(rng, level)
        out.setdefault(_key(nums, target), row(nums, target))
    return list(out.values())


def train_row(level: int, seed: int, i: int, held_out: set[tuple]) -> dict:
    """Training problem i: depends only on (level, seed, i); held-out problems are redrawn."""
    rng = random.Random(f"countdown/train/{level}/{seed}/{i}")
    while True:
        nums, target, _ = make_problem(rng, level)
        if _key(nums, target) not in held_out:
            return row(nums, target)


def held_out_keys(rows: list[dict]) -> set[tuple]:
    return {_key(r["numbers"], r["target"]) for r in rows}


def read_countdown(path: str | Path, skip_bad: bool = False) -> list[dict]:
    """Countdown jsonl rows {"input": "30,100,93", "output": "23"} (d1 / TinyZero format); also
    accepts {"nums": [...], "target": n}."""
    rows, bad = [], 0
    for r in read_records(path):
        raw_nums = r.get("input", r.get("nums", r.get("numbers")))
        raw_target = r.get("output", r.get("target"))
        try:
            nums = [int(x) for x in (raw_nums.split(",") if isinstance(raw_nums, str) else raw_nums)]
            target = int(str(raw_target).strip())
        except (TypeError, ValueError, AttributeError):
            if not skip_bad:
                raise DataError(f"{r['_where']}: fields 'input' (comma-separated integers) and 'output' "
                                f"(an integer) cannot be parsed: {raw_nums!r}, {raw_target!r} "
                                "(set task.skip_bad_rows=true to skip such rows)") from None
            bad += 1
            continue
        rows.append(row(nums, target, r["_where"]))
    if bad:
        log.warning("%s: skipped %d bad row(s)", path, bad)
    return rows
