"""Real (tiny) training runs: a NaN stops before saving, a constant reward means no signal, Ctrl-C reports."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import _overrides
from tiny import make_tiny

import groupo.trainer.loop as loop
from groupo.config import load_config
from groupo.models import load_policy_from
from groupo.report.alarms import TrainingStopped

CONSTANT = "def constant(prompts, completions, **kwargs):\n    return [1.0 for _ in completions]\n"


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_nan_in_the_update_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_update, calls = loop.update, []

    def update_that_breaks_at_step_3(module, *args, **kwargs):
        metrics = real_update(module, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:  # as an overflowing update would: NaN weights, loss and gradient
            with torch.no_grad():
                for p in module.parameters():
                    if p.requires_grad:
                        p.fill_(math.nan)
            metrics |= {"loss": math.nan, "grad_norm": math.nan}
        return metrics

    monkeypatch.setattr(loop, "update", update_that_breaks_at_step_3)
    run = tmp_path / "run"
    cfg = load_config(None, _overrides(tmp_path, 5, **{"run.dir": str(run)}))
    with pytest.raises(TrainingStopped) as e:
        loop.train(cfg, run, policy=load_policy_from(*make_tiny(), cfg.lora, beta=0.0))
    msg = str(e.value)
    assert "alarm nan at step 3" in msg and "loss/total = nan" in msg and "optim/grad_norm = nan" in msg
    assert f"last good checkpoint: {run / 'checkpoints' / 'step-2'}" in msg and "--resume" in msg
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-1", "step-2"]  # none of step 3
    assert not (run / "final").exists()
    weights = {k: v for f in (run / "checkpoints" / "step-2").glob("*.safetensors") for k, v in load_file(f).items()}
    assert weights and all(torch.isfinite(v).all() for v in weights.values())
    rows = _rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[2]["loss/total"] is None
    assert "nan" in [a["name"] for a in rows[2]["alarms"]]
    assert all(a["name"] != "nan" for r in rows[:2] for a in r.get("alarms", []))
    assert "alarm nan at step 3" in (run / "report.html").read_text()


def test_a_constant_reward_fires_no_learning_signal_at_step_3(tmp_path, capsys):
    (tmp_path / "constant.py").write_text(CONSTANT)
    run = tmp_path / "run"
    cfg = load_config(None, _overrides(tmp_path, 4, **{
        "run.dir": str(run), "rewards.funcs": json.dumps({f"{tmp_path / 'constant.py'}:constant": 1.0}),
        "train.save_every": 0, "rollout.max_new_tokens": 3}))
    loop.train(cfg, run, policy=load_policy_from(*make_tiny(), cfg.lora, beta=0.0))
    rows = _rows(run)
    assert [r["rollout/zero_var_group_frac"] for r in rows] == [1.0] * 4
    fired = {r["step"]: [a["name"] for a in r.get("alarms", [])] for r in rows}
    assert fired[1] == fired[2] == [] and "no_signal" in fired[3] and "no_signal" not in fired[4]
    out = capsys.readouterr().out
    assert out.count("no learning signal") == 1 and "~0 by construction" in out
    cfg_off = load_config(None, [*_overrides(tmp_path, 3, **{
        "run.dir": str(tmp_path / "quiet"), "rewards.funcs": json.dumps({f"{tmp_path / 'constant.py'}:constant": 1.0}),
        "train.save_every": 0, "rollout.max_new_tokens": 3}), "run.alarms=off"])
    loop.train(cfg_off, tmp_path / "quiet", policy=load_policy_from(*make_tiny(), cfg.lora, beta=0.0))
    assert all("alarms" not in r for r in _rows(tmp_path / "quiet"))


def test_ctrl_c_saves_a_checkpoint_and_writes_the_report(tmp_path, monkeypatch):
    real_update, calls = loop.update, []

    def update_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_update(*args, **kwargs)

    monkeypatch.setattr(loop, "update", update_then_interrupt)
    run = tmp_path / "run"
    cfg = load_config(None, _overrides(tmp_path, 4, **{"run.dir": str(run), "train.save_every": 0}))
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, run, policy=load_policy_from(*make_tiny(), cfg.lora, beta=0.0))
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-1"]
    assert json.loads((run / "summary.json").read_text()) == {"run_dir": str(run), "steps": 1, "interrupted": True}
    assert '"step":[0,1]' in (run / "report.html").read_text()  # the evaluation before, the one step
