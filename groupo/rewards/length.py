"""Length shaping rewards. Both need completion lengths in tokens.

They read them from the keyword argument `completion_lengths` (list of ints) or, as TRL passes
them, `completion_ids` (list of token-id lists); `groupo.rewards.combine.score` passes both.
`max_completion_length` (L_max) is the generation limit (`rollout.max_new_tokens`), bound by
`resolve_rewards`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from groupo.rewards.base import RewardError, completion_text
from groupo.rewards.extract import DEFAULT_ORDER
from groupo.rewards.math import check_reference, grade


def lengths_of(fn: str, n: int, completion_lengths: Sequence[int] | None,
               completion_ids: Sequence[Sequence[int]] | None) -> list[int]:
    if completion_lengths is not None:
        lengths = [int(x) for x in completion_lengths]
    elif completion_ids is not None:
        lengths = [len(ids) for ids in completion_ids]
    else:
        raise RewardError(f"{fn} needs completion lengths in tokens: pass completion_lengths= or "
                          "completion_ids= (groupo's trainer and TRL both do)")
    if len(lengths) != n:
        raise RewardError(f"{fn}: {n} completions but {len(lengths)} completion lengths")
    return lengths


def overlong_penalty(length: int, max_len: int, buffer: int) -> float:
    """DAPO soft overlong punishment (arXiv 2503.14476, eq. 13), in [-1, 0].

    0 if length <= max_len - buffer; (max_len - buffer - length) / buffer inside the buffer;
    -1 beyond max_len.
    """
    expected = max_len - buffer
    if length <= expected:
        return 0.0
    if length <= max_len:
        return (expected - length) / buffer
    return -1.0


def overlong_reward(completions: list, prompts: list | None = None, *,
                    completion_lengths: Sequence[int] | None = None,
                    completion_ids: Sequence[Sequence[int]] | None = None,
                    max_completion_length: int = 0, overlong_buffer: int = 0,
                    **kwargs: Any) -> list[float]:
    """`overlong_penalty` per completion; weight it with the penalty factor."""
    if max_completion_length <= 0 or not 0 < overlong_buffer <= max_completion_length:
        raise RewardError(f"overlong_reward needs 0 < overlong_buffer ({overlong_buffer}) <= "
                          f"max_completion_length ({max_completion_length})")
    lengths = lengths_of("overlong_reward", len(completions), completion_lengths, completion_ids)
    return [overlong_penalty(n, max_completion_length, overlong_buffer) for n in lengths]


def cosine_scale(length: int, max_len: int, r0: float, r_l: float) -> float:
    """Yeo et al. 2025 (arXiv 2502.03373, eq. 1): r_l + (r0 - r_l) (1 + cos(pi t / T)) / 2.

    Equals r0 at length 0 and r_l at length T, following a half cosine in between.
    """
    t = min(length, max_len)
    return r_l + 0.5 * (r0 - r_l) * (1.0 + math.cos(math.pi * t / max_len))


def cosine_reward(completions: list, answer: list, prompts: list | None = None, *,
                  completion_lengths: Sequence[int] | None = None,
                  completion_ids: Sequence[Sequence[int]] | None = None,
                  max_completion_length: int = 0, correct: tuple[float, float] = (1.0, 0.5),
                  wrong: tuple[float, float] = (-1.0, -0.5), exceed: float = -1.0,
                  extract_order: Sequence[str] = DEFAULT_ORDER, timeout_s: float = 5.0,
                  **kwargs: Any) -> list[float]:
    """Cosine-scaled correctness reward (Yeo et al. 2025): short correct answers earn most
    (correct = (r0, r_L) = (1.0, 0.5)), short wrong answers are punished most (wrong = (-1.0, -0.5)),
    and a completion that reaches max_completion_length gets `exceed`. The scale values follow
    open-r1's defaults (the paper's are (2, 1), (-10, 0) and -10).
    """
    if max_completion_length <= 0:
        raise RewardError("cosine_reward needs max_completion_length > 0")
    lengths = lengths_of("cosine_reward", len(completions), completion_lengths, completion_ids)
    out = []
    for i, (c, ref, n) in enumerate(zip(completions, answer, lengths, strict=True)):
        if n >= max_completion_length:
            out.append(exceed)
            continue
        _, ok = grade(completion_text(c), check_reference(ref, i, "cosine_reward"),
                      extract_order=extract_order, timeout_s=timeout_s)
        r0, r_l = correct if ok else wrong
        out.append(cosine_scale(n, max_completion_length, r0, r_l))
    return out
