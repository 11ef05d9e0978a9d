"""Ctrl-C and SIGTERM at any moment of a step leave a checkpoint of one completed step, and the
resumed run ends with exactly the weights of a run never interrupted (trainer.interrupts)."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from test_trainer import _final_weights, _overrides
from tiny import make_tiny

from groupo.config import load_config
from groupo.models import load_policy_from
from groupo.trainer import loop
from groupo.trainer import update as update_module
from groupo.trainer.checkpoint import list_checkpoints

STEPS = 4


def _train(cfg, run, resume=False):
    torch.manual_seed(0)  # peft draws the LoRA initialisation from the global RNG
    return loop.train(cfg, run, resume=resume, policy=load_policy_from(*make_tiny(), cfg.lora, beta=0.0))


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("alone")
    cfg = load_config(None, _overrides(tmp, STEPS, **{"run.dir": str(tmp / "run"), "train.save_every": 0}))
    _train(cfg, tmp / "run")
    return _final_weights(tmp / "run")


def _steps_logged(run) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def _interrupting_update(monkeypatch, at_call: int, signals: list[int], after_first_microbatch: bool = False):
    """loop.update, with `signals` sent to this process during its `at_call`-th call: before the
    update starts, or (after_first_microbatch) once its first micro-batch has run backward."""
    real_update, real_accumulate = loop.update, update_module.accumulate_gradients
    calls = []

    def send():
        for sig in signals:
            os.kill(os.getpid(), sig)

    def update(*args, **kwargs):
        calls.append(1)
        if len(calls) == at_call and not after_first_microbatch:
            send()
        return real_update(*args, **kwargs)

    def accumulate(*args, **kwargs):
        out = real_accumulate(*args, **kwargs)
        if len(calls) == at_call and after_first_microbatch:
            send()
        return out

    monkeypatch.setattr(loop, "update", update)
    monkeypatch.setattr(update_module, "accumulate_gradients", accumulate)


@pytest.mark.parametrize("sig,save_every,mid", [(signal.SIGINT, 0, False), (signal.SIGTERM, 1, True),
                                                (signal.SIGINT, 1, False)])
def test_an_interrupt_during_the_update_saves_the_finished_step_and_resumes_exactly(tmp_path, monkeypatch, alone,
                                                                                     sig, save_every, mid):
    run = tmp_path / "run"
    cfg = load_config(None, _overrides(tmp_path, STEPS, **{"run.dir": str(run), "train.save_every": save_every}))
    _interrupting_update(monkeypatch, 2, [sig], after_first_microbatch=mid)
    with pytest.raises(KeyboardInterrupt):
        _train(cfg, run)
    assert [p.name for p in list_checkpoints(run)][-1] == "step-2"  # the interrupted step, finished first
    monkeypatch.undo()
    _train(cfg, run, resume=True)
    got = _final_weights(run)
    assert got.keys() == alone.keys()
    for name in alone:
        assert torch.equal(got[name], alone[name]), name
    assert _steps_logged(run) == list(range(1, STEPS + 1))  # the interrupted step's line was written


def test_a_second_interrupt_mid_update_saves_nothing_and_the_last_checkpoint_resumes_exactly(tmp_path, monkeypatch,
                                                                                            alone):
    run = tmp_path / "run"
    cfg = load_config(None, _overrides(tmp_path, STEPS, **{"run.dir": str(run), "train.save_every": 1}))
    _interrupting_update(monkeypatch, 3, [signal.SIGINT, signal.SIGINT], after_first_microbatch=True)
    with pytest.raises(KeyboardInterrupt):
        _train(cfg, run)
    assert [p.name for p in list_checkpoints(run)][-1] == "step-2"  # step 3 was cut mid-update: not saved
    monkeypatch.undo()
    _train(cfg, run, resume=True)
    got = _final_weights(run)
    for name in alone:
        assert torch.equal(got[name], alone[name]), name
    assert _steps_logged(run) == list(range(1, STEPS + 1))
