"""Reward functions written the way `rewards.funcs` loads them (see docs/rewards.md).

    groupo train rewards.funcs='{accuracy: 1.0, "examples/my_rewards.py:brevity": 0.2}'
    groupo train rewards.funcs='{accuracy: 1.0, "examples/my_rewards.py:shows_work": 0.2}'

groupo's prompts are chat messages, so each completion arrives as TRL passes conversational ones:
`[{"role": "assistant", "content": text}]` (with `rewards.completion_format=text`, the text alone).
"""

import asyncio


def _text(completion) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def brevity(prompts, completions, **kwargs):
    """1.0 for an answer of at most 10 words, falling to 0.0 at 60 words: a nudge towards short answers."""
    return [max(0.0, min(1.0, (60 - len(_text(c).split())) / 50)) for c in completions]


def mentions_answer(prompts, completions, answer, **kwargs):
    """1.0 where the reference answer (the dataset's `answer` column) appears in the completion;
    None (no score) where a row has no reference."""
    return [None if a is None else float(str(a) in _text(c)) for c, a in zip(completions, answer, strict=True)]


async def shows_work(prompts, completions, **kwargs):
    """1.0 where the completion writes out a calculation ("3 + 4 = 7"). Async, as a reward that asks a
    service would be: each completion's check is awaited concurrently (here it is local and instant)."""
    async def check(text: str) -> float:
        await asyncio.sleep(0)  # where a real one would await an HTTP call
        return float("=" in text and any(op in text for op in "+-*/×"))

    return list(await asyncio.gather(*(check(_text(c)) for c in completions)))
