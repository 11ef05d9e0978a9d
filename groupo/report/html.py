"""The run report: one self-contained `report.html` with interactive plots of one or several runs.

Plotting: uPlot (MIT, 51 KB minified, vendored in groupo/report/vendor and inlined) draws the
curves on a canvas from columns of numbers. It was chosen over SVG written by hand or larger
libraries (Plotly is ~3.5 MB, Chart.js ~200 KB and slower on long series) because it gives hover
values, drag-to-zoom, series toggles and synchronised cursors in a file that stays small and
opens instantly: the page is the library, a short script (report.js) and the data as JSON.
A 200-step run with 4 samples a step is about 0.3 MB (tests/test_report.py checks < 1 MB).

The page opens offline: no CDN, no fonts, nothing fetched.
"""

from __future__ import annotations

import html
import json
import logging
import math
from pathlib import Path
from typing import Any

from groupo.config import ConfigError
from groupo.report.keys import KEYS
from groupo.report.metrics import read_jsonl

ASSETS = Path(__file__).parent / "vendor"

# (id, title, keys): "reward/fn/*" stands for every reward function's key. A plot none of whose
# keys a run measured (KL without a reference, GPU memory on a CPU) says so instead of drawing.
PLOTS: list[tuple[str, str, list[str]]] = [
    ("reward", "Reward: total (weighted), mean and std over the batch", ["reward/mean", "reward/std"]),
    ("reward_fn", "Reward per function (unweighted mean)", ["reward/fn/*"]),
    ("accuracy", "Accuracy: training samples and held-out (greedy)",
     ["accuracy/train", "accuracy/eval", "accuracy/eval_*"]),
    ("eval_sampled", "Held-out, k samples each (train.eval_samples): pass@k, maj@k, mean@k",
     ["eval/pass@*", "eval/maj@*", "eval/mean@*"]),
    ("length", "Completion length (tokens)", ["completion/len_mean", "completion/len_max"]),
    ("truncated", "Share truncated at the length limit, and with several answers",
     ["completion/truncated_frac", "completion/multi_answer_frac"]),
    ("zero_var", "Share of zero-variance groups (no learning signal)", ["rollout/zero_var_group_frac"]),
    ("kl", "KL: to the reference (loss/kl) and engine vs trainer", ["loss/kl", "rollout/mismatch_kl"]),
    ("clip", "Fraction of tokens clipped", ["loss/clip_low_frac", "loss/clip_high_frac"]),
    ("entropy", "Entropy (nats per token): all tokens, and those the policy term keeps",
     ["loss/entropy", "loss/entropy_kept"]),
    ("loss", "Loss (about 0 by construction with mu = 1 and beta = 0) and the entropy bonus in it",
     ["loss/total", "loss/entropy_bonus"]),
    ("entropy_coef", "Entropy bonus coefficient (adaptive entropy control)", ["loss/entropy_coef"]),
    ("is_weight", "Importance weight against the engine, token mean", ["rollout/is_weight_mean"]),
    ("corrected", "Shares corrected against the engine: truncated, masked, dropped (tokens; *_seq: sequences); "
     "kept by entropy", ["rollout/is_truncated_frac", "rollout/is_truncated_seq_frac", "rollout/is_masked_frac",
                         "rollout/is_masked_seq_frac", "rollout/off_policy_masked_frac",
                         "rollout/off_policy_masked_seq_frac", "loss/entropy_kept_frac"]),
    ("grad_norm", "Gradient norm (before clipping)", ["optim/grad_norm"]),
    ("lr", "Learning rate", ["optim/lr"]),
    ("time", "Time per step (s)", ["time/step_s", "time/gen_s", "time/update_s", "time/weight_sync_s"]),
    ("tokens", "Completion tokens per second", ["time/tokens_per_s"]),
    ("memory", "Memory (MiB)", ["memory/host_peak_rss_mb", "memory/gpu_peak_mb", "memory/gpu_reserved_peak_mb"]),
    ("reward_health", "Reward functions: share None, timed out; unparseable references",
     ["reward/none_frac/*", "reward/timeout_frac", "reward/gold_unparsed_frac"]),
]
log = logging.getLogger(__name__)
MAX_SAMPLES = 3000  # per run, the newest; each text cut to MAX_CHARS
MAX_CHARS = 2000


def _round(v: Any) -> Any:
    """5 significant digits: plenty for a curve, and a third of the file's numbers' size."""
    if isinstance(v, float):
        return float(f"{v:.5g}") if math.isfinite(v) else None
    return v


def _cut(text: Any) -> str:
    s = "" if text is None else str(text)
    return s if len(s) <= MAX_CHARS else s[:MAX_CHARS] + f" ... [{len(s) - MAX_CHARS} more characters]"


