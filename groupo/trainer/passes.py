"""The forward passes of prepare and update, over a packed batch: which rows go together
(`micro_batches`), each micro-batch without its all-padding columns (`rows`), and the no-grad
log-probs of the old and reference policies (`batched_logprobs`)."""

from __future__ import annotations

import dataclasses

import torch

from groupo.models.attention import attention_kernel
from groupo.models.logprobs import Packed, token_logprobs, trim
from groupo.models.precision import autocast
from groupo.trainer.settings import UpdateSettings


def rows(packed: Packed, sl: slice) -> Packed:
    """The rows `sl` of a Packed batch, without the columns that are padding in all of them
    (so a micro-batch of short sequences is not charged for the batch's longest one)."""
    return trim(dataclasses.replace(packed, **{
        f.name: getattr(packed, f.name)[sl] for f in dataclasses.fields(packed)
        if isinstance(getattr(packed, f.name), torch.Tensor)}))


def micro_batches(packed: Packed, size: int, tokens: int = 0, packing: bool = False) -> list[slice]:
    """The rows of each forward/backward pass, consecutive (a group's rows stay together where they
    fit, so its prompt is encoded once). `tokens` 0: `size` rows each. Otherwise as many rows as fit
    in `tokens` positions, a micro-batch of r rows costing r x (its longest prompt + its longest
    completion), as `rows` trims it, or with `packing` the sum of its rows' own prompt + completion
    tokens (an upper bound of the flat pass, which encodes a shared prompt once); at least one row
    each. Short completions then share a pass (fewer, larger matmuls) and long ones are split
    (bounded activations)."""
    B = packed.completion_ids_BT.shape[0]
    if not tokens:
        return [slice(i, i + size) for i in range(0, B, size)]
    P = packed.prompt_len
    prompt_B = packed.attention_mask_BL[:, :P].sum(-1).tolist()
    completion_B = packed.completion_mask_BT.sum(-1).long().tolist()
    out, start, p, c, n = [], 0, 0, 0, 0
    for b in range(B):
        p2, c2, n2 = max(p, prompt_B[b]), max(c, completion_B[b]), n + prompt_B[b] + completion_B[b]
        if b > start and (n2 if packing else (b - start + 1) * (p2 + c2)) > tokens:
            out.append(slice(start, b))
            start, p2, c2, n2 = b, prompt_B[b], completion_B[b], prompt_B[b] + completion_B[b]
        p, c, n = p2, c2, n2
    return [*out, slice(start, B)] if B else out


@torch.no_grad()
def batched_logprobs(model, packed: Packed, s: UpdateSettings) -> torch.Tensor:
    """(B, T) log-probs under `model` without gradients, in micro-batches (old / reference policy)."""
    out = []
    T = packed.completion_mask_BT.shape[1]
    for sl in micro_batches(packed, s.micro_batch_size, s.micro_batch_tokens, s.packing):
        with autocast(s.amp, s.device_type), attention_kernel(model, s.attention, packing=s.packing):
            logp, _ = token_logprobs(model, rows(packed, sl), s.temperature, share_prompts=s.share_prompts,
                                     packing=s.packing)
        out.append(torch.nn.functional.pad(logp.float(), (0, T - logp.shape[1])))  # back to width T
    return torch.cat(out) if out else packed.completion_mask_BT.new_zeros((0, T))
