"""What a batch of episodes did with its tools, as run metrics, and an episode split for display."""

from __future__ import annotations

from collections.abc import Sequence

from groupo.types import Completion


def episode_metrics(completions: Sequence[Completion]) -> dict[str, float]:
    """Means over episodes: tools/turns_mean (assistant turns), tools/calls_mean, tools/calls/<name>
    (calls of that tool per episode); tools/error_frac and tools/truncated_frac (of all calls);
    time/tool_s: seconds spent in tool calls, summed over calls (they run in parallel across
    episodes, so this can exceed the wall-clock time). Single-turn completions count as one turn."""
    stats = [c.tool_stats or {"turns": 1, "calls": 0, "errors": 0, "truncated": 0, "tool_s": 0.0,
                              "calls_by_tool": {}} for c in completions]
    n, calls = max(len(stats), 1), sum(s["calls"] for s in stats)
    out = {"tools/turns_mean": sum(s["turns"] for s in stats) / n, "tools/calls_mean": calls / n,
           "tools/error_frac": sum(s["errors"] for s in stats) / calls if calls else 0.0,
           "tools/truncated_frac": sum(s["truncated"] for s in stats) / calls if calls else 0.0,
           "time/tool_s": sum(s["tool_s"] for s in stats)}
    for name in sorted({k for s in stats for k in s["calls_by_tool"]}):
        out[f"tools/calls/{name}"] = sum(s["calls_by_tool"].get(name, 0) for s in stats) / n
    return out


def episode_segments(completion: Completion, tokenizer) -> list[tuple[str, bool]]:
    """The episode's text as (text, is_tool) runs, split where `sampled_mask` changes: what
    samples.jsonl and the report show with tool results marked."""
    mask = completion.sampled_mask or [1] * len(completion.token_ids)
    segments, start = [], 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            text = tokenizer.decode(completion.token_ids[start:i], skip_special_tokens=False)
            segments.append((text, mask[start] == 0))
            start = i
    return segments
