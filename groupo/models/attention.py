"""Which attention kernel a model's forward passes use, chosen per block of passes.

transformers reads `config._attn_implementation` at every forward, so the update can run another
kernel than generation without reloading. Measured on a 2-core AVX-512 BF16 CPU, quickstart
settings (micro-batches of 16 rows of ~110 positions, bf16 autocast): SDPA's fused CPU kernel
spent 1.75 s of a ~14 s update in its backward alone (7.6 ms a call), and the whole update took
12.1-12.2 s with "eager" attention (scores written out as matmuls) against 13.9-14.7 s with SDPA
on the same first step. Eager keeps each layer's (rows x heads x L x L) attention probabilities
for the backward, so it suits short sequences: at 400 positions that is ~4 GB for SmolLM2-135M.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from groupo.models.packed_attention import PACKED, register

KERNELS = ("sdpa", "eager")


def _config(model: torch.nn.Module):
    """The transformers config behind `model` (through DDP / FSDP2 and peft wrappers)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return getattr(model, "config", None)


@contextlib.contextmanager
def attention_kernel(model: torch.nn.Module, name: str, packing: bool = False) -> Iterator[None]:
    """`model`'s forward passes attend with `name` ("sdpa" or "eager") inside the block; the
    implementation it had is restored afterwards. Only this config, not its sub-configs.
    packing: the same kernel inside each segment of a flat row (groupo.models.packed_attention),
    which then serves only the padding-free passes (groupo.models.packing)."""
    if name not in KERNELS:
        raise ValueError(f"attention kernel {name!r} is unknown; valid: {', '.join(KERNELS)}")
    if packing:
        register()
        name = PACKED[name]
    config = _config(model)
    before = getattr(config, "_attn_implementation", None)
    if config is None or before == name:
        yield
        return
    config._attn_implementation = {"": name}
    try:
        yield
    finally:
        config._attn_implementation = {"": before}


@contextlib.contextmanager
def packed_kernel(model: torch.nn.Module) -> Iterator[None]:
    """The padding-free variant of the kernel `model` attends with now, for the block (as it is
    where it is one already; "sdpa" for a kernel other than "sdpa" and "eager"). Under activation
    checkpointing the caller must hold it through the backward pass, whose recomputation would
    otherwise attend across the segments of a flat row: hence the error."""
    config = _config(model)
    now = getattr(config, "_attn_implementation", None)
    if now in PACKED.values():
        yield
        return
    if any(getattr(m, "gradient_checkpointing", False) for m in model.modules()):
        raise RuntimeError("a padding-free pass under activation checkpointing needs the packed kernel held "
                           "through the backward pass: run it inside attention_kernel(model, kernel, packing=True)")
    with attention_kernel(model, now if now in KERNELS else "sdpa", packing=True):
        yield
