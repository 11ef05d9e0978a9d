"""`big_arithmetic`: several-digit arithmetic a small model cannot do in its head, for training
with the `python` tool (configs/tools_quickstart.yaml).

Each problem is one of
    a + b, a - b    a and b of 4 to 6 digits (a - b never negative)
    a x b           a of 3 or 4 digits, b of 2 or 3 digits
in the wordings of the arithmetic task (bare expressions, instructions, short stories). Seeded and
file-free; the held-out set (`TEST_SIZE` problems, its own seed stream) is disjoint from training
by expression, as in groupo.data.arithmetic. SmolLM2-135M-Instruct answers ~0% of these unaided;
the product of two numbers printed by a one-line program is exact.
"""

from __future__ import annotations

import random

from groupo.data import arithmetic
from groupo.data.arithmetic import ArithmeticProblem

TEST_SIZE = 200


def make_problem(rng: random.Random) -> ArithmeticProblem:
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(100, 9999), rng.randint(10, 999)
    else:
        a, b = (rng.randint(1000, 999_999) for _ in range(2))
        if op == "-" and b > a:
            a, b = b, a
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return ArithmeticProblem(arithmetic.wording(op, a, b, rng), value, f"{a} {op} {b}")


def test_problems(seed: int) -> list[ArithmeticProblem]:
    rng = random.Random(f"big_arithmetic/test/{seed}")
    out: dict[str, ArithmeticProblem] = {}
    while len(out) < TEST_SIZE:
        p = make_problem(rng)
        out.setdefault(p.expression, p)
    return list(out.values())


def splits(seed: int) -> tuple[arithmetic.TrainStream, list[ArithmeticProblem]]:
    """(train stream, test list), disjoint on expressions (arithmetic.TrainStream redraws)."""
    test = test_problems(seed)
    return arithmetic.TrainStream(make_problem, f"big_arithmetic/train/{seed}", {p.expression for p in test}), test
