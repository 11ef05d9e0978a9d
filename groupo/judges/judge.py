"""The LLM judge: a chat model asked for a verdict on each completion (or on each group), as an
async reward function in TRL's signature, logged as reward/fn/judge.

A call builds one request per completion (group mode: one per prompt's group) with
`groupo.rewards.judging.judge_messages`, asks each distinct request once, and parses the replies
with the configured rule. Requests go to a backend:

    RemoteBackend  an OpenAI-compatible server (judges/client.py): up to max_concurrency requests in
                   flight, each with its time limit and retries after 1, 2, 4 ... s (timeouts, 429,
                   5xx and malformed answers); a server found unreachable fails the rest of the call
                   at once rather than waiting on every request
    LocalBackend   a model in this process, run by groupo's transformers engine: the call's requests
                   generated together in batches of max_concurrency, greedy unless a temperature is set

Nothing the judge does stops the run: a failed request or a reply the rule cannot read scores None
for its samples (counted in `judge/...` metrics, alarmed by `alarms.judge`).

Replies are remembered per training step, so identical requests within a step are asked once. In a
run directory they are also written to `judge/replies-rank<R>.jsonl` (request hash, step, reply or
failure, never the key or the request): a resumed run replays the replies of the steps it repeats,
and scores them exactly as the killed run did even when the judge itself would answer differently
(docs/resume.md). Evaluation's calls (trainer_state at step 0 of 0) use neither.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import os
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from groupo.judges.client import ChatClient, Reply, RequestFailed
from groupo.rewards.base import completion_text
from groupo.rewards.judging import ParseRule, judge_messages

log = logging.getLogger(__name__)
Entry = Reply | RequestFailed


def request_key(chat: list[dict]) -> str:
    return hashlib.sha256(json.dumps(chat, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:24]


def _question(prompt: Any) -> str:
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return str(users[-1]) if users else completion_text(prompt)
    return str(prompt)


class RemoteBackend:
    def __init__(self, client: ChatClient, model: str, *, max_tokens: int, temperature: float, retries: int,
                 max_concurrency: int, backoff_s: float = 1.0):
        self.client, self.model = client, model
        self.max_tokens, self.temperature, self.retries, self.backoff_s = max_tokens, temperature, retries, backoff_s
        self.max_concurrency = max_concurrency
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="groupo-judge")

    def describe(self) -> str:
        return f"{self.client.url} ({self.model or 'its first model'})"

    def _served(self) -> str:
        if not self.model:  # the server's first model, asked once it answers
            ids = self.client.models()
            if not ids:
                raise RequestFailed("garbage", "/models lists no model; set rewards.judge.model")
            self.model = ids[0]
        return self.model

    async def ask(self, chats: list[list[dict]], seeds: list[int | None], prefix: str = "",
                  max_tokens: int | None = None) -> list[tuple[Entry, float]]:
        """Each chat's reply (or failure) and seconds. `prefix` and `max_tokens` are for a backend that
        starts the reply itself; a chat API cannot, so there the instruction alone asks for the bare
        verdict, and the reply keeps rewards.judge.max_tokens (a server's model may open with a
        reasoning block of its own)."""
        loop, sem, down = asyncio.get_running_loop(), asyncio.Semaphore(self.max_concurrency), []

        async def one(chat: list[dict], seed: int | None) -> tuple[Entry, float]:
            async with sem:
                start = time.perf_counter()
                for attempt in range(self.retries + 1):
                    if down:
                        return down[0], 0.0
                    try:
                        model = await loop.run_in_executor(self._pool, self._served)
                        call = functools.partial(self.client.chat, model, chat, max_tokens=self.max_tokens,
                                                 temperature=self.temperature, seed=seed)
                        # the socket's own limit ends the thread; this one also bounds a trickling answer
                        reply = await asyncio.wait_for(loop.run_in_executor(self._pool, call),
                                                       self.client.timeout_s + 1)
                        return reply, time.perf_counter() - start
                    except (TimeoutError, RequestFailed) as e:
                        failure = e if isinstance(e, RequestFailed) else RequestFailed("timeout", "no answer in time")
                        if failure.kind == "unreachable":
                            down.append(failure)
                        if not failure.retryable or attempt == self.retries:
                            return failure, time.perf_counter() - start
                    await asyncio.sleep(self.backoff_s * 2**attempt)
                raise AssertionError("unreachable: the loop returns")

        return list(await asyncio.gather(*(one(c, s) for c, s in zip(chats, seeds, strict=True))))


class LocalBackend:
    """No time limit of its own: a generation always ends (max_tokens bounds it), and one cut off
    would go on running anyway, since a decoding loop cannot be stopped from outside. The outer
    bound is rewards.async_timeout_s."""

    def __init__(self, engine, tokenizer, *, max_tokens: int, temperature: float):
        self.engine, self.tokenizer = engine, tokenizer
        self.max_tokens, self.temperature = max_tokens, temperature
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="groupo-judge")  # one generation at a time

    def describe(self) -> str:
        return "in this process"

    def special_tokens(self) -> list[str]:
        return [*self.tokenizer.all_special_tokens, *self.tokenizer.get_added_vocab()]

    def _generate(self, prompts: list[list[int]], seed: int | None, prefix: str, max_tokens: int) -> list[Reply]:
        from groupo.types import SamplingParams

        params = SamplingParams(n=1, temperature=self.temperature, max_new_tokens=max_tokens, seed=seed)
        groups = self.engine.generate(prompts, params)
        return [Reply(prefix + g[0].text, len(p), len(g[0].token_ids)) for p, g in zip(prompts, groups, strict=True)]

    async def ask(self, chats: list[list[dict]], seeds: list[int | None], prefix: str = "",
                  max_tokens: int | None = None) -> list[tuple[Entry, float]]:
        """Each chat's reply and seconds (the batch's time shared out). With `prefix` the reply is
        started with it ("Score: "), so that even a small model writes the verdict first."""
        from groupo.data.prompts import encode_prompt

        if not chats:
            return []
        start = time.perf_counter()
        started = self.tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
        prompts = [encode_prompt(self.tokenizer, chat) + started for chat in chats]
        replies = await asyncio.get_running_loop().run_in_executor(
            self._pool, self._generate, prompts, seeds[0], prefix, min(self.max_tokens, max_tokens or self.max_tokens))
        each = (time.perf_counter() - start) / len(chats)
        return [(r, each) for r in replies]


class Record:
    """A training run's judge replies by (step, request), appended as they come (see the module doc)."""

    def __init__(self, path: Path):
        self.path, self._lock = path, threading.Lock()

    def load(self, from_step: int) -> dict[int, dict[str, Entry]]:
        """The replies of steps >= `from_step` (earlier ones are in the checkpoint: the file keeps only these)."""
        out: dict[int, dict[str, Entry]] = defaultdict(dict)
        if not self.path.is_file():
            return out
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                step, key = int(row["step"]), str(row["key"])
            except (ValueError, KeyError, TypeError):
                continue  # the last line of a killed run may be cut short
            if step >= from_step:
                out[step][key] = (RequestFailed(row["failed"], row.get("message", "")) if "failed" in row
                                  else Reply(row.get("text", ""), row.get("prompt_tokens", 0),
                                             row.get("completion_tokens", 0)))
                kept.append(line)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        tmp.replace(self.path)
        return out

    def add(self, step: int, items: list[tuple[str, Entry]]) -> None:
        lines = []
        for key, e in items:
            row: dict[str, Any] = {"step": step, "key": key}
            row |= ({"failed": e.kind, "message": str(e)[:200]} if isinstance(e, RequestFailed)
                    else {"text": e.text, "prompt_tokens": e.prompt_tokens, "completion_tokens": e.completion_tokens})
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write("".join(lines))
                fh.flush()
                os.fsync(fh.fileno())  # a SIGKILL right after the step must not lose what it was told


