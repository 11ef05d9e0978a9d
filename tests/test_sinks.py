"""Metric sinks: TensorBoard event files read back, the same keys in every tracker, install hints."""

import json
import math
import sys
import types

import pytest
from histories import record

from groupo.commands.resolve import resolve_config
from groupo.config import ConfigError, load_config
from groupo.report.sinks import numeric, open_sinks


def _cfg(tmp_path, *extra):
    return load_config(None, [f"run.dir={tmp_path}", *extra])


def _rows():
    alarm = {"name": "kl", "step": 2, "action": "warn", "message": "KL rose", "advice": "raise beta"}
    return [record(1), record(2, **{"loss/total": math.nan}, alarms=[alarm])]


def test_tensorboard_reads_the_event_files_with_the_jsonl_keys_and_values(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sinks = open_sinks(_cfg(tmp_path), tmp_path)
    for r in _rows():
        sinks.write(r)
    sinks.scalars({"accuracy/eval": 0.5}, 2)
    sinks.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert tags == set(numeric(record(1))) | {"accuracy/eval"}
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("reward/mean")] == [(1, 0.353), (2, 0.356)]
    assert [e.step for e in acc.Scalars("loss/total")] == [1]  # the NaN is not sent (the nan alarm names it)
    assert [e.step for e in acc.Scalars("accuracy/eval")] == [2]
    assert acc.Tags()["tensors"]  # the alarm, as text
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[1]["loss/total"] is None and lines[1]["alarms"][0]["name"] == "kl"


class _Recorder(types.ModuleType):
    """A stand-in tracker module that records what it is sent."""

    def __init__(self, name):
        super().__init__(name)
        self.logged, self.calls = [], []

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)

        def call(*args, **kwargs):
            self.calls.append(attr)
            if attr in ("log", "log_metrics"):
                self.logged.append((kwargs["step"], dict(args[0])))
            return self  # wandb.init returns the run, whose log/finish land here too
        return call


@pytest.mark.parametrize("name", ["wandb", "trackio", "mlflow"])
def test_optional_trackers_get_the_same_keys_at_the_same_steps(tmp_path, monkeypatch, name):
    fake = _Recorder(name)
    monkeypatch.setitem(sys.modules, name, fake)
    sinks = open_sinks(_cfg(tmp_path, "run.tensorboard=false", f"run.sinks=[{name}]"), tmp_path)
    for r in _rows():
        sinks.write(r)
    sinks.close()
    scalars = [(s, v) for s, v in fake.logged if not any(isinstance(x, str) for x in v.values())]
    assert scalars == [(1, numeric(record(1))), (2, numeric(_rows()[1]))]
    assert "loss/total" not in scalars[1][1] and not (tmp_path / "tb").exists()
    assert fake.calls[-1] in ("finish", "end_run")


@pytest.mark.parametrize("name", ["wandb", "trackio", "mlflow"])
def test_a_missing_tracker_is_a_clear_error_with_the_install_command(tmp_path, monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # import fails
    with pytest.raises(ConfigError, match=f"pip install {name}"):
        open_sinks(_cfg(tmp_path, "run.tensorboard=false", f"run.sinks=[{name}]"), tmp_path)


def test_an_unknown_sink_is_refused_before_anything_loads():
    with pytest.raises(ConfigError, match="unknown sink 'wandbb'; valid: tensorboard, wandb"):
        resolve_config(None, ["run.sinks=[wandbb]"])
