"""Tiny randomly initialised models and a matching offline tokenizer, for fast tests.

`make_tiny()` builds both in well under a second with no download: a 2-layer Llama (hidden 64,
4 heads, 2 KV heads, tied embeddings like SmolLM2) and a byte-level BPE tokenizer trained in code
on arithmetic-style text. `make_tiny(arch=...)` builds the same size from another architecture's
own transformers config class (ARCHS: Qwen2, Qwen3, Gemma 3, Mistral, Phi-3, Qwen3-MoE), each
with the traits of its real checkpoints that groupo must handle (see `_arch_config`).

Byte-level BPE covers every byte, so any text (digits, ASCII, even unicode) round-trips through
encode/decode exactly, which reward parsing relies on.

The chat template is ChatML, the same format as SmolLM2-Instruct:

    <|im_start|>user\\nWhat is 2+3?<|im_end|>\\n<|im_start|>assistant\\n

Special tokens: <|pad|> (id 0, a dedicated pad so tests can tell pad from eos), <|im_start|>
(id 1, bos) and <|im_end|> (id 2, eos).

Usage (pytest puts tests/ on sys.path): `from tiny import make_tiny`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from groupo.models.offline_tokenizer import BOS, CHAT_TEMPLATE, EOS, PAD, VOCAB_SIZE, make_tokenizer  # noqa: F401


def _common(tokenizer, hidden: int, heads: int, kv_heads: int) -> dict:
    return dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=heads,
                num_key_value_heads=kv_heads, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)


def _arch_config(arch: str, tokenizer, hidden: int = 64, heads: int = 4, kv_heads: int = 2):
    """The transformers config of a tiny `arch` model. What each keeps of its real checkpoints:

    llama      tied embeddings (SmolLM2, Llama 3.2 1B/3B)
    qwen2      biases on q/k/v, tied embeddings (Qwen2.5 0.5B-3B)
    qwen3      q/k norms, an explicit head_dim (Qwen3)
    gemma3     a sliding-window layer beside a full one (window of 8 tokens, shorter than the test
               prompts, so the window really drops keys), a vocabulary ten times the tokenizer's
               (ids with no token, as in Gemma 3 and Qwen2.5 checkpoints), scaled embeddings
    mistral    untied head, no sliding window (Mistral 7B v0.3)
    phi3       fused qkv_proj and gate_up_proj, the 2047-token sliding window of Phi-3-mini's config
    qwen3_moe  4 experts, 2 per token, fused expert weights (transformers 5), no dense MLP
    """
    from transformers import (
        Gemma3TextConfig,
        LlamaConfig,
        MistralConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
        Qwen3MoeConfig,
    )

    c = _common(tokenizer, hidden, heads, kv_heads)
    head_dim = hidden // heads
    vocab = len(tokenizer)
    if arch == "llama":
        return LlamaConfig(vocab_size=vocab, tie_word_embeddings=True, **c)
    if arch == "qwen2":
        return Qwen2Config(vocab_size=vocab, tie_word_embeddings=True, **c)
    if arch == "qwen3":
        return Qwen3Config(vocab_size=vocab, head_dim=head_dim, tie_word_embeddings=True, **c)
    if arch == "gemma3":
        return Gemma3TextConfig(vocab_size=10 * vocab, head_dim=head_dim, query_pre_attn_scalar=head_dim,
                                sliding_window=8, layer_types=["sliding_attention", "full_attention"], **c)
    if arch == "mistral":
        return MistralConfig(vocab_size=vocab, head_dim=head_dim, sliding_window=None, **c)
    if arch == "phi3":
        return Phi3Config(vocab_size=vocab, sliding_window=2047, **c)
    if arch == "qwen3_moe":
        return Qwen3MoeConfig(vocab_size=vocab, head_dim=head_dim, num_experts=4, num_experts_per_tok=2,
                              moe_intermediate_size=hidden // 2, **c)
    raise ValueError(f"unknown tiny architecture {arch!r}; valid: {', '.join(ARCHS)}")


ARCHS = ("llama", "qwen2", "qwen3", "gemma3", "mistral", "phi3", "qwen3_moe")


def make_tiny(seed: int = 0, arch: str = "llama", **sizes):
    """(model, tokenizer): a random float32 2-layer model of `arch` (ARCHS) in eval mode and its
    tokenizer. `sizes`: hidden, heads, kv_heads (vLLM's CPU attention needs a head size of 64:
    hidden=128, heads=2, kv_heads=1). Seeded without touching the caller's global torch RNG.
    """
    from transformers import AutoModelForCausalLM

    tokenizer = make_tokenizer()
    config = _arch_config(arch, tokenizer, **sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.eval()
    return model, tokenizer


def save_tiny(out_dir: str | Path, seed: int = 0, arch: str = "llama", **sizes) -> Path:
    """Write a tiny model + tokenizer as a local Hugging Face folder; returns the folder."""
    out = Path(out_dir)
    model, tokenizer = make_tiny(seed, arch, **sizes)
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
