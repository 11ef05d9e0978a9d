"""Find and load a base model + tokenizer: built-in name, local folder, .gguf file or hub id."""

from __future__ import annotations

import json
import logging
import os
import re
import struct
from pathlib import Path

import torch

from groupo.config import ConfigError
from groupo.models.builtin import BUILTIN_MODELS, fetch_builtin
from groupo.models.gguf import load_gguf

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# Files a causal LM needs; skips duplicate .bin / .onnx / .gguf weights many repos also carry.
_HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt", "*.tiktoken"]


class ModelNotFoundError(FileNotFoundError):
    """A model name that is no built-in, no usable local path and no reachable hub id."""


class ModelFilesError(ModelNotFoundError):
    """A model or adapter folder whose files are missing, truncated, or in a format not loaded."""


# What a folder's weights may be called: one file, an index naming shards, or older .bin files.
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model", "spiece.model")


def safetensors_problem(f: Path) -> str | None:
    """None when `f`'s header reads and its tensors end exactly at the end of the file, else what
    is wrong. Reads the header only, so a multi-GB file is checked in microseconds."""
    try:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(fh.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, struct.error, ValueError, KeyError, TypeError, IndexError) as e:
        return f"{f} is not a readable safetensors file ({type(e).__name__}: {e})"
    if size < 8 + n + end:
        return f"{f} is truncated: {size:,} bytes where its header needs {8 + n + end:,}"
    return None


def check_model_folder(path: Path) -> None:
    """One clear ModelFilesError for a Hugging Face folder without weights, or with a truncated or
    missing safetensors file, before transformers fails on it with a traceback."""
    fix = "copy the complete model folder again (or point model.name at one)"
    if not any((path / w).is_file() for w in _WEIGHTS):
        raise ModelFilesError(f"{path} has config.json but no weights ({' or '.join(_WEIGHTS[:2])}): {fix}")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, AttributeError) as e:
            raise ModelFilesError(f"{index} is unreadable ({type(e).__name__}): {fix}") from None
    else:
        shards = ["model.safetensors"] if (path / "model.safetensors").is_file() else []
    for name in shards:
        if not (path / name).is_file():
            raise ModelFilesError(f"{path / name} is missing ({index.name} names it): {fix}")
        if problem := safetensors_problem(path / name):
            raise ModelFilesError(f"{problem}: {fix}")


def _load_tokenizer(path: Path):
    """AutoTokenizer for a local folder; its failures (no tokenizer files, damaged ones) as one line."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # OSError, ValueError, TypeError, JSON errors ... all mean the same to the user
        if not any((path / t).is_file() for t in _TOKENIZER):
            raise ModelFilesError(f"{path} has no tokenizer files ({', '.join(_TOKENIZER[:2])} ...): copy them "
                                  "from the model's source into the folder") from None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFilesError(f"{path}: its tokenizer does not load ({type(e).__name__}: {reason[:200]}): copy the "
                              "tokenizer files from the model's source again") from None


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
        check_model_folder(path)
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
               device: str | torch.device = "cpu", quantization: str = "none", compute: str = "none"):
    """(model, tokenizer) for `name` (see resolve_model), model in eval mode on `device`.

    quantization: "none", or nf4 / fp4 / int8 to load the linear layers through bitsandbytes
    (groupo.models.quantization), 4-bit layers computing in `compute` ("bf16", "fp16"; "none":
    float32). A .gguf file is dequantized by transformers and cannot be loaded quantized again.
    """
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    path = resolve_model(name, revision)
    if path.suffix == ".gguf":
        if quantization != "none":
            raise ConfigError(f"model.quantization = {quantization!r} needs a Hugging Face model folder, not the GGUF "
                              f"file {path}: save it as one first (groupo.models.load_model, then save_pretrained)")
        model, tokenizer = load_gguf(path, DTYPES[dtype])
        model.to(device)
    else:
        tokenizer = _load_tokenizer(path)
        # SDPA (fused attention kernels on GPUs) is transformers' default; named so it cannot change.
        kw: dict = {"dtype": DTYPES[dtype], "attn_implementation": "sdpa"}
        if quantization != "none":
            from groupo.models.precision import AUTOCAST_DTYPES
            from groupo.models.quantization import quantization_config

            # bitsandbytes quantizes as the weights load onto their device; a quantized model is not moved after
            amp = AUTOCAST_DTYPES[compute] or torch.float32
            kw |= {"quantization_config": quantization_config(quantization, amp),
                   "device_map": {"": str(device)}}
        model = AutoModelForCausalLM.from_pretrained(path, **kw)
        if quantization == "none":
            model.to(device)
        else:
            from groupo.models.quantization import keep_training_kernels, own_unquantized_weights

            keep_training_kernels(model)
            own_unquantized_weights(model)
    model.eval()
    prepare_tokenizer(tokenizer, model)
    return model, tokenizer
