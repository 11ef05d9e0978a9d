"""The built-in synthetic arithmetic task: seeded, deterministic, no files.

Difficulty levels (answers are always integers):

    1  one-digit + and - (results never negative)
    2  two-digit + and -, and two-digit x one-digit
    3  three-digit + and -, two-digit x two-digit, and two-operation mixes (a + b - c, a x b + c)
    4  four-digit + and -, three-digit x one-digit, exact division, (a +- b) x c (may be negative)
    5  mostly three-operation mixes with parentheses, often negative

Each problem is rendered in one of several wordings (bare expressions, imperative "Add 23 and
58.", and short word problems), so a policy cannot overfit one template.

The held-out test set is generated from its own seed stream and is disjoint from training on the
*expression* (operands and operators), not just the wording: a training problem whose expression
is in the test set is redrawn. Level 1 has only 155 distinct expressions (100 sums, 55
differences), so its test set holds 40% of each operation's: 40 sums and 22 differences, 62 in
all, leaving 60 and 33 to train on (the other levels hold 500). Stratified because an unstratified
draw of 80 took 41 of the 55 differences: training then saw only 14 differences over and over,
and learnt them by heart, not subtraction. The training stream is long (`TRAIN_LEN`) and lazily
generated.

The "unseen" split (`unseen_problems`, `task.eval_split: unseen` or `task.extra_eval_splits:
[unseen]`) measures generalisation rather than recall: 100 fixed two-digit problems (50 sums, 50
differences that are never negative, distinct expressions, seed stream "arithmetic/unseen/{seed}")
written only in wordings that training never uses at any level (`_UNSEEN_*`: other bare forms,
instructions and story frames, other names and items). A level-1 run is trained on one-digit
problems in the training wordings, so its accuracy here says whether what it learnt carries over
to larger numbers and new phrasings. The split is the same at every level; its expressions are not
kept out of level 2's training or test sets (a level-2 run may train on some of them, in the
training wordings; a level-1 stream with `next_level_share` keeps them out). The training wordings
and the plain streams are untouched by it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import overload

from groupo.rewards.countdown import evaluate_expression

TRAIN_LEN = 10_000
TEST_SIZE = {1: 62, 2: 500, 3: 500, 4: 500, 5: 500}
LEVEL1_HELD_OUT = {"+": 40, "-": 22}  # per operation; sums to TEST_SIZE[1]
LEVELS = tuple(TEST_SIZE)


@dataclass(frozen=True)
class ArithmeticProblem:
    question: str
    answer: int
    expression: str  # canonical form, e.g. "(12 + 7) * 3"; the key for train/test disjointness


# ---------------------------------------------------------------------------------------------
# Expressions per level: (expression text, value)

def _digits(rng: random.Random, n: int) -> int:
    return rng.randint(10 ** (n - 1) if n > 1 else 0, 10 ** n - 1)


def _binary(rng: random.Random, level: int) -> tuple[str, int, int, int]:
    """A single-operation problem: (op, a, b, value)."""
    if level == 1:
        op = rng.choice("+-")
        a, b = _digits(rng, 1), _digits(rng, 1)
        if op == "-" and b > a:
            a, b = b, a
    elif level == 2:
        op = rng.choice("+-*")
        if op == "*":
            a, b = _digits(rng, 2), rng.randint(2, 9)
        else:
            a, b = _digits(rng, 2), _digits(rng, 2)
            if op == "-" and b > a:
                a, b = b, a
    elif level == 3:
        op = rng.choice("+-*")
        n = 2 if op == "*" else 3
        a, b = _digits(rng, n), _digits(rng, n)
        if op == "-" and b > a:
            a, b = b, a
    else:
        op = rng.choice("+-*/")
        if op == "*":
            a, b = _digits(rng, 3), rng.randint(2, 9)
        elif op == "/":
            b = rng.randint(2, 19)
            a = b * rng.randint(2, 99)
        else:
            a, b = _digits(rng, 4), _digits(rng, 4)
            if op == "-" and b > a:
                a, b = b, a
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0}[op]
    return op, a, b, value


def _mixed(rng: random.Random, level: int) -> tuple[str, int]:
    """A multi-operation expression (levels 3-5): (expression text, value)."""
    if level == 3:
        a, b, c = _digits(rng, 2), _digits(rng, 2), _digits(rng, 2)
        text = rng.choice([f"{a} + {b} - {c}", f"{a} - {b} + {c}", f"{c} * {rng.randint(2, 9)} + {a}"])
    elif level == 4:
        a, b, c = _digits(rng, 2), _digits(rng, 2), rng.randint(2, 9)
        text = rng.choice([f"({a} + {b}) * {c}", f"({a} - {b}) * {c}", f"{a} * {c} - {b}"])
    else:
        a, b, c, d = _digits(rng, 2), _digits(rng, 2), rng.randint(2, 12), _digits(rng, 3)
        text = rng.choice([f"({a} - {d}) * {c} + {b}", f"{a} * {c} - ({d} + {b})",
                           f"({a} + {b}) * {c} - {d}"])
    value, _ = evaluate_expression(text)
    return text, int(value)


# ---------------------------------------------------------------------------------------------
# Wordings

_SYM = {"+": "+", "-": "-", "*": "×", "/": "÷"}
_NAMES = ["Ana", "Ben", "Chen", "Dara", "Elif", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi", "Luca"]
_ITEMS = ["apples", "marbles", "stickers", "books", "coins", "shells", "pencils", "cards"]


def _bare(op: str, a: int, b: int, rng: random.Random) -> str:
    e = f"{a} {_SYM[op] if rng.random() < 0.3 else op.replace('*', 'x')} {b}"
    return rng.choice([f"What is {e}?", f"Compute {e}.", f"Calculate {e}.", f"{e} = ?",
                       f"Evaluate {e}.", f"Find the value of {e}."])


def _verbal(op: str, a: int, b: int, rng: random.Random) -> str:
    return rng.choice({
        "+": [f"Add {a} and {b}.", f"What is the sum of {a} and {b}?", f"What is {a} plus {b}?"],
        "-": [f"Subtract {b} from {a}.", f"What is {a} minus {b}?",
              f"What is the difference between {a} and {b}?", f"Take {b} away from {a}."],
        "*": [f"Multiply {a} by {b}.", f"What is the product of {a} and {b}?", f"What is {a} times {b}?"],
        "/": [f"Divide {a} by {b}.", f"What is {a} divided by {b}?", f"How many times does {b} go into {a}?"],
    }[op])


def _story(op: str, a: int, b: int, rng: random.Random) -> str:
    who, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    return rng.choice({
        "+": [f"{who} has {a} {item} and gets {b} more. How many {item} does {who} have now?",
              f"A box holds {a} {item} and another holds {b}. How many {item} are there in total?"],
        "-": [f"{who} has {a} {item} and gives away {b}. How many {item} are left?",
              f"There were {a} {item} on a shelf. {b} were taken. How many remain?"],
        "*": [f"{who} buys {b} bags with {a} {item} in each. How many {item} is that?",
              f"There are {a} rows of {item} with {b} in each row. How many {item} are there?"],
        "/": [f"{who} shares {a} {item} equally among {b} friends. How many does each friend get?",
              f"{a} {item} are packed {b} to a box. How many boxes are filled?"],
    }[op])


# Wordings of the "unseen" split only: no template, name or item here occurs in the training
# wordings above (tests/test_extra_eval.py checks it on generated training problems of every level).
_UNSEEN_NAMES = ["Maya", "Omar", "Priya", "Quentin", "Rosa", "Sami", "Tariq", "Uma"]
_UNSEEN_ITEMS = ["stamps", "buttons", "beads", "cookies", "tickets", "pebbles"]


def _unseen_wording(op: str, a: int, b: int, rng: random.Random) -> str:
    e = f"{a} {op} {b}"
    bare = [f"How much is {e}?", f"Work out {e}.", f"Tell me the value of {e}.", f"Solve: {e}"]
    who, item = rng.choice(_UNSEEN_NAMES), rng.choice(_UNSEEN_ITEMS)
    verbal, story = {
        "+": ([f"{a} plus {b} equals what?", f"Find the total of {a} and {b}.",
               f"If you add {b} to {a}, what do you get?", f"Increase {a} by {b}. What is the result?"],
              [f"{who} collected {a} {item} on Monday and {b} on Tuesday. How many {item} did {who} "
               "collect altogether?",
               f"A jar contains {a} {item}. {who} puts in {b} more. How many {item} are in the jar now?"]),
        "-": ([f"{a} minus {b} equals what?", f"How much is left when {b} is taken from {a}?",
               f"If you subtract {b} from {a}, what do you get?", f"Decrease {a} by {b}. What is the result?"],
              [f"{who} had {a} {item} and lost {b} of them. How many {item} does {who} still have?",
               f"A shop had {a} {item} and sold {b}. How many {item} does the shop have now?"]),
    }[op]
    return rng.choice(rng.choice([bare, verbal, story]))


def make_problem(rng: random.Random, level: int) -> ArithmeticProblem:
    """One problem at `level`, drawn with `rng` (all randomness comes from it)."""
    if level not in TEST_SIZE:
        raise ValueError(f"arithmetic difficulty {level} is unknown; valid: {', '.join(map(str, LEVELS))}")
    if level >= 3 and rng.random() < (0.3 if level == 3 else 0.5 if level == 4 else 0.8):
        text, value = _mixed(rng, level)
        shown = text.replace("*", rng.choice(["*", "x", "×"]))
        q = rng.choice([f"What is {shown}?", f"Compute {shown}.", f"Evaluate {shown}.", f"{shown} = ?"])
        return ArithmeticProblem(q, value, text)
    op, a, b, value = _binary(rng, level)
    return ArithmeticProblem(wording(op, a, b, rng), value, f"{a} {op} {b}")


def wording(op: str, a: int, b: int, rng: random.Random) -> str:
    """`a op b` as a question: a bare expression (half the time), an instruction or a short story."""
    return rng.choice([_bare, _bare, _verbal, _story])(op, a, b, rng)


# ---------------------------------------------------------------------------------------------
# Splits

def test_problems(level: int, seed: int) -> list[ArithmeticProblem]:
    """The fixed held-out set: `TEST_SIZE[level]` problems with distinct expressions."""
    rng = random.Random(f"arithmetic/test/{level}/{seed}")
    out: dict[str, ArithmeticProblem] = {}
    per_op: dict[str, int] = {}
    while len(out) < TEST_SIZE[level]:
        p = make_problem(rng, level)
        if p.expression in out:
            continue
        if level == 1:
            op = p.expression.split()[1]
            if per_op.get(op, 0) == LEVEL1_HELD_OUT[op]:
                continue
            per_op[op] = per_op.get(op, 0) + 1
        out[p.expression] = p
    return list(out.values())


UNSEEN_SIZE = {"+": 50, "-": 50}  # per operation


def unseen_problems(seed: int) -> list[ArithmeticProblem]:
    """The "unseen" split (see the module doc): two-digit + and - in wordings training never uses,
    `sum(UNSEEN_SIZE.values())` problems with distinct expressions, the same at every level."""
    rng = random.Random(f"arithmetic/unseen/{seed}")
    out: dict[str, ArithmeticProblem] = {}
    per_op: dict[str, int] = {}
    while len(out) < sum(UNSEEN_SIZE.values()):
        op, a, b = rng.choice("+-"), _digits(rng, 2), _digits(rng, 2)
        if op == "-" and b > a:
            a, b = b, a
        expression = f"{a} {op} {b}"
        if expression in out or per_op.get(op, 0) == UNSEEN_SIZE[op]:
            continue
        per_op[op] = per_op.get(op, 0) + 1
        out[expression] = ArithmeticProblem(_unseen_wording(op, a, b, rng), a + b if op == "+" else a - b,
                                            expression)
    return list(out.values())


class TrainStream(Sequence[ArithmeticProblem]):
    """`length` training problems, item i generated on demand by `make(rng)` from its own stream,
    seeded with f"{key}/{i}".

    Item i depends only on (key, i), so the stream is deterministic, needs no memory, and any slice
    or shuffle of it is reproducible. Expressions in `held_out` are redrawn.
    """

    def __init__(self, make: Callable[[random.Random], ArithmeticProblem], key: str, held_out: set[str],
                 length: int = TRAIN_LEN):
        self.make, self.key, self.held_out, self.length = make, key, held_out, length

    def __len__(self) -> int:
        return self.length

    @overload
    def __getitem__(self, i: int) -> ArithmeticProblem: ...
    @overload
    def __getitem__(self, i: slice) -> list[ArithmeticProblem]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.length))]
        if not -self.length <= i < self.length:
            raise IndexError(i)
        i %= self.length
        rng = random.Random(f"{self.key}/{i}")
        while True:
            p = self.make(rng)
            if p.expression not in self.held_out:
                return p


def splits(level: int, seed: int, length: int = TRAIN_LEN,
           next_level_share: float = 0.0) -> tuple[TrainStream, list[ArithmeticProblem]]:
    """(train stream, test list) for `level`, disjoint on expressions.

    With `next_level_share` > 0 each training problem is drawn from level + 1 with that probability
    (its own seed stream, so a share of 0 keeps the plain stream bit for bit), and the training
    stream also avoids level + 1's held-out expressions and the "unseen" split's, which a two-digit
    level would otherwise reach."""
    test = test_problems(level, seed)
    held_out = {p.expression for p in test}
    if not next_level_share:
        return TrainStream(lambda rng: make_problem(rng, level), f"arithmetic/train/{level}/{seed}",
                           held_out, length), test
    if level + 1 not in TEST_SIZE:
        raise ValueError(f"arithmetic difficulty {level} has no next level to draw a share from "
                         f"(levels: {', '.join(map(str, LEVELS))})")
    held_out |= {p.expression for p in test_problems(level + 1, seed) + unseen_problems(seed)}

    def make(rng: random.Random) -> ArithmeticProblem:
        # the level is drawn once: redrawing a held-out expression within it keeps the share exact
        # (level 1 holds out 40% of its expressions, so redrawing the level too would favour level + 1)
        drawn = level + 1 if rng.random() < next_level_share else level
        while (p := make_problem(rng, drawn)).expression in held_out:
            pass
        return p

    return TrainStream(make, f"arithmetic/train/{level}+{next_level_share}/{seed}", held_out, length), test


class MappedSequence(Sequence):
    """`fn` applied lazily to each item of `base` (keeps a lazy stream lazy)."""

    def __init__(self, base: Sequence, fn: Callable):
        self.base, self.fn = base, fn

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.fn(x) for x in self.base[i]]
        return self.fn(self.base[i])
