"""Countdown reward: an arithmetic expression over the given numbers that hits the target.

The expression is read from <answer>...</answer> (else \\boxed{}, else the last run of digits and
operators in the text; "3 + 5 = 8" counts as "3 + 5"). It is parsed with `ast` and evaluated
exactly with fractions over a whitelist (integer literals, + - * /, parentheses); model text is
never passed to `eval`. Each given number must be used exactly once (the d1 / TinyZero rule).
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from groupo.rewards.base import RewardError, completion_text
from groupo.rewards.extract import answer_tag, boxed, normalize_text

MAX_EXPR_CHARS = 200
MAX_SCAN_CHARS = 2000
_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
        ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}
_RUN = re.compile(r"[\d(][\d+\-*/×÷() .]*[\d)]")


def evaluate_expression(expr: str) -> tuple[Fraction, list[int]] | None:
    """(exact value, integer literals used) of a + - * / expression, or None if not one."""
    expr = normalize_text(expr).replace("×", "*").replace("÷", "/").replace("x", "*").strip()
    if "=" in expr:
        expr = expr.split("=", 1)[0]
    if not expr or len(expr) > MAX_EXPR_CHARS:
        return None
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError):
        return None
    used: list[int] = []

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError("not allowed")

    try:
        return walk(tree.body), used
    except (ValueError, ZeroDivisionError, RecursionError):
        return None


def find_expression(text: str) -> str | None:
    for hit in (answer_tag(text), boxed(text)):
        if hit:
            return hit
    # the expression sits near the end; a bounded tail keeps the scan cheap on adversarial text
    tail = normalize_text(text)[-MAX_SCAN_CHARS:]
    runs = [r for r in _RUN.findall(tail) if re.search(r"[+\-*/×÷]", r)]
    return runs[-1] if runs else None


def countdown_reward(completions: list, target: list, numbers: list, prompts: list | None = None,
                     **kwargs: Any) -> list[float]:
    """1.0 iff the expression uses each of `numbers` exactly once and equals `target`, else 0.0."""
    out = []
    for i, (c, goal, nums) in enumerate(zip(completions, target, numbers, strict=True)):
        if goal is None or not isinstance(nums, Sequence) or not nums:
            raise RewardError(f"countdown_reward: sample {i} has no target/numbers ({goal!r}, {nums!r})")
        expr = find_expression(completion_text(c))
        result = evaluate_expression(expr) if expr else None
        ok = (result is not None and result[0] == Fraction(int(goal))
              and Counter(result[1]) == Counter(int(n) for n in nums))
        out.append(1.0 if ok else 0.0)
    return out
