"""QLoRA's frozen base (Dettmers et al. 2023, arXiv 2305.14314): `model.quantization` = nf4 or fp4
(4-bit, blocks of 64 weights sharing one absmax) or int8 (LLM.int8, arXiv 2208.07339), loaded
through bitsandbytes by transformers (`BitsAndBytesConfig`). The linear layers of the decoder are
quantized; the embeddings, the norms and the output head stay in `model.dtype` (transformers keeps
the head unquantized). LoRA adapters on top stay float32 (peft), so the update is QLoRA's.

The 4-bit layers dequantize their weights to the compute dtype for every matmul: bf16 where the
run's autocast resolves to bf16 (hardware with native bf16), float32 under autocast none. With
float32 compute a 4-bit layer's output is the same as a float32 layer holding the dequantized
weights, to rounding (tests/test_qlora.py), which is what `groupo export` writes (`dequantized`).
int8 (LLM.int8) also rounds each matmul's inputs to 8 bits, in float16, where bitsandbytes runs it:
always on CUDA, and on a CPU only in eval mode (generation), since its CPU training path multiplies by
the dequantized weights; on a CPU the engine's log-probs then differ from the trainer's by that
rounding (rollout/logprob_mismatch 6e-4 to 7e-4 on a tiny Qwen2, against 2e-7 for nf4 and float32).

bitsandbytes is optional (`pip install 'groupo[qlora]'`); it runs on CUDA and, from 0.49, on CPUs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from groupo.config import ConfigError

if TYPE_CHECKING:  # torch is not imported here: the command line calls quiet_bitsandbytes before torch loads
    import torch

KINDS = ("nf4", "fp4", "int8")
INSTALL_HINT = "pip install 'groupo[qlora]' (bitsandbytes)"
# 4-bit: half a byte per weight and a float32 absmax per block of 64 weights (no double
# quantization); int8: a byte per weight and a float32 scale per output row (ignored here: tiny).
BLOCK = 64


def quiet_bitsandbytes() -> None:
    """Silence two bitsandbytes messages that say nothing to act on: at import on CPUs with AVX512-BF16,
    that an optional kernel could not be downloaded (its built-in one runs instead), and on every int8
    matmul, that float32 inputs are cast to float16 (LLM.int8 always does; see the module docstring)."""
    for name in ("bitsandbytes.backends.cpu.ops", "bitsandbytes.autograd._functions"):
        logging.getLogger(name).setLevel(logging.ERROR)


def require_bitsandbytes(kind: str) -> None:
    """ConfigError naming the extra to install when bitsandbytes is missing."""
    quiet_bitsandbytes()
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(f"model.quantization = {kind!r} needs bitsandbytes: {INSTALL_HINT}") from None


def quantization_config(kind: str, compute: torch.dtype):
    """transformers' BitsAndBytesConfig for `kind` (KINDS), 4-bit layers computing in `compute`."""
    from transformers import BitsAndBytesConfig

    if kind not in KINDS:
        raise ValueError(f"unknown quantization {kind!r}; valid: none, {', '.join(KINDS)}")
    require_bitsandbytes(kind)
    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=kind, bnb_4bit_compute_dtype=compute)


def keep_training_kernels(model: torch.nn.Module) -> None:
    """Stop bitsandbytes' CPU inference kernel from taking over `model`'s 4-bit layers. On a CPU
    with AVX512-BF16, bitsandbytes 0.50 repacks a 4-bit weight in place, at its first forward in eval
    mode without autograd (generation), for a fused bf16 kernel, and from then on every forward of the
    layer, training included, runs that kernel: it has no backward pass and computes in bf16 whatever
    the compute dtype. Measured on a tiny Llama: after one generation, every LoRA gradient was off by
    up to a third; with q/k/v biases (Qwen2) the backward stopped with an in-place error. With the
    repacking off, generation and training both dequantize and matmul in the compute dtype: the same
    numbers, correct gradients (tests/test_qlora.py), at some generation speed on such CPUs."""
    for m in model.modules():
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False


def own_unquantized_weights(model: torch.nn.Module) -> None:
    """On a CPU: give the weights that stay unquantized (embeddings, norms, biases, the head) memory of
    their own. transformers maps the safetensors file and leaves them as views of the mapping, which
    spans the whole file, every float weight quantized meanwhile included (all read while quantizing):
    the mapping stays resident as long as one view lives. Measured with the built-in SmolLM2-135M: the
    process held 534 MB more after loading it 4-bit, 237 MB with these copied (its weights: 177 MB)."""
    import torch

    with torch.no_grad():
        for m in model.modules():
            for p in m.parameters(recurse=False):
                # quantized weights are bitsandbytes' Parameter subclasses, in memory of their own already
                if type(p) is torch.nn.Parameter and p.device.type == "cpu":
                    p.data = p.data.clone()
            for name, b in list(m.named_buffers(recurse=False)):
                if b is not None and b.device.type == "cpu":
                    m._buffers[name] = b.clone()


def is_quantized(model: torch.nn.Module) -> bool:
    """Whether `model` (or the model inside a peft wrapper) was loaded through bitsandbytes."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False))


def quantization_kind(model: torch.nn.Module) -> str:
    """The model.quantization value `model` (or the model inside a peft wrapper) was loaded with."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    q = getattr(getattr(base, "config", None), "quantization_config", None)
    if not is_quantized(model) or q is None:
        return "none"
    get = q.get if isinstance(q, dict) else lambda k, d=None: getattr(q, k, d)
    return "int8" if get("load_in_8bit") else str(get("bnb_4bit_quant_type", "fp4"))


def dequantized(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`model` (loaded quantized, no adapters) with every quantized layer replaced by a plain
    nn.Linear holding its dequantized weights, all in `dtype`: the base the adapters were trained on,
    as a model that loads without bitsandbytes. In place; returns the model."""
    model.dequantize()  # transformers: bitsandbytes' own dequantization, into the compute dtype
    return model.to(dtype)


def weight_bytes(numel: int, kind: str, dtype_bytes: int) -> int:
    """Bytes that `numel` weights of the quantized linear layers take as `kind` ("none": `dtype_bytes`
    each)."""
    if kind == "none":
        return numel * dtype_bytes
    if kind == "int8":
        return numel
    return numel // 2 + (numel + BLOCK - 1) // BLOCK * 4
