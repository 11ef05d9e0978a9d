"""Format rewards for tagged answers (text in, score out; never raise on model output).

    format_reward           1.0 iff the whole completion is <think>...</think> then <answer>...</answer>
                            (R1 style, arXiv 2501.12948; only whitespace around the blocks), else 0.0
    soft_format_reward      1.0 iff a <think>...</think> block is followed somewhere by <answer>...</answer>
    tag_count_reward        0.25 per R1 tag (<think>, </think>, <answer>, </answer>) present exactly once
    answer_format_reward    1.0 iff there is exactly one non-empty <answer>...</answer>

Blocks must hold non-blank text. The checks walk the list of tag positions instead of using
backtracking regular expressions, which take seconds to minutes on adversarial completions such
as thousands of repeated tags; every check here is linear in the text length.
"""

from __future__ import annotations

import re
from typing import Any

from groupo.rewards.base import completion_text

R1_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_TAG = re.compile(r"</?(?:think|answer)>")


def _tags(text: str) -> list[tuple[str, int, int]]:
    return [(m.group(), m.start(), m.end()) for m in _TAG.finditer(text)]


def _strict(text: str) -> bool:
    tags = _tags(text)
    if [t for t, _, _ in tags] != list(R1_TAGS):
        return False
    (_, s0, e0), (_, s1, e1), (_, s2, e2), (_, s3, e3) = tags
    return (not text[:s0].strip() and bool(text[e0:s1].strip()) and not text[e1:s2].strip()
            and bool(text[e2:s3].strip()) and not text[e3:].strip())


def _soft(text: str) -> bool:
    want, i, answer_start = list(R1_TAGS), 0, -1
    for tag, start, end in _tags(text):
        if tag != want[i]:
            continue
        if i == 2:
            answer_start = end
        if i == 3:
            if text[answer_start:start].strip():
                return True
            i = 1  # an empty answer block: look for a later one
        i += 1
    return False


def _one_answer(text: str) -> bool:
    tags = [(t, s, e) for t, s, e in _tags(text) if "answer" in t]
    return ([t for t, _, _ in tags] == ["<answer>", "</answer>"]
            and bool(text[tags[0][2]:tags[1][1]].strip()))


def format_reward(completions: list, prompts: list | None = None, **kwargs: Any) -> list[float]:
    return [1.0 if _strict(completion_text(c)) else 0.0 for c in completions]


def soft_format_reward(completions: list, prompts: list | None = None, **kwargs: Any) -> list[float]:
    return [1.0 if _soft(completion_text(c)) else 0.0 for c in completions]


def tag_count_reward(completions: list, prompts: list | None = None, **kwargs: Any) -> list[float]:
    out = []
    for c in completions:
        text = completion_text(c)
        out.append(sum(0.25 for tag in R1_TAGS if text.count(tag) == 1))
    return out


def answer_format_reward(completions: list, prompts: list | None = None, **kwargs: Any) -> list[float]:
    return [1.0 if _one_answer(completion_text(c)) else 0.0 for c in completions]
