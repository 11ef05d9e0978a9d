"""Attention for the decoding loop: one new token per row attends to the KV cache.

transformers' "sdpa" attention calls `torch.nn.functional.scaled_dot_product_attention`, whose CPU
kernel for a single query is slow next to the rest of a decoding step: measured with
SmolLM2-135M's shapes (32 rows, 9 query heads on 3 KV heads, 200 cached positions, head size 64,
2 CPU cores with AVX-512 BF16): ~4 ms per call with bf16 inputs, 0.7 ms in float32, against
0.36 ms for the two batched matmuls and a softmax written out here; over a 30-layer model that
was ~1 s of a 7 s rollout. `decode_attention(model)` swaps this function in for the block (only
where the model uses "sdpa"); queries of more than one token (prompts) still go to SDPA.

Numerics: scores, softmax and the weighted sum run in float32 (autocast off), so the result is
at least as precise as the bf16 kernel's; it is not bit-identical to it (a different order of
summation), so sampled tokens can differ from the SDPA loop's in rare near-ties. The log-probs
the engine records are those of the distribution it sampled from either way (tests compare both
loops' log-probs token by token).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

NAME = "groupo_decode"
_UNSUPPORTED = ("softcap", "s_aux", "sinks", "position_bias", "sliding_window_pattern")


def decode_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, **kwargs):
    """transformers' attention-function signature: query (B, H, Q, D), key and value (B, KV, L, D),
    attention_mask None, boolean (True = attend) or additive, broadcastable to (B, 1, Q, L).
    Returns ((B, Q, H, D) output, None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    B, H, Q, D = query.shape
    if Q != 1 or dropout or any(kwargs.get(k) is not None for k in _UNSUPPORTED):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    KV = key.shape[1]
    out_dtype = torch.get_autocast_dtype(query.device.type) if torch.is_autocast_enabled(query.device.type) \
        else query.dtype
    with torch.autocast(query.device.type, enabled=False):
        # the H query heads grouped by the KV head they share: (B, KV, H/KV, D), no copy of the cache
        q = query.reshape(B, KV, H // KV, D).float()
        scores = torch.matmul(q, key.float().transpose(-1, -2)) * (D ** -0.5 if scaling is None else scaling)
        if attention_mask is not None:  # (B or 1, 1, 1, L): the same for every head
            mask = attention_mask.reshape(attention_mask.shape[0], 1, 1, -1)
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
        out = torch.matmul(torch.softmax(scores, dim=-1), value.float())  # (B, KV, H/KV, D)
    return out.reshape(B, 1, H, D).to(out_dtype), None


def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(NAME, decode_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the masks SDPA takes, built the same way


@contextlib.contextmanager
def decode_attention(model: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """`model` (and any wrapper sharing its config) attends with `decode_attention_forward` inside
    the block where it used "sdpa"; other implementations (eager, flash ...) are left alone."""
    config = getattr(model, "config", None)
    if not enabled or config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        yield
        return
    _register()
    config._attn_implementation = {"": NAME}  # this config only: sub-configs keep theirs
    try:
        yield
    finally:
        config._attn_implementation = {"": "sdpa"}
