"""Small shared types that cross layer boundaries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}


@dataclass(frozen=True)
class Problem:
    """One prompt of a task.

    messages: the chat to send (system prompt, few-shot turns, the user's question), before the
        model's chat template is applied.
    answer: the reference answer as text (normalised by the task's parser).
    columns: dataset columns handed to reward functions as keyword arguments (TRL convention);
        always includes "answer".
    """

    messages: list[Message]
    answer: str
    columns: dict[str, Any] = field(default_factory=dict)
    id: str = ""

    @property
    def question(self) -> str:
        return self.messages[-1]["content"]


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1                       # completions per prompt
    temperature: float = 1.0         # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0                   # 0 = off
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()       # extra stop strings; EOS always stops
    seed: int | None = None


@dataclass
class Completion:
    """One sampled completion of one prompt."""

    prompt_ids: list[int]
    token_ids: list[int]             # generated tokens, up to and including EOS/stop if any
    logprobs: list[float]            # log-prob of each generated token under the sampling policy
    text: str                        # decoded completion (special tokens skipped)
    finish_reason: Literal["stop", "length"]
    # Episodes with tools (groupo.episodes); None in single-turn rollouts, where every token is sampled.
    sampled_mask: list[int] | None = None   # per token of token_ids: 1 sampled by the policy, 0 tool/environment
    messages: list[dict] | None = None      # the assistant and tool turns, as TRL passes completions to rewards
    tool_stats: dict | None = None          # turns, calls, errors, calls per tool, seconds (groupo.episodes)
    environment: Any = None                 # the episode's environment instance (rewards get `environments=`)
