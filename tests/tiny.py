"""A tiny randomly initialised Llama model and a matching offline tokenizer, for fast tests.

`make_tiny()` builds both in well under a second with no download: a 2-layer Llama (hidden 64,
4 heads, 2 KV heads, tied embeddings like SmolLM2) and a byte-level BPE tokenizer trained in code
on arithmetic-style text. Byte-level BPE covers every byte, so any text (digits, ASCII, even
unicode) round-trips through encode/decode exactly, which reward parsing relies on.

The chat template is ChatML, the same format as SmolLM2-Instruct:

    <|im_start|>user\\nWhat is 2+3?<|im_end|>\\n<|im_start|>assistant\\n

Special tokens: <|pad|> (id 0, a dedicated pad so tests can tell pad from eos), <|im_start|>
(id 1, bos) and <|im_end|> (id 2, eos).

Usage (pytest puts tests/ on sys.path): `from tiny import make_tiny`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from groupo.models.offline_tokenizer import BOS, CHAT_TEMPLATE, EOS, PAD, VOCAB_SIZE, make_tokenizer  # noqa: F401


def make_tiny(seed: int = 0) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """(model, tokenizer): a random float32 2-layer Llama in eval mode and its tokenizer.

    Seeded without touching the caller's global torch RNG.
    """
    tokenizer = make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.eval()
    return model, tokenizer


def save_tiny(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny model + tokenizer as a local Hugging Face folder; returns the folder."""
    out = Path(out_dir)
    model, tokenizer = make_tiny(seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def nonzero_lora(model: torch.nn.Module, std: float) -> None:
    """Draw every LoRA B matrix of `model` from N(0, std) with torch's global generator (peft starts
    them at zero), so the adapter changes the outputs and gradients reach every LoRA matrix."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, std)
