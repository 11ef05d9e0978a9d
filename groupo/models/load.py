"""Find and load a base model + tokenizer: built-in name, local folder, .gguf file or hub id."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

from groupo.models.builtin import BUILTIN_MODELS, fetch_builtin
from groupo.models.gguf import load_gguf

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# Files a causal LM needs; skips duplicate .bin / .onnx / .gguf weights many repos also carry.
_HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt", "*.tiktoken"]


class ModelNotFoundError(FileNotFoundError):
    """A model name that is no built-in, no usable local path and no reachable hub id."""


def resolve_model(name: str, revision: str | None = None) -> Path:
    """A local path for `name`: a Hugging Face model folder (has config.json) or a .gguf file.

    `name` is tried as, in order: a built-in model (fetched and converted on first use, see
    groupo.models.builtin), an existing local path, and a hub id. Hub downloads use the local
    Hugging Face cache first and fail fast (no hang) when offline or unreachable.
    """
    if name in BUILTIN_MODELS:
        return fetch_builtin(name)
    path = Path(name).expanduser()
    if path.exists():
        return _check_local(path)
    if _looks_like_path(name) or not _HUB_ID.match(name):
        raise ModelNotFoundError(f"model path not found: {path} (built-in models: {', '.join(BUILTIN_MODELS)})")
    return _from_hub(name, revision)


def _looks_like_path(name: str) -> bool:
    return (name.startswith(("/", ".", "~")) or name.endswith(".gguf") or "\\" in name
            or name.count("/") > 1)


def _check_local(path: Path) -> Path:
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0]
        raise ModelNotFoundError(
            f"{path} is not a Hugging Face model folder: it has no config.json"
            + (f" and {len(ggufs)} .gguf files (name one)" if ggufs else ""))
    raise ModelNotFoundError(f"{path} is neither a model folder (with config.json) nor a .gguf file")


def _from_hub(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:  # already in the local Hugging Face cache: no network needed
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=_HUB_FILES,
                                      local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        pass
    builtins = ", ".join(BUILTIN_MODELS)
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ModelNotFoundError(
            f"{repo_id!r} is not a local path or a built-in model ({builtins}), and HF_HUB_OFFLINE is "
            "set, so it cannot be downloaded from the Hugging Face hub")
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=_HUB_FILES,
                                      etag_timeout=10))
    except Exception as e:  # connection, auth, missing repo: all end the same way for the user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelNotFoundError(
            f"could not download {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {reason}). "
            f"It is not a local path either. Offline? Use a built-in model ({builtins}), a local "
            "model folder or a .gguf file") from None


def prepare_tokenizer(tokenizer, model: torch.nn.Module | None = None):
    """Give the tokenizer a pad token (eos if it has none) and left padding; sync the model's
    generation config. Our batches left-pad prompts (see groupo.models.logprobs)."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError("tokenizer has neither a pad nor an eos token; cannot batch")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if model is not None and getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def load_model(name: str, revision: str | None = None, dtype: str = "float32",
               device: str | torch.device = "cpu"):
    """(model, tokenizer) for `name` (see resolve_model), model in eval mode on `device`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    path = resolve_model(name, revision)
    if path.suffix == ".gguf":
        model, tokenizer = load_gguf(path, DTYPES[dtype])
        model.to(device)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path)
        # SDPA (fused attention kernels on GPUs) is transformers' default; named so it cannot change.
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], attn_implementation="sdpa").to(device)
    model.eval()
    prepare_tokenizer(tokenizer, model)
    return model, tokenizer
