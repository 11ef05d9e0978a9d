"""Shared pieces of the reward functions: the error type and completion-text access.

Reward functions follow TRL's convention: ``fn(prompts, completions, **dataset_columns) ->
list[float | None]``, called with keyword arguments. ``completions`` are plain strings, or (TRL's
conversational format) lists of messages whose last ``content`` is the completion.
"""

from __future__ import annotations

from typing import Any


class RewardError(RuntimeError):
    """A reward could not be computed for a reason that is not the model's fault: a broken
    reference answer or a broken reward function. It names the function and the sample."""


def completion_text(completion: Any) -> str:
    """The text of one completion: a string, or the last message's content in chat format."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return "" if completion is None else str(completion)
