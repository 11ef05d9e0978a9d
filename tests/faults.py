"""Real faults for tests: a small tmpfs (a disk that fills up) and a read-only folder.

As root, chmod does not stop writes, so a read-only folder is a tmpfs remounted read-only; that
needs CAP_SYS_ADMIN, and a test skips when neither way works. Usage: `from faults import ...`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def _mount(path: Path, options: str) -> bool:
    return os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode == 0


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """`path` as a tmpfs of `size` (e.g. "600k"), unmounted afterwards; skips where it cannot mount."""
    path.mkdir()
    if not _mount(path, f"size={size}"):
        pytest.skip("mounting a small tmpfs needs root and CAP_SYS_ADMIN")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@contextlib.contextmanager
def read_only(path: Path, fill: Callable[[Path], object] = lambda p: None) -> Iterator[Path]:
    """`path` made read-only after `fill(path)` wrote its contents: chmod 555 on it and its
    subfolders, or as root a tmpfs remounted read-only."""
    path.mkdir()
    mounted = _mount(path, "size=8m")
    if os.geteuid() == 0 and not mounted:
        pytest.skip("as root chmod does not stop writes, and no tmpfs could be mounted read-only")
    folders = [path]
    try:
        fill(path)
        folders += [d for d in path.rglob("*") if d.is_dir()]
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        else:
            for d in folders:
                d.chmod(0o555)
        yield path
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=True)
        else:
            for d in folders:
                d.chmod(0o755)
