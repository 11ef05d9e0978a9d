"""The rollout engine interface: prompts in, G completions per prompt out."""

from __future__ import annotations

from typing import Protocol

from groupo.types import Completion, SamplingParams


class RolloutEngine(Protocol):
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """For each prompt (token ids, chat template already applied), `params.n` completions.

        Returns P lists of n `Completion`s, in prompt order. Log-probs are those of the
        distribution actually sampled from (after temperature / top-p / top-k).
        """
        ...

    def sync_weights(self) -> None:
        """Make the engine sample from the trainer's current weights (no-op when it shares them)."""
        ...


def prompt_seed(seed: int | None, i: int, n: int) -> int | None:
    """The sampling seed of the i-th prompt of a call, for engines that seed each request of n
    samples: vLLM gives sample j of a request seed + j, so prompts are n seeds apart (one seed for
    all would give every prompt the same random draws). Reproducible per step."""
    return None if seed is None else seed + i * n


class EngineError(RuntimeError):
    """A rollout engine that cannot start or reach its server for the user's settings (printed
    without a traceback, exit 2)."""
