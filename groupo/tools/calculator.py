"""The built-in `calculator` tool: arithmetic on numbers, evaluated from the syntax tree (no eval).

Values are exact rationals (`Fraction`) for as long as the expression allows: integers of any size
stay exact, 0.1 + 0.2 is 0.3, and 7 / 2 is 3.5; a non-integer power falls back to float. Results
print as integers when whole, else as the nearest float.

Bounded before it runs, whatever the operands: the expression is model output, and big-integer
arithmetic holds the GIL, so the caller's time limit cannot stop it (`(10**9999)**3000` once froze
a trainer for 48 s). So every operation's cost is estimated from its operands' sizes and charged to
a budget of the whole expression (`MAX_WORK`, and at most `MAX_OPERATIONS` operations) before it
runs; a power whose result would exceed
`MAX_DIGITS` is refused from the operands' sizes, never computed; every value is at most
`MAX_DIGITS` digits (Python's own limit for turning an integer into text, so every result prints).
The worst expression of any length takes about a second on a 2-core laptop CPU (docs/tools.md,
"Guarantees", gives the measurement).
"""

from __future__ import annotations

import ast
import math
import operator
import sys
import warnings
from fractions import Fraction

MAX_EXPONENT = 10_000
MAX_DIGITS = sys.int_info.default_max_str_digits  # 4300: str() of a longer int raises
_LIMIT = 10 ** MAX_DIGITS  # numerators and denominators stay below it
_LIMIT_BITS = _LIMIT.bit_length()
# Cost of one operation on n-bit operands: (n // 64 + 1) ** 2 units (the gcd that normalises a
# Fraction is quadratic). The budget allows ~200 operations on 4,300-digit numbers (50,000 units
# each) and thousands on ordinary ones; its worst case is measured in docs/tools.md.
MAX_WORK = 10_000_000
MAX_OPERATIONS = 10_000  # and a count: 30,000 small operations took 0.7 s (Fraction arithmetic is Python)
Number = Fraction | float
# "1if" parses with a SyntaxWarning, which Python writes to stderr: a model's expression must not
# write to the trainer's output. (A filter set once: catch_warnings is not thread-safe.)
warnings.filterwarnings("ignore", category=SyntaxWarning, module="<calculator>")

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS = {"abs": abs, "sqrt": lambda x: _sqrt(x), "round": lambda x: Fraction(round(x))}


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly and return the result.

    Supports + - * / // % ** and parentheses on integers and decimals, and abs(), sqrt(), round().

    Args:
        expression: The expression to evaluate, e.g. "1234 * 5678 - 9".
    """
    try:
        tree = ast.parse(expression.strip(), filename="<calculator>", mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):  # the parser's own depth limits
        raise ValueError(f"not an arithmetic expression: {_short(expression)}") from None
    try:
        return _show(_Evaluator().eval(tree.body))
    except ZeroDivisionError:  # Fraction's message would be "Fraction(1, 0)"
        raise ZeroDivisionError("division by zero") from None
    except RecursionError:
        raise ValueError("the expression is nested too deeply") from None


class _Evaluator:
    """One expression's evaluation, with its work budget."""

    def __init__(self) -> None:
        self.work = self.operations = 0

    def charge(self, bits: int) -> None:
        """Account for an operation on `bits`-bit numbers before it runs."""
        self.work += (bits // 64 + 1) ** 2
        self.operations += 1
        if self.work > MAX_WORK:
            raise ValueError("the expression is too costly to evaluate (too many operations on very large numbers)")
        if self.operations > MAX_OPERATIONS:
            raise ValueError(f"the expression has more than {MAX_OPERATIONS} operations")

    def eval(self, node: ast.AST) -> Number:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            # A float literal as written in decimal (0.1 is 1/10), not its binary approximation.
            return _check(Fraction(repr(node.value)) if isinstance(node.value, float) else Fraction(node.value))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](self.eval(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) is ast.Pow:
            return self.power(self.eval(node.left), self.eval(node.right))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = self.eval(node.left), self.eval(node.right)
            self.charge(max(_bits(left), _bits(right)))
            return _check(_BINARY[type(node.op)](left, right))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
                and len(node.args) == 1 and not node.keywords):
            value = self.eval(node.args[0])
            self.charge(_bits(value))
            return _check(_FUNCTIONS[node.func.id](value))
        raise ValueError(f"unsupported in an arithmetic expression: {_short(ast.unparse(node))} "
                         f"(numbers, + - * / // % **, parentheses, {', '.join(_FUNCTIONS)})")

    def power(self, base: Number, exp: Number) -> Number:
        if not (isinstance(base, Fraction) and isinstance(exp, Fraction) and exp.denominator == 1):
            return _check(float(base) ** float(exp))  # floats: one bounded operation
        e = int(exp)
        if base == 0:
            return _check(base ** ((e > 0) - (e < 0)))  # 0, 1, or division by zero
        if abs(base) == 1:
            return _check(base ** (e % 2))  # (-1) ** 10**4000 is 1, without 13,000 squarings
        if abs(e) > MAX_EXPONENT:
            raise ValueError(f"exponent {e} is too large (at most {MAX_EXPONENT})")
        # |base| is neither 0 nor 1, so its numerator or denominator has b >= 2 bits and the power
        # has at least |e| * (b - 1) + 1 bits: refused from that bound, never computed.
        bits = _bits(base)
        if abs(e) * (bits - 1) + 1 > _LIMIT_BITS:
            raise ValueError(f"the result has more than {MAX_DIGITS} digits")
        self.charge(abs(e) * bits)
        return _check(base ** e)


def _bits(x: Number) -> int:
    return max(x.numerator.bit_length(), x.denominator.bit_length()) if isinstance(x, Fraction) else 64


def _sqrt(x: Number) -> Number:
    if isinstance(x, Fraction) and x >= 0:
        n, d = math.isqrt(x.numerator), math.isqrt(x.denominator)
        if n * n == x.numerator and d * d == x.denominator:
            return Fraction(n, d)  # perfect squares stay exact
    return math.sqrt(x)


def _check(x: Number | int) -> Number:
    if isinstance(x, int):  # Fraction // Fraction is an int
        x = Fraction(x)
    if isinstance(x, complex):
        raise ValueError("the result is not a real number")
    if isinstance(x, Fraction) and (abs(x.numerator) >= _LIMIT or x.denominator >= _LIMIT):
        raise ValueError(f"the result has more than {MAX_DIGITS} digits")
    return x


def _show(x: Number) -> str:
    if isinstance(x, Fraction):
        return str(x.numerator) if x.denominator == 1 else repr(float(x))
    return str(int(x)) if x.is_integer() else repr(x)


def _short(text: str, limit: int = 80) -> str:
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"
