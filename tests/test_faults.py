"""Fault injection at random moments (`pytest -m faults`, run by .ci/run): a run interrupted by
SIGINT or SIGTERM, or killed by SIGKILL, anywhere in a step or inside a checkpoint write, and then
resumed, ends with exactly the weights and the metrics log of the run left alone.

The kill lands at a random time in the three steps after the second checkpoint (scaled to this
machine's step time), so each repetition hits another moment: sampling, the update, the record,
a checkpoint write. The deterministic cases (an interrupt inside the update, a damaged checkpoint,
a full disk, a read-only folder, two trainers on one folder) are in the default suite:
test_interrupts.py, test_checkpoint_safety.py, test_lock.py.
"""

from __future__ import annotations

import signal

import pytest
from test_trainer import _cli, _overrides, assert_same_final_weights_and_log, kill_after_checkpoints

pytestmark = pytest.mark.faults
STEPS = 8


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("alone")
    p = _cli(_overrides(tmp, STEPS, **{"run.dir": str(tmp / "run")}))
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    return tmp


@pytest.mark.parametrize("repeat", range(3))
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_a_signal_at_a_random_moment_then_resume_gives_the_uninterrupted_run(alone, tmp_path, sig, repeat):
    run = tmp_path / "run"
    p = _cli(_overrides(alone, STEPS, **{"run.dir": str(run)}))
    kill_after_checkpoints(p, run, "step-1", "step-2", lambda: p.send_signal(sig))
    expected = {signal.SIGINT: 130, signal.SIGTERM: 130, signal.SIGKILL: -signal.SIGKILL}[sig]
    assert p.returncode == expected, p.stdout.read()
    p = _cli(["--resume", str(run)])
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    assert_same_final_weights_and_log(alone / "run", run, STEPS)
