"""The machine a benchmark ran on, printed with every figure (these CPUs differ: some have AVX-512
BF16 and AMX, some only AVX2, and bf16 speed depends on it)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    """CPU model, usable cores and the instruction sets that decide bf16 speed (x86 /proc/cpuinfo)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    field = lambda key: next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(key)), "")
    flags = set(field("flags").split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    marks = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in ("avx512_bf16", "amx_bf16", "avx2"))
    return f"{field('model name') or platform.processor() or 'unknown CPU'}, {cores} usable cores; {marks}"
