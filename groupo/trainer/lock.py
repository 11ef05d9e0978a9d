"""One trainer per run directory: an exclusive lock on `RUN/.lock`, held while the trainer runs.

Two trainers writing one run directory interleave `metrics.jsonl` and overwrite each other's
`config.yaml`, checkpoints and `final/`. `run_lock` takes `fcntl.flock` on `RUN/.lock` without
waiting; the second trainer is refused, naming the holder's PID, host and start time (the file's
JSON body, written once the lock is held). The kernel releases a flock when the last descriptor
of it closes, so a trainer killed by any signal (SIGKILL included) leaves no stale lock: the file
stays, its body describes the last holder, and the next `run_lock` takes it. The file is never
deleted: a process that had opened the old file would hold a lock nobody else sees.

A process forked without exec (not spawned) shares the descriptor, so while such a child lives
the lock is held even if the trainer died; the message then says that the holder has exited.
Under torchrun only rank 0 takes the lock. flock works across machines on NFSv4 and most shared
filesystems, not on every one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from groupo.config import ConfigError

NAME = ".lock"


class RunDirLocked(ConfigError):
    """Another trainer holds the run directory (or it cannot be locked at all)."""


def _holder(fd: int) -> str:
    """Who holds the lock, from the file's body: 'PID 123 on host, since 2026-12-06 10:00:00 UTC'."""
    try:
        body = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        pid, host, since = int(body["pid"]), str(body["host"]), str(body["started"])
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "a process that has not written its PID yet"
    gone = ""
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            gone = " (it has exited; a process it forked still holds the lock: end that one)"
        except PermissionError:
            pass  # alive, another user's
    return f"PID {pid} on {host}, since {since}{gone}"


# A trainer killed a moment ago (SIGKILL to a whole job, then an immediate restart with --resume)
# holds its lock until the kernel has torn the process down, which takes a while for one with
# gigabytes mapped: the lock is retried this long before a holder counts as another trainer.
WAIT_S = 10.0


def _take(fd: int, wait_s: float) -> None:
    """flock(LOCK_EX) without blocking, retried for `wait_s` seconds; the last OSError otherwise."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN) or time.monotonic() >= deadline:
                raise
        time.sleep(0.1)


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[Path]:
    """Hold the exclusive lock on `run_dir` (created if missing) for the `with` block; yields the
    lock file. RunDirLocked when another trainer holds it, or the folder cannot be written."""
    run_dir = Path(run_dir)
    path = run_dir / NAME
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise RunDirLocked(f"cannot lock run.dir {run_dir}: {e.strerror} ({path}); a trainer writes there, so "
                           "it must be a writable folder: choose another run.dir or fix its permissions") from None
    try:
        try:
            _take(fd, WAIT_S)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirLocked(f"cannot lock run.dir {run_dir} ({path}): {e.strerror}") from None
            raise RunDirLocked(f"run.dir {run_dir} is in use by another trainer: {_holder(fd)}; wait for it to "
                               "end or stop it (two trainers on one run directory overwrite each other's "
                               "files), or choose another run.dir") from None
        body = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(body).encode("utf-8"), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # released: no holder to name
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
