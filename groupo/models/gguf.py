"""Load a .gguf checkpoint as a plain, trainable float model (transformers' GGUF support)."""

from __future__ import annotations

from pathlib import Path

import torch


def load_gguf(path: Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from a .gguf file, weights dequantised to `dtype`.

    transformers can keep GGUF weights packed when a matmul kernel is installed, but packed
    weights are neither trainable nor savable, so we always ask for a dense model and then drop
    the quantizer, leaving an ordinary model that `save_pretrained` writes as safetensors.
    Needs the `gguf` package.
    """
    try:
        import gguf  # noqa: F401  (transformers needs it; fail here with an install hint)
    except ImportError as e:
        if e.name not in (None, "gguf"):  # gguf is there but one of its own imports is not
            raise ImportError(f"loading {path.name}: the gguf package fails to import ({e}): "
                              f"pip install {e.name}, or pip install 'gguf>=0.11'") from e
        raise ImportError(f"loading {path.name} needs the gguf package: pip install gguf") from e
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=dtype,
        quantization_config=GgufConfig(gguf_file=path.name, dequantize=True))
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    return model, tokenizer
