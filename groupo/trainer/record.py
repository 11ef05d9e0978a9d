"""What one step writes: its metrics record and its sample lines (rank 0 only)."""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Any

import torch


def step_record(step: int, rollout, update_metrics: dict[str, float], eval_reward: str, *, step_time: float,
                gen_time: float, data_position: int, device: torch.device) -> dict[str, Any]:
    """The metrics.jsonl line of a step; `rollout` is the global batch, so every value is global."""
    completions = rollout.completions
    lengths = [len(c.token_ids) for c in completions]
    all_r = rollout.rewards_PG.flatten()
    return {
        "step": step, "reward_mean": all_r.mean().item() if len(all_r) else None,
        "reward_std": all_r.std().item() if len(all_r) > 1 else None,
        **{f"reward/{k}": _mean(v) for k, v in rollout.per_fn.items()},
        "accuracy": _mean([float(v == 1.0) for v in rollout.per_fn.get(eval_reward, []) if v is not None]),
        "completion_len_mean": sum(lengths) / len(lengths) if lengths else None,
        "completion_len_max": max(lengths, default=None),
        "truncated_frac": _mean([float(r == "length") for r in rollout.finish_reasons]),
        "zero_var_group_frac": rollout.n_zero_var / max(1, rollout.n_groups), "groups_used": len(rollout.problems),
        **update_metrics, "step_time_s": step_time, "gen_time_s": gen_time,
        "tokens_per_s": sum(lengths) / step_time, **memory_metrics(device),
        "data_position": data_position,
    }


def memory_metrics(device: torch.device) -> dict[str, float]:
    """Host peak resident memory (this process) and, on CUDA, the step's peak GPU memory.

    The GPU peak is reset after each reading, so it is the peak of the step just logged.
    """
    out = {"memory/host_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # KiB
    if device.type == "cuda":
        out["memory/gpu_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["memory/gpu_reserved_peak_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
    return out


def write_samples(path: Path, step: int, rollout, k: int) -> None:
    """The first completion of each of the first `k` prompts, with its rewards."""
    G = rollout.group_size
    with open(path, "a", encoding="utf-8") as fh:
        for i, problem in enumerate(rollout.problems[:k]):
            c = rollout.completions[i * G]
            fh.write(json.dumps({
                "step": step, "prompt": problem.question, "answer": problem.answer, "completion": c.text,
                "finish_reason": c.finish_reason, "rewards": {n: v[i * G] for n, v in rollout.per_fn.items()},
            }, ensure_ascii=False) + "\n")


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None
