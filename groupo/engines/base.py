"""The engine interface: prompts in, G completions per prompt out."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from groupo.types import Completion, SamplingParams


class Engine:
    """What makes tokens. Subclasses implement `generate` and, where they hold their own copy of the
    weights, `sync_weights`; the rest are defaults an engine overrides when it has something to say."""

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """For each prompt (token ids, chat template already applied), `params.n` completions.

        Returns P lists of n `Completion`s, in prompt order. Log-probs are those of the
        distribution actually sampled from (after temperature / top-p / top-k).
        """
        raise NotImplementedError

    def sync_weights(self) -> None:
        """Make the engine sample from the trainer's current weights (no-op when it shares them)."""

    @contextlib.contextmanager
    def keeping_prefixes(self) -> Iterator[None]:
        """Within it, later `generate` calls may reuse the work of earlier ones on prompts that extend
        them (the rounds of an episode). The default keeps nothing; an engine with its own prefix
        cache (vLLM) needs no scope."""
        yield

    def describe(self) -> str:
        """A few words on where the engine samples (empty for the in-process transformers engine)."""
        return ""


def prompt_seed(seed: int | None, i: int, n: int) -> int | None:
    """The sampling seed of the i-th prompt of a call, for engines that seed each request of n
    samples: vLLM gives sample j of a request seed + j, so prompts are n seeds apart (one seed for
    all would give every prompt the same random draws). Reproducible per step."""
    return None if seed is None else seed + i * n


class EngineError(RuntimeError):
    """An engine that cannot start or reach its server for the user's settings (printed without a
    traceback, exit 2)."""
