"""Format rewards for tagged answers (text in, score out; never raise on model output).

    format_reward           1.0 iff the whole completion is <think>...</think> then <answer>...</answer>
                            (R1 style, arXiv 2501.12948; whitespace around the blocks allowed), else 0.0
    soft_format_reward      1.0 iff a <think>...</think> block is followed somewhere by <answer>...</answer>
    tag_count_reward        0.25 per R1 tag (<think>, </think>, <answer>, </answer>) present exactly once
    answer_format_reward    1.0 iff there is exactly one non-empty <answer>...</answer>
"""

from __future__ import annotations

import re
from typing import Any

from groupo.rewards.base import completion_text

_STRICT = re.compile(r"\s*<think>(?:(?!</?think>|</?answer>).)+</think>\s*"
                     r"<answer>(?:(?!</?think>|</?answer>).)+</answer>\s*", re.DOTALL)
_SOFT = re.compile(r"<think>.*?</think>.*?<answer>.+?</answer>", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
R1_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def format_reward(completions: list, prompts: list | None = None, **kwargs: Any) -> list[float]:
    return [1.0 if _STRICT.fullmatch(completion_text(c)) else 0.0 for c in completions]


def soft_format_reward(completions: list, prompts: list | None = None, **kwargs: Any) -> list[float]:
    return [1.0 if _SOFT.search(completion_text(c)) else 0.0 for c in completions]


def tag_count_reward(completions: list, prompts: list | None = None, **kwargs: Any) -> list[float]:
    out = []
    for c in completions:
        text = completion_text(c)
        out.append(sum(0.25 for tag in R1_TAGS if text.count(tag) == 1))
    return out


def answer_format_reward(completions: list, prompts: list | None = None, **kwargs: Any) -> list[float]:
    out = []
    for c in completions:
        hits = _ANSWER.findall(completion_text(c))
        out.append(1.0 if len(hits) == 1 and hits[0].strip() else 0.0)
    return out
