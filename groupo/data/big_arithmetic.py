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


class TrainStream(arithmetic.TrainStream):
    """Item i from its own seeded stream; held-out expressions are redrawn."""

    def __init__(self, seed: int, held_out: set[str], length: int = arithmetic.TRAIN_LEN):
        super().__init__(0, seed, held_out, length)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.length))]
        if not -self.length <= i < self.length:
            raise IndexError(i)
        rng = random.Random(f"big_arithmetic/train/{self.seed}/{i % self.length}")
        while True:
            p = make_problem(rng)
            if p.expression not in self.held_out:
                return p


def splits(seed: int) -> tuple[TrainStream, list[ArithmeticProblem]]:
    test = test_problems(seed)
    return TrainStream(seed, {p.expression for p in test}), test
