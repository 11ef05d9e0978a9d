"""Mixed precision choices: which autocast dtype the hardware runs natively."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


def autocast(kind: str | torch.dtype | None, device: torch.device | str = "cpu"):
    """The mixed-precision context of forward passes: `kind` is "none", "bf16" or "fp16" (or that
    dtype itself, None for none), `device` the device (or its type) the passes run on."""
    dtype = AUTOCAST_DTYPES[kind] if isinstance(kind, str) else kind
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


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


@contextlib.contextmanager
def frozen_linear_weights_in(model: torch.nn.Module, dtype: torch.dtype | None) -> Iterator[None]:
    """The frozen nn.Linear weights of `model` held in `dtype` for the block, e.g. generation under
    autocast to that dtype; each layer gets its own weight object back afterwards, bit for bit.

    Autocast casts a matmul's float32 weight to bf16 at every call and caches the cast only for
    weights that require grad, so a decoding loop over a LoRA model re-casts all of its frozen
    weights at every token (measured: a 32-row decode step of SmolLM2-135M took ~96-100 ms under
    autocast against ~70 ms with bf16 weights). Cast here once instead, with the same rounding, the
    matmuls are the same bf16 matmuls: outputs are bit-identical to plain autocast. Weights that
    require grad (autocast caches them) are left alone. An output head tied to the input embedding
    gets its own bf16 weight for the block; the embedding (an nn.Embedding, not a matmul) keeps
    its float32 one. Costs a bf16 copy of the cast weights.
    """
    if dtype is None:
        yield
        return
    saved = []
    try:
        with torch.no_grad():
            for m in model.modules():
                w = getattr(m, "weight", None)
                if (type(m) is torch.nn.Linear and isinstance(w, torch.nn.Parameter) and not w.requires_grad
                        and w.dtype != dtype and w.is_floating_point()):
                    saved.append((m, w))
                    m.weight = torch.nn.Parameter(w.to(dtype), requires_grad=False)
        yield
    finally:
        for m, w in saved:
            m.weight = w
