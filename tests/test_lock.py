"""One trainer per run directory: a second process is refused by name; a killed holder blocks nothing."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faults import read_only

from groupo.trainer.lock import RunDirLocked, run_lock

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _short_wait(monkeypatch):
    """In this process, a held lock is retried 0.3 s, not a dying trainer's 10 s (lock.WAIT_S)."""
    from groupo.trainer import lock

    monkeypatch.setattr(lock, "WAIT_S", 0.3)

HOLDER = """
import sys, time
from pathlib import Path
from groupo.trainer.lock import run_lock
with run_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


def _hold_in_child(run_dir: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_second_process_is_refused_naming_the_holder_and_a_sigkilled_holder_blocks_nothing(tmp_path):
    run = tmp_path / "run"
    p = _hold_in_child(run)
    try:
        holder = rf"in use by another trainer: PID {p.pid} on {socket.gethostname()}, since "
        with pytest.raises(RunDirLocked, match=holder) as e, run_lock(run):
            pass
        assert "\n" not in str(e.value)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    with run_lock(run) as path:  # the kernel dropped the dead holder's lock
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_the_lock_is_free_again_after_the_block(tmp_path):
    # also within one process: a second open of the file is a second lock
    with run_lock(tmp_path), pytest.raises(RunDirLocked, match=f"PID {os.getpid()} "), run_lock(tmp_path):
        pass
    p = _hold_in_child(tmp_path)  # another process can take it now
    p.send_signal(signal.SIGKILL)
    p.wait()


def test_a_holder_that_exited_while_its_fork_lives_is_named_as_exited(tmp_path):
    code = HOLDER.replace('print("locked", flush=True)', 'import os\n    if os.fork():\n        os._exit(0)\n'
                          '    print("locked", flush=True)')
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert p.stdout.readline().strip() == "locked"
        p.wait()
        deadline = time.monotonic() + 10
        while True:
            try:
                with run_lock(tmp_path):
                    pytest.fail("the forked child still holds the lock")
            except RunDirLocked as e:
                if "has exited" in str(e) or time.monotonic() > deadline:
                    assert f"PID {p.pid} " in str(e) and "has exited" in str(e)
                    break
            time.sleep(0.05)
    finally:
        body = json.loads((tmp_path / ".lock").read_text())
        for pid in _children_holding(tmp_path / ".lock"):
            os.kill(pid, signal.SIGKILL)
        assert body["pid"] == p.pid


def _children_holding(path: Path) -> list[int]:
    """PIDs of processes with `path` open (from /proc)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if any(os.readlink(f) == str(path) for f in (d / "fd").iterdir()):
                found.append(int(d.name))
        except OSError:
            continue
    return [pid for pid in found if pid != os.getpid()]


def test_a_read_only_run_directory_is_one_clear_line(tmp_path):
    with read_only(tmp_path / "ro") as run:
        with pytest.raises(RunDirLocked, match=rf"cannot lock run.dir {run}: .*writable folder") as e, run_lock(run):
            pass
        assert "\n" not in str(e.value)


@pytest.mark.long
def test_a_second_groupo_train_on_the_same_run_dir_is_refused_naming_the_first(tmp_path):
    """Two `groupo train` on one run.dir: the second exits 2 with the first's PID (after retrying
    for lock.WAIT_S), and the first run's log stays its own (one line per step, none twice)."""
    from test_trainer import _cli, _overrides

    run = tmp_path / "run"
    # steps enough to outlast the second one's start and its lock retries (lock.WAIT_S): 200 tiny
    # steps once ended first on a quiet machine; the first is killed at the end anyway
    over = _overrides(tmp_path, 100_000, **{"run.dir": str(run)})
    first = _cli(over)
    try:
        deadline = time.monotonic() + 120
        while not (run / "config.yaml").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stdout.read()
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-m", "groupo", "train", *over], cwd=ROOT, capture_output=True,
                                text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert first.poll() is None, "the first trainer should still be running"
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2, second.stderr
    assert f"pid {first.pid}" in second.stderr.lower() and second.stderr.count("\n") == 1, second.stderr
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1))
