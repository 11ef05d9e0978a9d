"""Resident memory over a long run in the quickstart's own settings (`groupo train` with no file).

    python benchmarks/creep.py --steps 300                    # the quickstart, 300 steps, no time budget
    python benchmarks/creep.py --steps 60 --env ONEDNN_PRIMITIVE_CACHE_CAPACITY=8
    python benchmarks/creep.py --steps 60 -- train.lr=3e-4    # anything after -- is a config override

The trainer runs as its own process (`groupo train`, so nothing of this script is in its memory);
this script reads that process's current resident memory (VmRSS) and its peak (VmHWM) from /proc
every second and gives each training step the smallest and the largest VmRSS seen while it ran (a
step ends when its row reaches metrics.jsonl): the smallest is what the process keeps between its
passes (caches, leaks, heap it did not give back), the largest adds that step's activations.
Printed: the CPU, the step time, both at the second step (the first holds the start-up), the
middle and the end, and their least-squares slopes over the second half (MB a step; the first half
is warm-up: new shapes keep arriving while the prompt and completion lengths explore their range).
Held-out evaluation is cut to 1 problem (it is not what grows); checkpoints are written every 10
steps as in the quickstart.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine  # benchmarks/machine.py (this folder is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parents[1]


def vm(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of `pid` in MB, or (0, 0) once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0, 0.0
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    kb = lambda key: float(fields.get(key, "0 kB").split()[0])
    return kb("VmRSS") / 1024, kb("VmHWM") / 1024


def slope(ys: list[float]) -> float:
    """Least-squares slope of ys against 0, 1, 2, ... (per step)."""
    n = len(ys)
    if n < 2:
        return 0.0
    mx, my = (n - 1) / 2, statistics.fmean(ys)
    return sum((i - mx) * (y - my) for i, y in enumerate(ys)) / sum((i - mx) ** 2 for i in range(n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the trainer's environment")
    ap.add_argument("--out", type=Path, default=None, help="write the per-step table here (JSON)")
    ap.add_argument("overrides", nargs="*", help="config overrides for `groupo train` (after --)")
    args = ap.parse_args()
    print(f"machine: {machine()}", flush=True)
    env = dict(os.environ, **dict(e.split("=", 1) for e in args.env))
    with tempfile.TemporaryDirectory(prefix="groupo-creep-") as tmp:
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "groupo", "train", f"train.steps={args.steps}", "train.max_minutes=0",
               "task.eval_size=1", "run.progress=off", "run.tensorboard=false", f"run.dir={run}",
               *args.overrides]
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        samples, per_step, low, seen = [], [], [], []  # samples: (seconds since start, VmRSS, VmHWM)
        metrics = run / "metrics.jsonl"
        while proc.poll() is None:
            rss, hwm = vm(proc.pid)
            samples.append((time.monotonic() - t0, rss, hwm))
            seen += [rss] if rss else []
            lines = metrics.read_text().count("\n") if metrics.exists() else 0
            if lines > len(per_step) and seen:  # a step's row was written: its RSS since the last one
                low += [min(seen)] * (lines - len(per_step))
                per_step += [max(seen)] * (lines - len(per_step))
                seen = []
                if args.out:  # as it goes: a run stopped early still leaves its table
                    args.out.write_text(json.dumps({"machine": machine(), "env": args.env,
                                                    "overrides": args.overrides, "rss_mb": per_step,
                                                    "rss_low_mb": low}))
            time.sleep(1.0)
        err = proc.stderr.read().decode(errors="replace")
        if proc.returncode != 0:
            sys.exit(f"groupo train failed ({proc.returncode}):\n{err[-2000:]}")
        ends = [json.loads(x)["time/step_s"] for x in metrics.read_text().splitlines()]
    wall = time.monotonic() - t0
    half = len(per_step) // 2
    step_s = statistics.median(ends[1:] or ends)
    print(f"{len(ends)} steps in {wall:.0f} s, median {step_s:.1f} s/step; env {args.env or 'unchanged'}")
    for name, ys in (("smallest", low), ("largest", per_step)):
        print(f"RSS, {name} seen during the step: {ys[1]:.0f} MB at step 2, {ys[half]:.0f} at step {half + 1}, "
              f"{ys[-1]:.0f} at {len(ys)}; slope over steps {half + 1}-{len(ys)}: {slope(ys[half:]):+.3f} MB/step")
    print(f"peak (VmHWM) {max(h for *_, h in samples):.0f} MB")
    if args.out:
        args.out.write_text(json.dumps({"machine": machine(), "env": args.env, "overrides": args.overrides,
                                        "step_s": ends, "rss_mb": per_step, "rss_low_mb": low,
                                        "samples": samples}))


if __name__ == "__main__":
    main()
