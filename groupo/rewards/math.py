"""Math answer accuracy: extract the final answer, then decide equivalence with the reference.

Fast path, in-process: when both answers read as plain numbers (`parse_number`: commas, currency,
percent, units, fractions, decimals, full-width digits) they are compared exactly as fractions.
Symbolic path: when either side looks like LaTeX or algebra, math-verify decides in a worker
process under a hard time limit (`groupo.rewards.symbolic`); a check that times out scores 0.
Otherwise the answers are compared as whitespace- and case-normalised strings.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from groupo.rewards.base import RewardError, completion_text
from groupo.rewards.extract import (
    DEFAULT_ORDER,
    check_order,
    extract_answer,
    normalize_text,
    numbers_equal,
    parse_number,
)
from groupo.rewards.symbolic import symbolic_equal

log = logging.getLogger(__name__)

MAX_ANSWER_CHARS = 500  # longer "answers" are rambling, not a final answer: no symbolic check
_SYMBOLIC = re.compile(r"[\\^{}()\[\]/*+=<>_]|sqrt|pi|infty|\d")


def looks_symbolic(text: str) -> bool:
    return bool(_SYMBOLIC.search(text))


def _plain(text: str) -> str:
    s = normalize_text(text).strip().strip("$").rstrip(".").strip()
    return re.sub(r"\s+", "", s).lower()


def answer_key(answer: str | None) -> str | None:
    """A canonical form for majority voting: the exact fraction for numbers, else the squashed text."""
    if answer is None:
        return None
    value = parse_number(answer)
    return str(value) if value is not None else _plain(answer)


def is_equivalent(pred: str, ref: str, *, timeout_s: float = 5.0, symbolic: bool = True) -> bool:
    """Whether the extracted answer `pred` matches the reference answer `ref`."""
    p, r = parse_number(pred), parse_number(ref)
    if p is not None and r is not None:
        return numbers_equal(p, r)
    if _plain(pred) == _plain(ref):
        return True
    if not symbolic or len(pred) > MAX_ANSWER_CHARS:
        return False
    if r is not None and "\\" not in pred:
        return False  # a plain-number reference: only LaTeX like \sqrt{4} needs math-verify
    if r is None and p is None and not looks_symbolic(pred) and not looks_symbolic(ref):
        return False  # two different plain words
    result = symbolic_equal(pred, ref, timeout_s)
    if result is None:
        log.warning("symbolic answer check timed out after %.1f s (scored 0): %.80r vs %.80r",
                    timeout_s, pred, ref)
    return result is True


def check_reference(ref: Any, index: int, fn: str = "accuracy_reward") -> str:
    """The reference answer as text; a missing or empty one is a RewardError naming the sample."""
    if ref is None or (isinstance(ref, float) and ref != ref) or str(ref).strip() == "":
        raise RewardError(f"{fn}: sample {index} has no reference answer (got {ref!r})")
    if isinstance(ref, Fraction | int | float):
        return str(ref)
    return str(ref).strip()


def grade(text: str, ref: str, *, extract_order: Sequence[str] = DEFAULT_ORDER,
          timeout_s: float = 5.0, symbolic: bool = True) -> tuple[str | None, bool]:
    """(extracted answer or None, correct?) for one completion text."""
    pred = extract_answer(text, extract_order)
    if pred is None:
        return None, False
    return pred, is_equivalent(pred, ref, timeout_s=timeout_s, symbolic=symbolic)


def accuracy_reward(completions: list, answer: list, prompts: list | None = None, *,
                    extract_order: Sequence[str] = DEFAULT_ORDER, timeout_s: float = 5.0,
                    symbolic: bool = True, **kwargs: Any) -> list[float]:
    """1.0 where the completion's final answer equals the reference `answer`, else 0.0.

    TRL-compatible: `accuracy_reward(completions=["... <answer>42</answer>"], answer=["42"])`.
    extract_order: extractor names tried in turn (see `groupo.rewards.extract`); the default
        credits <answer> tags, then \\boxed{}, "####", "the answer is", then the last number.
    timeout_s: hard limit per symbolic (math-verify) check; plain numbers never need one.
    Model output never raises; a missing reference answer raises RewardError naming the sample.
    """
    if len(answer) != len(completions):
        raise RewardError(f"accuracy_reward: {len(completions)} completions but {len(answer)} answers")
    order = check_order(extract_order)
    out = []
    for i, (completion, ref) in enumerate(zip(completions, answer, strict=True)):
        ref_text = check_reference(ref, i)
        _, ok = grade(completion_text(completion), ref_text, extract_order=order, timeout_s=timeout_s,
                      symbolic=symbolic)
        out.append(1.0 if ok else 0.0)
    return out