class Judge:
    """`await judge(prompts=..., completions=..., answer=..., trainer_state=...)` -> one score in
    [0, 1] or None per completion. `pop_counters()` hands `score` the counts behind `judge/...`."""

    def __init__(self, backend, *, template: str, rule: ParseRule, group: bool = False, record: Record | None = None,
                 special_tokens: list[str] | None = None, seeded: bool = False, think: bool = True):
        self.backend, self.template, self.rule, self.group, self.record = backend, template, rule, group, record
        self.think = think
        self.special_tokens, self.seeded = special_tokens or [], seeded
        self.counts: dict[str, float] = defaultdict(float)
        self._step: int | None = None
        self._cache: dict[str, Entry] = {}
        self._replay: dict[int, dict[str, Entry]] | None = None
        self._warned: set[str] = set()

    def pop_counters(self) -> dict[str, float]:
        out, self.counts = dict(self.counts), defaultdict(float)
        return out

    def _requests(self, prompts: list, texts: list[str], answer: list | None) -> list[tuple[list[dict], list[int]]]:
        """(judge chat, the batch indices it scores), in batch order."""
        members: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            group = json.dumps(p, sort_keys=True, ensure_ascii=False) if self.group else str(i)
            members.setdefault(group, []).append(i)
        out = []
        for idx in members.values():
            ref = None if answer is None or answer[idx[0]] is None else str(answer[idx[0]])
            chat = judge_messages(self.template, self.rule, _question(prompts[idx[0]]), ref, [texts[i] for i in idx],
                                  self.special_tokens, group=self.group, think=self.think)
            out.append((chat, idx))
        return out

    def _cache_for(self, trainer_state: Any) -> tuple[dict[str, Entry], int | None]:
        """The step's cache and step (None: an evaluation call, with a cache of its own)."""
        if trainer_state is None or not getattr(trainer_state, "max_steps", 0):
            return {}, None
        step = int(trainer_state.global_step)
        if step != self._step:
            if self._replay is None:
                self._replay = self.record.load(step) if self.record is not None else {}
            self._step, self._cache = step, dict(self._replay.pop(step, {}))
        return self._cache, step

    async def __call__(self, prompts: list, completions: list, answer: list | None = None, trainer_state: Any = None,
                       **kwargs: Any) -> list[float | None]:
        texts = [completion_text(c) for c in completions]
        requests = self._requests(list(prompts), texts, answer)
        cache, step = self._cache_for(trainer_state)
        keys = [request_key(chat) for chat, _ in requests]
        todo = list(dict.fromkeys(k for k in keys if k not in cache))
        chats = {k: chat for k, (chat, _) in zip(keys, requests, strict=True)}
        seeds = [int(k[:8], 16) if self.seeded else None for k in todo]
        # without thinking, the verdict alone: a few tokens per line (a group's K lines), its label given
        lines = max((len(idx) for _, idx in requests), default=1) if self.group else 1
        answered = await self.backend.ask([chats[k] for k in todo], seeds, prefix="" if self.think else
                                          self.rule.label(self.group), max_tokens=None if self.think else 8 * lines)
        for k, (entry, seconds) in zip(todo, answered, strict=True):
            cache[k] = entry
            self.counts["latency_s"] += seconds
            if isinstance(entry, RequestFailed):
                self.counts["failures"] += 1
                self._warn(entry)
            else:
                self.counts["prompt_tokens"] += entry.prompt_tokens
                self.counts["completion_tokens"] += entry.completion_tokens
        if self.record is not None and step is not None and todo:
            self.record.add(step, [(k, cache[k]) for k in todo])
        self.counts["requests"] += len(todo)
        self.counts["cached"] += len(keys) - len(todo)
        scores: list[float | None] = [None] * len(texts)
        for k, (_, idx) in zip(keys, requests, strict=True):
            entry = cache[k]
            if isinstance(entry, RequestFailed):
                continue
            self.counts["replies"] += 1
            verdicts = self.rule.parse_group(entry.text, len(idx)) if self.group else [self.rule.parse(entry.text)]
            self.counts["unparsed"] += verdicts[0] is None
            for i, v in zip(idx, verdicts, strict=True):
                scores[i] = v
        return scores

    def _warn(self, failure: RequestFailed) -> None:
        """One warning per kind of failure: the alarm and the metrics say how often."""
        if failure.kind not in self._warned:
            self._warned.add(failure.kind)
            log.warning("judge (%s): a request failed (%s): %s; its samples score None, the run goes on",
                        self.backend.describe(), failure.kind, failure)
