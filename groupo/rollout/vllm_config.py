"""What the vLLM engines need from a run's configuration: the base model's folder, the dtype, the
LoRA rank slot, and the engine built from it all (colocated, or a server's client). Every piece of
vLLM knowledge the trainer relies on is under groupo/rollout/; the training loop never names it.
"""

from __future__ import annotations

from pathlib import Path

from groupo.config import Config, ConfigError, ModelConfig
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


def from_config(cfg: Config, ctx):
    """The vLLM engine of `cfg` for `ctx` (a groupo.rollout.EngineContext): a server's client when
    rollout.vllm_url is set (rank 0 writes the adapters it loads, every rank names them), else a
    `vllm.LLM` in this process with its own copy of the base weights."""
    R, world, run_dir = cfg.rollout, ctx.world, Path(ctx.run_dir)
    if R.vllm_url:
        from groupo.rollout.vllm_server import VLLMServerEngine

        return VLLMServerEngine(ctx.model, ctx.tokenizer, url=R.vllm_url, adapter_dir=run_dir / "vllm-adapters",
                                lora_rank=cfg.lora.rank, world=world, timeout_s=R.vllm_timeout_s)
    from groupo.rollout.vllm import VLLMEngine

    return VLLMEngine(ctx.model, ctx.tokenizer, model_path=str(vllm_model_path(cfg.model)), lora_rank=cfg.lora.rank,
                      device=ctx.device, seed=cfg.train.seed + world.rank, dtype=vllm_dtype(cfg.model, ctx.amp),
                      adapter_dir=run_dir / "vllm-adapters" / (f"rank{world.rank}" if world.enabled else ""),
                      max_model_len=R.vllm_max_model_len or None, memory_share=R.vllm_memory_share,
                      kv_cache_gb=R.vllm_kv_cache_gb)
