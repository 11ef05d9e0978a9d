"""Mixed precision choices: which autocast dtype the hardware runs natively."""

from __future__ import annotations

import torch

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


def native_half(kind: str, device: torch.device | str = "cpu") -> bool:
    """Whether `kind` ("bf16"/"fp16") has native kernels on `device` (AVX512-BF16/AMX on CPUs)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported() if kind == "bf16" else True
    check = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}[kind]
    try:  # a private torch probe; without it, assume the CPU is fine rather than guess slow
        return bool(getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError):
        return True


def resolve_autocast(kind: str, device: torch.device | str | None = None) -> str:
    """"auto" -> "bf16" where bf16 is native on `device`, else "none". Emulated bf16 on an AVX2 CPU
    made generation 6x slower than float32 (benchmarks/generation.py)."""
    if kind != "auto":
        if kind not in AUTOCAST_DTYPES:
            raise ValueError(f"unknown autocast {kind!r}; valid: auto, {', '.join(AUTOCAST_DTYPES)}")
        return kind
    device = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    return "bf16" if native_half("bf16", device) else "none"
