"""Where a run's metrics go: metrics.jsonl (always, the canonical record), TensorBoard (by default),
and Weights & Biases, trackio or MLflow when `run.sinks` names them.

Every sink gets the same keys (groupo.report.keys) at the same steps: the numeric, finite values
of each record (JSON and the trackers have no NaN; the nan alarm names such a value), and the
alarms as text. The optional trackers are imported only when configured, with an install hint.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from groupo.config import Config, ConfigError, to_dict
from groupo.report.metrics import MetricsWriter

HINTS = {"wandb": "pip install wandb", "trackio": "pip install trackio", "mlflow": "pip install mlflow",
         "tensorboard": "pip install tensorboard (or run.tensorboard=false)"}


def _import(name: str, module: str | None = None):
    import importlib

    try:
        return importlib.import_module(module or name)
    except ImportError as e:
        raise ConfigError(f"the {name} sink needs the {name} package, which is not installed: {HINTS[name]}") from e


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


class TensorBoard:
    def __init__(self, cfg: Config, run_dir: Path):
        _import("tensorboard")  # torch's writer needs it; the hint is clearer than torch's message
        from torch.utils.tensorboard import SummaryWriter

        self.w = SummaryWriter(str(run_dir / "tb"))

    def log(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.w.add_scalar(k, v, step)
        self.w.flush()

    def text(self, key: str, text: str, step: int) -> None:
        self.w.add_text(key, text, step)

    def close(self) -> None:
        self.w.close()


class Wandb:
    def __init__(self, cfg: Config, run_dir: Path):
        self.run = _import("wandb").init(project=cfg.run.name, name=run_dir.name, dir=str(run_dir),
                                         config=to_dict(cfg))

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def text(self, key: str, text: str, step: int) -> None:
        self.run.log({key: text}, step=step)

    def close(self) -> None:
        self.run.finish()


class Trackio:
    def __init__(self, cfg: Config, run_dir: Path):
        self.mod = _import("trackio")
        self.mod.init(project=cfg.run.name, name=run_dir.name, config=to_dict(cfg))

    def log(self, values: dict[str, float], step: int) -> None:
        self.mod.log(values, step=step)

    def text(self, key: str, text: str, step: int) -> None:
        pass  # trackio logs numbers; the alarms are in metrics.jsonl and the report

    def close(self) -> None:
        self.mod.finish()


class Mlflow:
    def __init__(self, cfg: Config, run_dir: Path):
        self.mod = _import("mlflow")
        self.mod.set_experiment(cfg.run.name)
        self.mod.start_run(run_name=run_dir.name)
        self.mod.log_params({k: str(v)[:500] for k, v in _flat(to_dict(cfg)).items()})

    def log(self, values: dict[str, float], step: int) -> None:
        self.mod.log_metrics(values, step=step)

    def text(self, key: str, text: str, step: int) -> None:
        self.mod.log_text(text, f"{key}/step-{step}.txt")

    def close(self) -> None:
        self.mod.end_run()


SINKS = {"tensorboard": TensorBoard, "wandb": Wandb, "trackio": Trackio, "mlflow": Mlflow}


def numeric(record: dict[str, Any]) -> dict[str, float]:
    """The values a tracker can plot: finite numbers, except the step itself."""
    return {k: float(v) for k, v in record.items() if k != "step" and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v)}


class Sinks:
    """metrics.jsonl plus the configured trackers, written together."""

    def __init__(self, jsonl: MetricsWriter, others: list):
        self.jsonl, self.others = jsonl, others

    def write(self, record: dict[str, Any]) -> None:
        self.jsonl.write(record)
        self.scalars(numeric(record), record["step"])
        for alarm in record.get("alarms", []):
            for s in self.others:
                s.text("alarms", f"{alarm['name']} ({alarm['action']}): {alarm['message']}. {alarm['advice']}",
                       record["step"])

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Values kept elsewhere than metrics.jsonl (accuracy/eval: eval.jsonl) for the trackers."""
        for s in self.others:
            s.log(values, step)

    def close(self) -> None:
        self.jsonl.close()
        for s in self.others:
            s.close()


def open_sinks(cfg: Config, run_dir: Path) -> Sinks:
    names = (["tensorboard"] if cfg.run.tensorboard else []) + [n for n in cfg.run.sinks if n != "tensorboard"]
    others = [SINKS[n](cfg, run_dir) for n in names]
    return Sinks(MetricsWriter(run_dir / "metrics.jsonl"), others)