def run_data(run_dir: Path) -> dict[str, Any]:
    """Everything the page shows of one run, from its files (none of which has to exist)."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    evals = read_jsonl(run_dir / "eval.jsonl")
    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    series = {k: [_round(r.get(k)) for r in rows] for k in keys}
    if evals:  # held-out accuracy at its own steps: merged into the step axis, null elsewhere; the rows
        # of an extra split (task.extra_eval_splits, with "split") are their own series, accuracy/eval_<split>
        steps = sorted({r["step"] for r in rows} | {e["step"] for e in evals})
        at = {s: i for i, s in enumerate(steps)}
        merged = {k: [None] * len(steps) for k in keys}
        for i, r in enumerate(rows):
            for k in keys:
                merged[k][at[r["step"]]] = series[k][i]
        merged["step"] = steps
        for e in evals:
            key = f"accuracy/eval_{e['split']}" if e.get("split") else "accuracy/eval"
            merged.setdefault(key, [None] * len(steps))[at[e["step"]]] = _round(e.get("accuracy"))
            for k in (k for k in e if "@" in k):  # train.eval_samples: pass@k, maj@k, mean@k
                merged.setdefault(f"eval/{k}", [None] * len(steps))[at[e["step"]]] = _round(e[k])
        series = merged
    alarms = [a | {"step": r["step"]} for r in rows for a in r.get("alarms", [])]
    samples = read_jsonl(run_dir / "samples.jsonl")[-MAX_SAMPLES:]
    for s in samples:
        for k in ("prompt", "completion", "answer"):
            s[k] = _cut(s.get(k))
        s["rewards"] = {k: _round(v) for k, v in (s.get("rewards") or {}).items()}
        if isinstance(s.get("messages"), list):  # an episode with tools: its turns, each cut
            s["messages"] = [_turn(m) for m in s["messages"] if isinstance(m, dict)]
    config = run_dir / "config.yaml"
    return {"name": run_dir.name, "path": str(run_dir), "series": series, "evals": evals, "alarms": alarms,
            "samples": samples,
            "config": config.read_text(encoding="utf-8", errors="replace") if config.exists() else "",
            "summary": _summary(run_dir / "summary.json")}


def _turn(message: dict) -> dict[str, str]:
    """One turn of an episode as the report shows it: who (the model, or which tool) and the text,
    with the calls the model made written after its text."""
    calls = [c.get("function", c) for c in message.get("tool_calls") or [] if isinstance(c, dict)]
    text = "\n".join([str(message.get("content") or ""),
                      *(f"[call] {c.get('name')}({json.dumps(c.get('arguments'), ensure_ascii=False)})"
                        for c in calls)])
    return {"role": str(message.get("role", "")), "name": str(message.get("name") or ""), "content": _cut(text)}


def _summary(path: Path) -> dict[str, Any]:
    """summary.json, or {} with a warning when it is empty or damaged (a run killed while writing
    it): the rest of the report comes from metrics.jsonl and does not need it."""
    if not path.exists():
        return {}
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(summary, dict):
            return summary
        problem = f"holds a JSON {type(summary).__name__}, not an object"
    except (OSError, UnicodeDecodeError, ValueError) as e:
        problem = "is empty" if path.is_file() and path.stat().st_size == 0 else f"is not valid JSON ({e})"
    log.warning("%s %s; the report is drawn without the run's summary", path, problem)
    return {}


# Inside <script> the HTML tokenizer still looks for `</script`, and `<!--` followed by `<script`
# sends it into the "script data double escaped" state, where it runs past every `</script>` of
# the page. With no `<` left in the JSON neither can happen; `>` and `&` go too (nothing to close
# or to decode), and U+2028/2029 because older JavaScript parsers end a line at them.
_SCRIPT_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                                 "\u2029": "\\u2029"})


def _script_json(data: Any) -> str:
    """JSON safe inside <script>: the same value after JSON.parse, and no `<` the HTML parser acts on."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).translate(_SCRIPT_ESCAPES)


def render(runs: list[dict[str, Any]]) -> str:
    """The page for one or several runs' `run_data` (several: overlaid on the same plots)."""
    title = "groupo run report: " + ", ".join(r["name"] for r in runs)
    lib = (ASSETS / "uPlot.iife.min.js").read_text(encoding="utf-8")
    css = (ASSETS / "uPlot.min.css").read_text(encoding="utf-8")
    page = (Path(__file__).parent / "report.js").read_text(encoding="utf-8")
    style = (Path(__file__).parent / "report.css").read_text(encoding="utf-8")
    payload = {"runs": runs, "plots": PLOTS, "keys": KEYS}
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{css}</style><style>{style}</style></head>
<body><h1>{html.escape(title)}</h1>
<p class="hint">Hover a plot for values; drag to zoom, double-click to reset; click a legend entry to hide it.
Red lines mark alarms that stopped the run, orange ones warnings.</p>
<div id="summary"></div><h2>Alarms</h2><div id="alarms"></div>
<h2>Curves</h2><div id="plots"></div>
<h2>Evaluation (held-out, greedy)</h2><div id="evals"></div>
<h2>Sampled completions</h2><div id="samples"></div>
<h2>Configuration</h2><div id="config"></div>
<script id="data" type="application/json">{_script_json(payload)}</script>
<script>{lib}</script><script>{page}</script></body></html>
"""


def write_page(run_dirs: list[Path], out: Path) -> Path:
    page = render([run_data(d) for d in run_dirs])
    try:
        out.write_text(page, encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot write the report {out}: {e.strerror or e}; write it elsewhere with "
                          "`groupo report RUN_DIR --out FILE.html`") from None
    return out


def write_report(run_dir: Path, summary: dict[str, Any] | None = None) -> Path:
    """`summary.json` (when given) and `report.html` of one run; returns the report's path."""
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return write_page([run_dir], run_dir / "report.html")
