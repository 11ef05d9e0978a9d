"""LoRA adapters (Hu et al. 2021, arXiv 2106.09685) on a causal LM, via peft."""

from __future__ import annotations

import torch

from groupo.config import LoraConfig


def apply_lora(model: torch.nn.Module, cfg: LoraConfig):
    """Wrap `model` in a peft PeftModel with adapters on `cfg.target_modules`.

    Only adapter weights are trainable. They are float32 whatever the base dtype (peft's
    `autocast_adapter_dtype`), so small updates are not lost to bf16 rounding.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    if cfg.rank <= 0:
        raise ValueError(f"LoRA needs rank > 0, got {cfg.rank} (rank 0 means full fine-tuning)")
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in cfg.target_modules if t not in names]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                         if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"lora.target_modules {missing} are not modules of this model; "
                         f"its linear layers are: {', '.join(linear)}")
    peft_cfg = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, peft_cfg, autocast_adapter_dtype=True)
