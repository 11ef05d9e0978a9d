"""`groupo plan` against measured runs: predicted and measured step time and peak memory.

    python benchmarks/plan_accuracy.py              # the configs below, 3 steps each
    python benchmarks/plan_accuracy.py --steps 4

For each config: `groupo plan --json` (its default: every completion as long as
rollout.max_new_tokens, the worst case), then `groupo train` for a few steps, each in its own
process. (Planning with the run's mean completion length instead was worse in every case
measured: a generate call runs until its longest row stops and a micro-batch is as wide as its
longest completion, so the mean understates both.) Measured: the median of time/step_s,
time/gen_s and time/update_s after the first step (a warm-up), and the run's peak RSS
(memory/host_peak_rss_mb). The errors are (plan - run) / run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import machine  # benchmarks/machine.py

ROOT = Path(__file__).resolve().parents[1]
GROUPO = [sys.executable, "-m", "groupo"]
COMMON = ["task.eval_size=2", "train.save_every=0", "run.progress=off", "run.samples_per_step=0",
          "train.max_minutes=0", "run.tensorboard=false"]
CONFIGS = {
    "quickstart, 4 x 8 x 48": ["train.prompts_per_step=4"],
    "quickstart, memory mode (activation checkpointing)": ["train.prompts_per_step=4",
                                                          "model.gradient_checkpointing=true"],
    "LoRA r64 on all linears, 4 x 4 x 96, micro-batch 8": [
        "train.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=96", "train.micro_batch_size=8",
        "lora.rank=64", "lora.alpha=64",
        'lora.target_modules=["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"]'],
    "full fine-tuning, beta 0.04, 2 x 8 x 32": [
        "lora.rank=0", "algorithm.beta=0.04", "train.lr=1e-6", "train.prompts_per_step=2", "rollout.max_new_tokens=32"],
}


def plan(over: list[str]) -> dict:
    out = subprocess.run([*GROUPO, "plan", *over, "--json"], capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise SystemExit(f"groupo plan failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def train(over: list[str], steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        out = subprocess.run([*GROUPO, "train", *over, f"train.steps={steps}", f"run.dir={run}"],
                             capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            raise SystemExit(f"groupo train failed:\n{out.stderr[-3000:]}")
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    later = rows[1:] or rows
    med = lambda k: statistics.median(r[k] for r in later)
    return {"step_s": med("time/step_s"), "gen_s": med("time/gen_s"), "update_s": med("time/update_s"),
            "peak_mb": max(r["memory/host_peak_rss_mb"] for r in rows),
            "len_mean": statistics.mean(r["completion/len_mean"] for r in rows)}


def err(p: float, m: float) -> str:
    return f"{(p - m) / m:+.0%}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    print(f"CPU: {machine()}")
    print("| config | | step | generation | update (+ reference) | peak memory |")
    print("|---|---|---|---|---|---|")
    for name, over in CONFIGS.items():
        over = COMMON + over
        worst = plan(over)
        run = train(over, args.steps)
        mb = 2**20
        print(f"| {name} | measured | {run['step_s']:.1f} s | {run['gen_s']:.1f} s | {run['update_s']:.1f} s | "
              f"{run['peak_mb']:,.0f} MiB |")
        for label, p in ((f"plan ({worst['completion_tokens']} tokens)", worst),):
            upd = p["update_s"] + p["reference_s"]
            print(f"| | {label} | {p['step_s']:.1f} s ({err(p['step_s'], run['step_s'])}) | "
                  f"{p['gen_s']:.1f} s ({err(p['gen_s'], run['gen_s'])}) | {upd:.1f} s ({err(upd, run['update_s'])}) | "
                  f"{p['peak_bytes'] / mb:,.0f} MiB ({err(p['peak_bytes'] / mb, run['peak_mb'])}) |", flush=True)


if __name__ == "__main__":
    main()
