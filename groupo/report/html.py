"""The end-of-run report: PNG plots of the training curves and a self-contained `report.html`."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from groupo.report.metrics import read_jsonl

PLOTS = [  # (file, title, metric keys)
    ("reward.png", "Reward (mean over the batch)", ["reward_mean"]),
    ("accuracy.png", "Accuracy: training samples and held-out (greedy)", ["accuracy", "eval_accuracy"]),
    ("length.png", "Completion length (tokens)", ["completion_len_mean", "completion_len_max"]),
    ("kl_entropy.png", "KL to the reference and entropy", ["kl", "entropy"]),
    ("clipping.png", "Fraction of tokens clipped", ["clip_low_frac", "clip_high_frac"]),
    ("speed.png", "Step time (s)", ["step_time_s"]),
]


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def make_plots(run_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    rows = read_jsonl(run_dir / "metrics.jsonl")
    evals = [{"step": r["step"], "eval_accuracy": r["accuracy"]} for r in read_jsonl(run_dir / "eval.jsonl")]
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    for name, title, keys in PLOTS:
        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
        drawn = False
        for key in keys:
            xs, ys = _series(evals if key == "eval_accuracy" else rows, key)
            if xs:
                ax.plot(xs, ys, marker="o" if key == "eval_accuracy" else None, label=key)
                drawn = True
        if drawn:
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(out_dir / name)
            written.append(out_dir / name)
        plt.close(fig)
    return written


def write_report(run_dir: Path, summary: dict[str, Any]) -> Path:
    """`summary.json` plus `report.html` (plots embedded, so the file can be mailed alone)."""
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    plots = make_plots(run_dir)
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in summary.items() if not isinstance(v, dict))
    imgs = "".join(
        f'<img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        for p in plots)
    samples = read_jsonl(run_dir / "samples.jsonl")[-6:]
    sample_rows = "".join(
        f"<tr><td>{s.get('step')}</td><td><pre>{html.escape(str(s.get('prompt', ''))[-300:])}</pre></td>"
        f"<td><pre>{html.escape(str(s.get('completion', '')))}</pre></td>"
        f"<td>{html.escape(json.dumps(s.get('rewards', {})))}</td></tr>"
        for s in samples)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>groupo run report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}
img{{max-width:49%}}pre{{white-space:pre-wrap;margin:0}}</style></head><body>
<h1>groupo run: {html.escape(run_dir.name)}</h1><table>{rows}</table>
<h2>Curves</h2>{imgs}<h2>Last samples</h2>
<table><tr><th>step</th><th>prompt (end)</th><th>completion</th><th>rewards</th></tr>{sample_rows}</table>
</body></html>"""
    out = run_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    return out
