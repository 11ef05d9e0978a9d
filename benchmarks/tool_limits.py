"""What the worst model text costs the tool layer: seconds per case, on this machine.

    python benchmarks/tool_limits.py                      # the built-in model's tokenizer if cached, else offline
    python benchmarks/tool_limits.py --length 4000        # calculator expressions cut to 4,000 characters

calculator  adversarial expressions (powers of huge numbers, long balanced sums and products of
            4,000-digit fractions, deep nesting), each up to --length characters: the longest
            one's seconds is the calculator's worst case (docs/tools.md, "Guarantees")
result      a user tool returning 10 MB of text, cut to 64 tokens (`Toolbox.truncate`)
parse       a <tool_call> whose arguments nest 1,000 brackets (`parse_hermes`)
"""

from __future__ import annotations

import argparse
import time

from groupo.tools import Toolbox, ToolCall, ToolSettings, calculator, parse_hermes
from groupo.tools.base import Tool


def balanced(terms: list[str], op: str = "+") -> str:
    """The terms joined by op as a balanced tree: depth log2(n), so no recursion limit stops it."""
    if len(terms) == 1:
        return terms[0]
    mid = len(terms) // 2
    return f"({balanced(terms[:mid], op)}{op}{balanced(terms[mid:], op)})"


BIG, OTHER = "(7**5085/3**5085)", "(11**4120/13**3850)"  # 4,300-digit numerators
EXPRESSIONS = {
    "(10**9999)**3000": "(10**9999)**3000",
    "(10**4000)**3000": "(10**4000)**3000",
    "9**9**9": "9**9**9",
    "balanced big % big": balanced([f"{BIG}%{OTHER}"] * 2000),
    "balanced big * big / big": balanced([f"{BIG}*{OTHER}/{BIG}"] * 2000),
    "balanced powers": balanced(["(3**9000/7**5000)"] * 3000),
    "balanced costly zeros %": balanced([f"({BIG}%{OTHER}-{BIG}%{OTHER})"] * 2000),
    "balanced costly zeros * /": balanced(["((7**2500/3**2500)*(11**1800/13**1500)/(7**2500/3**2500)"
                                           "-(11**1800/13**1500))"] * 2000),
    "balanced distinct fractions": balanced([f"{p}/{p + 2}" for p in range(3, 20000, 2)]),
    "balanced small fractions": balanced(["(1/3+1/7)"] * 10000),
    "left-deep chain": "+".join(["1"] * 50000),
    "deep unary": "-" * 100000 + "1",
}


def tokenizer():
    from transformers import AutoTokenizer

    from groupo.models.builtin import cached_path

    cached = cached_path("smollm2-135m-instruct")
    if cached.is_dir():
        return AutoTokenizer.from_pretrained(cached), "SmolLM2-135M-Instruct"
    from groupo.models.offline_tokenizer import make_tokenizer

    return make_tokenizer(), "offline byte-level BPE"


def huge(x: int) -> str:
    """Ten megabytes.

    Args:
        x: Ignored.
    """
    return "y " * (5 << 20)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=1_000_000, help="cut each expression to this many characters")
    args = p.parse_args()
    worst = 0.0
    for name, expression in EXPRESSIONS.items():
        expression = expression[:args.length]
        start = time.perf_counter()
        try:
            outcome = f"= {calculator(expression)[:20]}"
        except Exception as e:
            outcome = f"{type(e).__name__}: {str(e)[:60]}"
        took = time.perf_counter() - start
        worst = max(worst, took)
        print(f"calculator {name:28s} {len(expression):7d} chars {took * 1000:9.1f} ms  {outcome}")
    print(f"calculator worst: {worst:.3f} s")
    tok, which = tokenizer()
    from transformers.utils import get_json_schema

    box = Toolbox({"huge": Tool("huge", get_json_schema(huge), huge)}, None,
                  ToolSettings(timeout_s=5.0, max_output_tokens=64), tok)
    start = time.perf_counter()
    result = box.new_episode({}).call(ToolCall("huge", {"x": 1}))
    print(f"result: a 10 MB tool result cut to 64 tokens of {which}: {time.perf_counter() - start:.2f} s "
          f"({result.content[-40:]!r})")
    start = time.perf_counter()
    [call] = parse_hermes('<tool_call>{"name": "calculator", "arguments": ' + "[" * 1000 + "</tool_call>")
    print(f"parse: 1,000 nested brackets: {(time.perf_counter() - start) * 1000:.1f} ms ({call.error})")


if __name__ == "__main__":
    main()
