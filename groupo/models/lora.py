"""LoRA adapters (Hu et al. 2021, arXiv 2106.09685) on a causal LM, via peft."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch

from groupo.config import ConfigError, LoraConfig


def apply_lora(model: torch.nn.Module, cfg: LoraConfig):
    """Wrap `model` in a peft PeftModel with adapters on what `cfg.target_modules` names
    (groupo.models.targets), of the kind `cfg.variant` says; or, with `cfg.init_from`, the adapter
    in that folder (see load_adapter).

    Only adapter weights are trainable. They are float32 whatever the base dtype (peft's
    `autocast_adapter_dtype`), so small updates are not lost to bf16 rounding.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    from groupo.models.targets import resolve_targets

    if cfg.rank <= 0:
        raise ValueError(f"LoRA needs rank > 0, got {cfg.rank} (rank 0 means full fine-tuning)")
    if cfg.init_from:
        return load_adapter(model, cfg.init_from)
    targets = resolve_targets(model, cfg.target_modules)
    modules = targets.modules if isinstance(targets.modules, str) else list(targets.modules)
    peft_cfg = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=modules,
                              target_parameters=list(targets.parameters) or None,
                              use_rslora=cfg.variant == "rslora", use_dora=cfg.variant == "dora",
                              task_type="CAUSAL_LM")
    return get_peft_model(model, peft_cfg, autocast_adapter_dtype=True)


ADAPTER_CONFIG = "adapter_config.json"


def adapter_settings(path: str | Path) -> dict:
    """The settings of the PEFT LoRA adapter in folder `path`, as groupo's lora keys: rank, alpha,
    dropout, target_modules, variant. ConfigError for a folder that holds no LoRA adapter groupo can
    train."""
    f = Path(path).expanduser() / ADAPTER_CONFIG
    if not f.is_file():
        raise ConfigError(f"lora.init_from = {str(path)!r}: no {ADAPTER_CONFIG} there (expected a PEFT adapter "
                          "folder, e.g. a groupo run's final/)")
    try:
        a = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"lora.init_from: {f} is unreadable ({type(e).__name__})") from None
    if a.get("peft_type", "LORA") != "LORA":
        raise ConfigError(f"lora.init_from: {f} is a {a.get('peft_type')} adapter; groupo trains LoRA adapters")
    targets = a.get("target_modules") or []
    if isinstance(targets, str):  # PEFT stores a regular expression as one string
        raise ConfigError(f"lora.init_from: {f} selects its modules by the pattern {targets!r}; groupo needs a list "
                          "of module names")
    try:
        return {"rank": int(a["r"]), "alpha": float(a["lora_alpha"]), "dropout": float(a.get("lora_dropout") or 0.0),
                "target_modules": sorted(targets) + sorted(a.get("target_parameters") or []),
                "variant": "dora" if a.get("use_dora") else "rslora" if a.get("use_rslora") else "lora"}
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"lora.init_from: {f} lacks a LoRA setting or has one of the wrong type "
                          f"({type(e).__name__}: {e})") from None


def load_adapter(model: torch.nn.Module, path: str | Path):
    """`model` as a PeftModel with the adapter in folder `path`, trainable (float32 adapter weights);
    a folder whose adapter does not fit the model is one ConfigError."""
    from peft import PeftModel

    from groupo.models.load import ModelFilesError, safetensors_problem

    folder = Path(path).expanduser()
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelFilesError(f"lora.init_from: {folder} has no adapter_model.safetensors (weights stored as .bin, "
                              "a pickle, are not loaded: convert them with save_pretrained(safe_serialization=True))")
    if problem := safetensors_problem(weights):
        raise ModelFilesError(f"lora.init_from: {problem}")
    try:
        return PeftModel.from_pretrained(model, folder, is_trainable=True, autocast_adapter_dtype=True)
    except (ValueError, RuntimeError, KeyError) as e:  # shapes or module names of another model
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ConfigError(f"lora.init_from: the adapter in {folder} does not fit {type(model).__name__} "
                          f"({type(e).__name__}: {reason}); was it trained on model.name's base?") from None


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
