"""Constructed metric histories and run directories with known shapes, for the alarm and report tests."""

from __future__ import annotations

import json
import math
from pathlib import Path


def record(step: int, **over) -> dict:
    """One healthy step: learning (accuracy rising), some zero-variance groups, finite everything."""
    acc = min(0.9, 0.3 + 0.003 * step)
    r = {
        "step": step, "reward/mean": acc + 0.05, "reward/std": 0.4, "reward/fn/accuracy": acc,
        "reward/fn/answer_format": 0.5, "reward/none_frac/accuracy": 0.0, "reward/none_frac/answer_format": 0.0,
        "reward/timeout_frac": 0.0, "reward/gold_unparsed_frac": 0.0, "accuracy/train": acc,
        "completion/len_mean": 30.0 - 0.02 * step, "completion/len_max": 48, "completion/truncated_frac": 0.1,
        "completion/multi_answer_frac": 0.0, "rollout/zero_var_group_frac": 0.25, "rollout/groups_used": 8,
        "rollout/logprob_mismatch": 1e-6, "rollout/mismatch_kl": 1e-9,
        "loss/total": 1e-8 * math.sin(step), "loss/kl": 0.01 + 0.0001 * math.sin(step), "loss/clip_low_frac": 0.0,
        "loss/clip_high_frac": 0.01, "loss/ratio_mean": 1.0, "loss/ratio_min": 1.0, "loss/ratio_max": 1.0,
        "loss/entropy": 0.8 - 0.001 * step, "loss/entropy_coef": 0.001, "loss/entropy_kept_frac": 1.0,
        "rollout/is_weight_mean": 1.0, "rollout/is_truncated_frac": 0.001, "rollout/is_truncated_seq_frac": 0.01,
        "rollout/is_masked_frac": 0.0, "rollout/is_masked_seq_frac": 0.0, "rollout/off_policy_masked_frac": 0.0,
        "rollout/off_policy_masked_seq_frac": 0.0, "optim/grad_norm": 0.5 + 0.1 * math.cos(step), "optim/lr": 6e-4,
        "time/step_s": 60.0, "time/gen_s": 30.0, "time/update_s": 29.9, "time/weight_sync_s": 0.1,
        "time/tokens_per_s": 32.0, "memory/host_peak_rss_mb": 2100.0, "data_position": 8 * step,
    }
    r.update(over)
    return r


def healthy(n: int, **over) -> list[dict]:
    return [record(s, **over) for s in range(1, n + 1)]


def write_run(run_dir: Path, rows: list[dict], *, samples_per_step: int = 4, evals: list[dict] | None = None) -> Path:
    """A run directory as `groupo train` leaves it: metrics, eval, samples, config, summary."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.jsonl", "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    last = rows[-1]["step"] if rows else 0
    evals = evals if evals is not None else [
        {"step": 0, "accuracy": 0.3, "n": 62, "seconds": 20.0, "pass@4": 0.5, "maj@4": 0.32, "mean@4": 0.3},
        {"step": last, "accuracy": 0.74, "n": 62, "seconds": 19.0, "pass@4": 0.85, "maj@4": 0.75, "mean@4": 0.72}]
    (run_dir / "eval.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    with open(run_dir / "samples.jsonl", "w", encoding="utf-8") as fh:
        for r in rows:
            for k in range(samples_per_step):
                a, b = (r["step"] * 7 + k) % 10, (r["step"] + 3 * k) % 10
                right = (r["step"] + k) % 3 == 0
                fh.write(json.dumps({
                    "step": r["step"], "prompt": f"What is {a} + {b}? Think it through, then give the answer.",
                    "answer": str(a + b), "completion": f"We add {a} and {b}. {a} + {b} = "
                    f"{a + b if right else a + b + 1}. The answer is {a + b if right else a + b + 1}.",
                    "finish_reason": "stop", "rewards": {"accuracy": float(right), "answer_format": 0.5}}) + "\n")
    (run_dir / "config.yaml").write_text("model:\n  name: smollm2-135m-instruct\ntrain:\n  steps: 200\n")
    (run_dir / "summary.json").write_text(json.dumps({"steps": last, "accuracy_before": 0.3, "accuracy_after": 0.74}))
    return run_dir
