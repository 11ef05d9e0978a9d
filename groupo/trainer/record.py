"""What one step writes: its metrics record and its sample lines (rank 0 only)."""

from __future__ import annotations

import json
import re
import resource
from pathlib import Path
from typing import Any

import torch

from groupo.report.keys import UPDATE_KEYS, fn_key
from groupo.rewards.extract import parse_number
from groupo.rewards.math import looks_symbolic
from groupo.rewards.trl_compat import metric_name
from groupo.rollout.metrics import episode_metrics


def step_record(step: int, rollout, update_metrics: dict[str, float], eval_reward: str, *, step_time: float,
                gen_time: float, data_position: int, device: torch.device) -> dict[str, Any]:
    """The metrics.jsonl line of a step; `rollout` is the global batch, so every value is global
    (reward/timeout_frac too: the answer checks that timed out on any rank, over all samples).
    Keys are those of groupo.report.keys.
    """
    completions = rollout.completions
    lengths = [len(c.token_ids) for c in completions]
    all_r = rollout.rewards_PG.flatten()
    n = len(completions)
    update = {UPDATE_KEYS.get(k, k): v for k, v in update_metrics.items()}
    sync = update.get("time/weight_sync_s", 0.0)
    return {
        "step": step, "reward/mean": all_r.mean().item() if len(all_r) else None,
        "reward/std": all_r.std().item() if len(all_r) > 1 else None,
        **{fn_key(k): _mean(v) for k, v in rollout.per_fn.items()},
        **{f"reward/none_frac/{metric_name(k)}": sum(x is None for x in v) / len(v)
           for k, v in rollout.per_fn.items() if v},
        "reward/timeout_frac": rollout.reward_timeouts / n if n else None,
        "reward/gold_unparsed_frac": (_mean([float(not parses(p.answer)) for p in rollout.problems])
                                      if eval_reward == "accuracy" else None),
        "accuracy/train": _mean([float(v == 1.0) for v in rollout.per_fn.get(eval_reward, []) if v is not None]),
        "completion/len_mean": sum(lengths) / n if n else None,
        "completion/len_max": max(lengths, default=None),
        "completion/truncated_frac": _mean([float(r == "length") for r in rollout.finish_reasons]),
        "completion/multi_answer_frac": _mean([float(answer_count(c.text) > 1) for c in completions]),
        "rollout/zero_var_group_frac": rollout.n_zero_var / max(1, rollout.n_groups),
        "rollout/groups_used": len(rollout.problems),
        **(episode_metrics(completions) if any(c.tool_stats for c in completions) else {}),
        **update, "time/step_s": step_time, "time/gen_s": gen_time,
        "time/update_s": max(0.0, step_time - gen_time - sync) if update else None,
        "time/tokens_per_s": sum(lengths) / step_time, **memory_metrics(device),
        "data_position": data_position,
    }


_ANSWERS = re.compile(r"<answer>|\\boxed\{")


def answer_count(text: str) -> int:
    """Opening <answer> tags and \\boxed{ in a completion (more than one: which one counts?)."""
    return len(_ANSWERS.findall(text))


def parses(answer: Any) -> bool:
    """Whether a reference answer is a plain number or looks like math the checker can read."""
    text = "" if answer is None else str(answer).strip()
    return bool(text) and (parse_number(text) is not None or looks_symbolic(text))


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
    """The first completion of each of the first `k` prompts, with its rewards; an episode with tools
    also as its messages (assistant turns, and `tool` turns holding what the tools returned)."""
    G = rollout.group_size
    with open(path, "a", encoding="utf-8") as fh:
        for i, problem in enumerate(rollout.problems[:k]):
            c = rollout.completions[i * G]
            fh.write(json.dumps({
                "step": step, "prompt": problem.question, "answer": problem.answer, "completion": c.text,
                "finish_reason": c.finish_reason, "rewards": {n: v[i * G] for n, v in rollout.per_fn.items()},
                **({"messages": c.messages} if c.messages is not None else {}),
            }, ensure_ascii=False) + "\n")


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None
