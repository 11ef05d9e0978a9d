"""Multi-turn episodes with tools over any rollout engine (`engine.generate` only).

An episode starts from a prompt; the model generates an assistant turn; the tool calls in it are
executed and their results appended as tokens; the model generates the next turn from there. It
ends when the model answers without a tool call ("answer"), the environment says it is done
("done", an attribute `done` that is true after a tool turn), `max_turns` assistant turns have
been generated ("max_turns"; calls in that last turn are not executed; TRL's
`max_tool_calling_iterations=k` is max_turns = k + 1), or the token budget is spent ("length").

The budget: `params.max_new_tokens` bounds the whole episode, sampled and tool tokens together,
as TRL's `max_completion_length` does; each turn may use what is left. A tool result that does not
fit (with one token to spare for the next turn) ends the episode instead, without it.

Token exactness: an episode's `token_ids` are its turns' tokens exactly as sampled, then each tool
result's tokens (see groupo.tools.formats); `sampled_mask` marks which are which, and the loss
counts only the sampled ones (`logprobs` is 0.0 at tool positions, where the engine sampled
nothing).

Batching: each round, one `engine.generate` call covers every live episode (n=1 each, the prompt
is the episode's tokens so far), then one turn's tool calls run across episodes in a thread pool
(sandboxed Python runs in parallel; an episode's own calls run in order). The first round asks
for `params.n` samples of each prompt, as a single-turn rollout does. Round k > 0 is seeded with a
hash of (params.seed, k); the engine derives each prompt's seed from its position, so a rerun with
the same seed gives the same episodes.

KV cache across rounds: the rounds run inside the engine's `keeping_prefixes()`
(the HF engine: each round encodes only the tokens the last one added, the sampled token that
ended the turn and the tool's output; measured in benchmarks/episodes.py). vLLM's prefix caching
does the same for its own engine; an engine that keeps nothing encodes each episode's history every round.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from groupo.tools.base import ToolCall, ToolResult
from groupo.tools.formats import ChatTemplate, PythonBlock, with_observation
from groupo.tools.toolbox import EpisodeTools
from groupo.types import Completion, Message, SamplingParams

Format = PythonBlock | ChatTemplate


@dataclass(frozen=True)
class EpisodeSettings:
    """max_turns: assistant turns per episode. workers: episodes whose tool calls run at once (0 =
    one per CPU)."""

    max_turns: int = 4
    workers: int = 0


@dataclass
class _Episode:
    prompt: list[int]
    tools: EpisodeTools
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    turn_start: int = 0  # where the current assistant turn began in ids
    turns: int = 0
    messages: list[dict] = field(default_factory=list)
    results: list[ToolResult] = field(default_factory=list)
    pending: list[ToolCall] = field(default_factory=list)     # calls of the turn that just stopped, to run
    unexecuted: list[ToolCall] = field(default_factory=list)  # calls of the last turn, not run (it ended)
    finish: str = ""  # how the episode ended (groupo.types.FinishReason); "" while it runs

    def add(self, ids: list[int], logprobs: list[float] | None) -> None:
        self.ids += ids
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(ids)
        self.mask += [1 if logprobs is not None else 0] * len(ids)


def run_episodes(engine, fmt: Format, messages: list[list[Message]], columns: list[dict[str, Any]],
                 params: SamplingParams, settings: EpisodeSettings) -> list[list[Completion]]:
    """`params.n` episodes of each prompt (`messages[i]`, chat messages before the template;
    `columns[i]` its dataset columns, for the environment's reset), in the tool format `fmt`
    (groupo.tools.make_format: its tokenizer and toolbox). Returns P lists of n Completions, one
    per episode (see the module docstring), in prompt order."""
    if len(messages) != len(columns):
        raise ValueError(f"run_episodes: {len(messages)} prompts but {len(columns)} column sets")
    tokenizer, toolbox = fmt.tokenizer, fmt.toolbox
    episodes = []
    for msgs, cols in zip(messages, columns, strict=True):
        for _ in range(params.n):
            tools = toolbox.new_episode(cols)
            episodes.append(_Episode(fmt.prompt_ids(with_observation(msgs, tools.observation)), tools))
    specials = set(tokenizer.all_special_ids)
    budget = params.max_new_tokens
    workers = settings.workers or len(os.sched_getaffinity(0))
    live, rnd = list(episodes), 0
    with ThreadPoolExecutor(workers, thread_name_prefix="groupo-episode") as pool, engine.keeping_prefixes():
        while live:
            for ep, c in zip(live, _generate(engine, episodes, live, params, fmt.stop, budget, rnd), strict=True):
                room = budget - len(ep.ids)
                ep.add(c.token_ids[:room], c.logprobs[:room])
                piece = tokenizer.decode(c.token_ids[:room], skip_special_tokens=False)
                if c.finish_reason == "length" or len(c.token_ids) > room:
                    ep.finish = "length"
                elif any(s in piece for s in params.stop):
                    ep.finish = "stop"
                else:
                    _read_turn(ep, fmt, c.token_ids[:room], piece, specials, settings.max_turns)
            pending = [ep for ep in live if not ep.finish and ep.pending]
            for ep, results in zip(pending, pool.map(lambda e: [e.tools.call(x) for x in e.pending], pending),
                                   strict=True):
                _add_results(ep, fmt, results, budget)
            for ep in live:
                if ep.finish:
                    _close(ep, fmt)
            live = [ep for ep in live if not ep.finish]
            rnd += 1
    out = [_completion(ep, tokenizer) for ep in episodes]
    return [out[i:i + params.n] for i in range(0, len(out), params.n)]


def _generate(engine, episodes: list[_Episode], live: list[_Episode], params: SamplingParams,
              stop: tuple[str, ...], budget: int, rnd: int) -> list[Completion]:
    """One completion per live episode. The first round samples n per prompt when the episodes of
    each prompt share it (no environment text made them differ), as single-turn rollouts do."""
    n = params.n
    base = replace(params, stop=tuple(params.stop) + stop, seed=round_seed(params.seed, rnd))
    shared = rnd == 0 and all(episodes[i].prompt == episodes[i + j].prompt
                              for i in range(0, len(episodes), n) for j in range(n))
    if shared:
        groups = engine.generate([episodes[i].prompt for i in range(0, len(episodes), n)], base)
        return [c for g in groups for c in g]
    longest = max(budget - len(ep.ids) for ep in live)
    groups = engine.generate([ep.prompt + ep.ids for ep in live], replace(base, n=1, max_new_tokens=longest))
    return [g[0] for g in groups]


def round_seed(seed: int | None, rnd: int) -> int | None:
    """Round 0 keeps the caller's seed (an episode without tool calls samples what a single-turn
    rollout would); later rounds a hash, far from the seeds of neighbouring steps."""
    if seed is None or rnd == 0:
        return seed
    return int.from_bytes(hashlib.blake2b(f"{seed}:{rnd}".encode(), digest_size=4).digest(), "big") >> 1


def _read_turn(ep: _Episode, fmt, piece_ids: list[int], piece: str, specials: set[int], max_turns: int) -> None:
    """Decide what the turn that just stopped asks for: tool calls (ep.pending), an answer, more
    of the same turn (python_block's stop string without a python block), or nothing more."""
    turn_ids = ep.ids[ep.turn_start:]
    special_end = bool(piece_ids) and piece_ids[-1] in specials
    # In python_block the model ends its turn with EOS: a block followed by EOS is its answer.
    calls = [] if special_end and fmt.name == "python_block" else _parse(fmt, turn_ids)
    ep.pending = calls
    if not calls:
        if not special_end and any(s in piece for s in fmt.stop):
            return  # continue the same turn
        ep.finish = "stop"
    elif ep.turns + 1 >= max_turns:
        ep.finish = "max_turns"
    if ep.finish:
        ep.pending, ep.unexecuted = [], calls


def _parse(fmt, turn_ids: list[int]) -> list[ToolCall]:
    """The turn's calls. The formats turn text they cannot read into error calls; this is the
    backstop for what they did not foresee: sampled text must never end a run (and a resumed run
    would sample the same turn and fail again)."""
    try:
        return fmt.parse(turn_ids)
    except Exception as e:
        return [ToolCall("", None, "", f"the turn could not be read ({type(e).__name__}: {e})")]


def _add_results(ep: _Episode, fmt, results: list[ToolResult], budget: int) -> None:
    turn_ids, calls = ep.ids[ep.turn_start:], ep.pending
    ep.pending = []
    ep.results += results
    tool_ids = fmt.tool_ids(turn_ids, calls, results)
    done = ep.tools.done
    if len(ep.ids) + len(tool_ids) > budget - (0 if done else 1):
        ep.finish, ep.unexecuted = "length", calls
        return
    ep.messages.append(fmt.assistant_message(turn_ids, calls))
    ep.messages += [{"role": "tool", "name": r.name, "content": r.content} for r in results]
    ep.add(tool_ids, None)
    ep.turns += 1
    ep.turn_start = len(ep.ids)
    if done:
        ep.finish = "done"


def _close(ep: _Episode, fmt) -> None:
    """The last assistant turn's message (none after a final tool turn)."""
    if ep.turn_start < len(ep.ids) or not ep.messages:
        ep.messages.append(fmt.assistant_message(ep.ids[ep.turn_start:], ep.unexecuted))
        ep.turns += 1


def _completion(ep: _Episode, tokenizer) -> Completion:
    stats = {"turns": ep.turns, "calls": len(ep.results), "errors": sum(r.error for r in ep.results),
             "truncated": sum(r.truncated for r in ep.results), "tool_s": sum(r.seconds for r in ep.results),
             "calls_by_tool": dict(Counter(r.name for r in ep.results))}
    return Completion(ep.prompt, ep.ids, ep.logprobs, tokenizer.decode(ep.ids, skip_special_tokens=True),
                      ep.finish, sampled_mask=ep.mask, messages=ep.messages, tool_stats=stats,
                      environment=ep.tools.environment)

