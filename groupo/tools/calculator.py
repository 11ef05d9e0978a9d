"""The built-in `calculator` tool: arithmetic on numbers, evaluated from the syntax tree (no eval).

Values are exact rationals (`Fraction`) for as long as the expression allows: integers of any size
stay exact, 0.1 + 0.2 is 0.3, and 7 / 2 is 3.5; a non-integer power falls back to float. Results
print as integers when whole, else as the nearest float. Exponents and results are bounded so that
an expression cannot hang the trainer (2 ** 10 ** 10 is an error, not an hour of CPU).
"""

from __future__ import annotations

import ast
import math
import operator
from fractions import Fraction

MAX_EXPONENT = 10_000
MAX_DIGITS = 10_000
Number = Fraction | float

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
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from None
    try:
        return _show(_eval(tree.body))
    except ZeroDivisionError:  # Fraction's message would be "Fraction(1, 0)"
        raise ZeroDivisionError("division by zero") from None


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        # A float literal as written in decimal (0.1 is 1/10), not its binary approximation.
        return Fraction(repr(node.value)) if isinstance(node.value, float) else Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) is ast.Pow:
        return _power(_eval(node.left), _eval(node.right))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _check(_BINARY[type(node.op)](_eval(node.left), _eval(node.right)))
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
            and len(node.args) == 1 and not node.keywords):
        return _check(_FUNCTIONS[node.func.id](_eval(node.args[0])))
    raise ValueError(f"unsupported in an arithmetic expression: {ast.unparse(node)!r} "
                     f"(numbers, + - * / // % **, parentheses, {', '.join(_FUNCTIONS)})")


def _power(base: Number, exp: Number) -> Number:
    if isinstance(exp, Fraction) and exp.denominator == 1:
        if abs(exp) > MAX_EXPONENT and abs(base) not in (0, 1):
            raise ValueError(f"exponent {exp} is too large (at most {MAX_EXPONENT})")
        return _check(base ** int(exp))
    return _check(float(base) ** float(exp))


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
    if isinstance(x, Fraction) and max(x.numerator.bit_length(), x.denominator.bit_length()) > 3.33 * MAX_DIGITS:
        raise ValueError(f"the result has more than {MAX_DIGITS} digits")
    return x


def _show(x: Number) -> str:
    if isinstance(x, Fraction):
        return str(x.numerator) if x.denominator == 1 else repr(float(x))
    return str(int(x)) if x.is_integer() else repr(x)
