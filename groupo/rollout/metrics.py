"""What a batch of episodes did with its tools, as run metrics."""

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

