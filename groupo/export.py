"""`groupo export RUN_DIR OUT`: a trained policy as a plain Hugging Face model folder.

    groupo export RUN_DIR OUT              # merged: LoRA folded into the weights, tokenizer beside them
    groupo export RUN_DIR OUT --adapter    # the PEFT adapter alone (adapter_config.json + safetensors)

The merged folder is what `AutoModelForCausalLM.from_pretrained(OUT)` and `vllm serve OUT` load
without groupo: config.json, model.safetensors (in the run's `model.dtype`, or --dtype),
generation_config.json, and the tokenizer with its chat template. The LoRA is folded in with
peft's `merge_and_unload`; a full fine-tuning run (`lora.rank=0`) is re-saved in the dtype asked.
A QLoRA run (`model.quantization`) is merged into its base's dequantized weights, the weights its
adapter was trained against, so the merged folder needs no bitsandbytes and computes what the run's
policy computes with float32 compute (tests/test_qlora.py).
The adapter folder is loaded with `PeftModel.from_pretrained(base, OUT)` or served with
`vllm serve BASE --enable-lora --lora-modules name=OUT`; its base model is the run's (a built-in
model's converted folder for a built-in name, which nothing but groupo would resolve).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from groupo.config import ConfigError, read_yaml

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
DTYPE_NAMES = ("float32", "bfloat16", "float16")


def policy_dir(run: str | Path) -> Path:
    """The folder save_policy wrote: RUN_DIR/final, or RUN_DIR itself if it is one."""
    from groupo.models.policy import META

    p = Path(run).expanduser()
    for candidate in (p, p / "final"):
        if (candidate / META).is_file():
            return candidate
    raise ConfigError(f"{p} holds no trained policy (no {META} there or in {p / 'final'}); "
                      "expected a groupo run directory whose training finished")


def run_dtype(run: str | Path) -> str:
    """The run's `model.dtype` from its config.yaml (float32 when there is none)."""
    p = Path(run).expanduser()
    for cfg_path in (p / "config.yaml", p.parent / "config.yaml"):
        if cfg_path.is_file():
            return str(read_yaml(cfg_path).get("model", {}).get("dtype", "float32"))
    return "float32"


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty folder; choose a new OUT")


def _readable(out: Path) -> None:
    """Files as readable as the umask allows (transformers writes its weights 0600), for servers
    running as another user."""
    umask = os.umask(0)
    os.umask(umask)
    for f in out.iterdir():
        if f.is_file():
            f.chmod(0o666 & ~umask)


def base_for_peft(base: str | None) -> str | None:
    """The base model as peft and vLLM can find it: a built-in name becomes its converted folder."""
    from groupo.models.builtin import BUILTIN_MODELS, fetch_builtin

    return str(fetch_builtin(base)) if base in BUILTIN_MODELS else base


def export_adapter(run: str | Path, out: str | Path) -> Path:
    """Copy the LoRA adapter and the tokenizer to `out`, the adapter naming the run's base model."""
    from transformers import AutoTokenizer

    from groupo.models.policy import META

    src, out = policy_dir(run), Path(out).expanduser()
    meta = json.loads((src / META).read_text())
    if meta.get("kind") != "lora":
        raise ConfigError(f"{src} is a full fine-tuning run (lora.rank=0): it has no adapter; "
                          "export it without --adapter")
    _check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        shutil.copy2(src / name, out / name)
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    if meta.get("base_model"):
        adapter_cfg["base_model_name_or_path"] = base_for_peft(meta["base_model"])
    (out / "adapter_config.json").write_text(json.dumps(adapter_cfg, indent=2) + "\n")
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    _readable(out)
    return out


def export_merged(run: str | Path, out: str | Path, dtype: str | None = None) -> Path:
    """Write the policy with its LoRA merged (peft merge_and_unload) as a Hugging Face folder."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from groupo.models.policy import load_trained

    src, out = policy_dir(run), Path(out).expanduser()
    _check_out(out)
    dtype = dtype or run_dtype(run)
    model, _ = load_trained(src, dtype=dtype, dequantize=True)  # a QLoRA run's base: its dequantized weights
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)  # safetensors
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    _readable(out)
    return out
