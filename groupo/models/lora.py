"""LoRA adapters (Hu et al. 2021, arXiv 2106.09685) on a causal LM, via peft."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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


@contextlib.contextmanager
def merged_for_inference(model: torch.nn.Module) -> Iterator[None]:
    """Run `model` (a peft LoRA model) as one merged weight per layer for the block, e.g. for
    generation, where every adapted layer would otherwise run two extra small matmuls per
    decoding step. Measured with SmolLM2-135M, rank 16 on q/k/v/o, 64 x 48 tokens on 2 CPU cores:
    44 -> 37 s in one comparison, medians 37.6 -> 33.0 s in three interleaved ones (this
    machine's noise is +-15%; benchmarks/shared_prompts.py).

    Not peft's merge_adapter/unmerge_adapter: those add and later subtract B @ A in place, and
    W + BA - BA is not W in floating point, so the frozen weights would drift a little with every
    call (and exact resume would break). Here each base layer gets a new tensor W + BA for the
    block and its own weight object back afterwards, bit for bit. Costs one copy of the adapted
    weights while it lasts. Anything that is not plain LoRA on nn.Linear (DoRA, embeddings,
    convolutions, quantised layers) runs unmerged, unchanged.
    """
    from peft import PeftModel
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)] if isinstance(model, PeftModel) else []
    mergeable = all(type(m) is LoraLinear and isinstance(m.get_base_layer(), torch.nn.Linear)
                    and not m.merged and not any(m.use_dora.get(a) for a in m.active_adapters)
                    for m in layers)
    if not layers or not mergeable or any(m.disable_adapters for m in layers):
        yield
        return
    saved = []
    try:
        with torch.no_grad():
            for m in layers:
                adapters = [a for a in m.active_adapters if a in m.lora_A]
                if not adapters:
                    continue
                base = m.get_base_layer()
                delta = sum(m.get_delta_weight(a) for a in adapters)
                saved.append((base, base.weight))
                base.weight = torch.nn.Parameter(base.weight + delta.to(base.weight.dtype), requires_grad=False)
        with model.disable_adapter():
            yield
    finally:
        for base, weight in saved:
            base.weight = weight
