"""The run's bookkeeping: progress, metric sinks, the history the alarms read, samples.jsonl,
eval.jsonl and the report, opened once and closed once, the same way on every exit.

    with RunLog(cfg, run_dir, world, state.step, state.elapsed_s) as run:
        ...                             # run.step(...), run.evaluation(...), run.log(...)
        run.summary = {...}             # what the report shows; an interrupt or error marks it

Rank 0 writes; the other ranks keep the history (empty) and a silent progress display, so the
calls are the same on every rank.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from groupo.config import Config
from groupo.distributed import Dist, broadcast_object
from groupo.report.alarms import Alarm, fired, lookback
from groupo.report.html import write_report
from groupo.report.metrics import read_jsonl, truncate_after
from groupo.report.progress import TrainProgress
from groupo.report.sinks import open_sinks
from groupo.trainer.record import write_samples


class RunLog:
    def __init__(self, cfg: Config, run_dir: Path, world: Dist, start_step: int, elapsed_s: float):
        self.cfg, self.run_dir, self.world = cfg, run_dir, world
        self.main = world.is_main
        if self.main:
            for name in ("metrics.jsonl", "samples.jsonl", "eval.jsonl"):
                truncate_after(run_dir / name, start_step)  # drop what a killed run logged past its checkpoint
        self.sinks = open_sinks(cfg, run_dir) if self.main else None
        self.history = read_jsonl(run_dir / "metrics.jsonl") if self.main else []
        T = cfg.train
        self.progress = TrainProgress(T.steps, start=start_step, mode=cfg.run.progress if self.main else "off",
                                      budget_s=max(0.0, 60 * T.max_minutes - elapsed_s) if T.max_minutes else 0.0)
        self.summary: dict[str, Any] = {"run_dir": str(run_dir), "steps": start_step}
        self.report: Path | None = None

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, kind, error, tb) -> None:
        """Close the display and the sinks and write the report, whatever ended the run."""
        if kind is KeyboardInterrupt:
            self.summary["interrupted"] = True
        elif error is not None and "stopped_by" not in self.summary:
            self.summary["error"] = f"{kind.__name__}: {error}"
        self.progress.close()
        if self.main:
            self.sinks.close()
            self.report = write_report(self.run_dir, self.summary)

    def log(self, message: str) -> None:
        self.progress.log(message)

    def _evals(self, split: str | None) -> list[dict[str, Any]]:
        """eval.jsonl's rows of one held-out split (None: the main one, whose rows have no "split");
        rank 0 reads, the others get []."""
        rows = read_jsonl(self.run_dir / "eval.jsonl") if self.main else []
        return [r for r in rows if r.get("split") == split]

    def evaluated_before(self, split: str | None = None) -> bool:
        """Whether eval.jsonl has an evaluation of `split` (then a resumed run has its "before" figure)."""
        return bool(broadcast_object(bool(self._evals(split)), self.world))

    def step(self, record: dict[str, Any], rollout, eval_reward: str) -> list[Alarm]:
        """Record a step (metrics line, samples, progress) and return the alarms it fired."""
        self.history.append(record)
        first, last = lookback(self.cfg.alarms)
        if len(self.history) > 2 * (first + last):  # bounded: a day-long run must not grow with its steps
            del self.history[first:len(self.history) - last]
        self.summary["steps"] = record["step"]
        alarms = broadcast_object(fired(self.history, self.cfg.alarms, eval_reward)
                                  if self.main and self.cfg.run.alarms else [], self.world)
        for alarm in alarms:
            self.log(alarm.text())
        if alarms:
            record["alarms"] = [a.as_dict() for a in alarms]
        if self.main:
            self.sinks.write(record)
            write_samples(self.run_dir / "samples.jsonl", record["step"], rollout, self.cfg.run.samples_per_step)
        self.progress.advance(record)
        return alarms

    def evaluation(self, step: int, accuracy: float, n: int, seconds: float, split: str | None = None,
                   sampled: dict[str, float] | None = None) -> float:
        """Record a held-out evaluation: an eval.jsonl row (with "split" for an extra split of
        task.extra_eval_splits; the main split's rows have none; with train.eval_samples, the
        sampled metrics pass@k, maj@k, mean@k, the sample count and temperature), the sinks'
        accuracy/eval (or accuracy/eval_<split>) and eval/<metric>, and a log line."""
        sampled = sampled or {}
        extra = {"samples": self.cfg.train.eval_samples, "temperature": self._eval_temperature()} if sampled else {}
        if self.main:
            row = {"step": step, "accuracy": accuracy, "n": n, "seconds": round(seconds, 1), **sampled, **extra}
            with open(self.run_dir / "eval.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row | ({"split": split} if split else {})) + "\n")
            self.sinks.scalars({f"accuracy/eval_{split}" if split else "accuracy/eval": accuracy,
                                **{f"eval/{k}": v for k, v in sampled.items()}}, step)
        what = f"{split} split accuracy" if split else "held-out accuracy"
        also = "".join(f", {k} {v:.1%}" for k, v in sampled.items())
        self.log(f"eval step {step}: {what} {accuracy:.1%}{also} on {n} problems ({seconds:.0f}s)")
        return accuracy

    def _eval_temperature(self) -> float:
        T = self.cfg.train
        return T.eval_temperature if T.eval_temperature is not None else self.cfg.rollout.temperature

    def sampled_eval(self) -> dict[str, Any]:
        """With train.eval_samples = k: {"eval_samples": k, "eval_temperature": t, "pass@k_before": ...,
        "pass@k_after": ..., and so for maj@k and mean@k} from the main split's first and last eval.jsonl
        rows that have them, for the summary; {} otherwise."""
        rows = [r for r in self._evals(None) if "samples" in r]
        out: dict[str, Any] = {}
        if rows:
            first, last = rows[0], rows[-1]
            out = {"eval_samples": last["samples"], "eval_temperature": last["temperature"]}
            for key in (k for k in last if "@" in k):
                out |= {f"{key}_before": first.get(key), f"{key}_after": last[key]}
        return broadcast_object(out, self.world)

    def first_accuracy(self) -> float | None:
        """The run's first held-out accuracy of the main split (its "before"), the same on every rank."""
        evals = self._evals(None)
        return broadcast_object(evals[0]["accuracy"] if evals else None, self.world)

    def extra_eval(self) -> dict[str, Any]:
        """{"extra_eval": {split: before, after, improvement, problems}} from eval.jsonl's rows of the
        extra splits (first and last row of each), for the summary; {} when there are none."""
        rows = read_jsonl(self.run_dir / "eval.jsonl") if self.main else []
        out: dict[str, dict[str, Any]] = {}
        for split in dict.fromkeys(r["split"] for r in rows if r.get("split")):
            mine = [r for r in rows if r.get("split") == split]  # the file read once, not twice a split
            first, last = mine[0], mine[-1]
            out[split] = {"accuracy_before": first["accuracy"], "accuracy_after": last["accuracy"],
                          "improvement_points": round(100 * (last["accuracy"] - first["accuracy"]), 1),
                          "eval_problems": last["n"]}
        out = broadcast_object(out, self.world)
        return {"extra_eval": out} if out else {}

    def closing(self) -> str:
        """The run's last log lines, from `summary`: held-out accuracy before -> after (and each extra
        split's), the final weights and the report."""
        s = self.summary
        lines = [f"held-out accuracy: {s['accuracy_before']:.1%} -> {s['accuracy_after']:.1%} "
                 f"({s['improvement_points']:+.1f} points) after {s['steps']} steps, {s['train_minutes']} min "
                 "of training"]
        lines += [f"{split} split accuracy: {e['accuracy_before']:.1%} -> {e['accuracy_after']:.1%} "
                  f"({e['improvement_points']:+.1f} points) on {e['eval_problems']} problems"
                  for split, e in s.get("extra_eval", {}).items()]
        if "eval_samples" in s:
            metrics = [k[:-len("_before")] for k in s if k.endswith("_before") and "@" in k]
            lines.append(f"held-out, {s['eval_samples']} samples each at temperature {s['eval_temperature']}: "
                         + ", ".join(f"{m} {s[m + '_before']:.1%} -> {s[m + '_after']:.1%}" for m in metrics))
        return "\n".join([*lines, f"final weights: {self.run_dir / 'final'}", f"report: {self.report}"])
