"""Padding-free log-prob passes (`train.packing`): a batch's sequences end to end in one row.

The padded layout (groupo.models.logprobs) gives every row the batch's longest prompt and longest
completion, so a batch of completions of 20 to 250 tokens runs every layer over 250 completion
columns per row. Here the real tokens of the rows are laid end to end in one row, each sequence a
segment whose positions restart at 0, and attention stays inside each segment
(groupo.models.packed_attention): no FLOPs go to padding.

    padded  [pad p0 p1 p2 c0 c1 c2 pad]        flat  [p0 p1 p2 c0 c1 | q0 q1 d0 d1 d2 d3]
            [ q0 q1 d0 d1 d2 d3 d4 pad]        positions 0 1 2 3 4 | 0 1 2 3 4 5

(a sequence's last completion token predicts nothing, so it is not in the flat row.)

Shared prompts stay shared (the rows of a GRPO group have one prompt): the distinct prompts but
their last tokens run first as one flat row that fills a KV cache, then the *tail* row - each
completion after its prompt's last token, end to end - attends, segment by segment, to its prompt's
span of that cache and to itself. As in the padded pass (logprobs.shared_prefix_forward), gradients
of all the rows of a group flow into the one prompt pass, and under activation checkpointing the
tail reads the prompts from a cache it never writes.

The outputs come back in the padded (B, T) layout, so the loss, masks and micro-batches are those
of the padded pass; the log-probs equal its own up to float rounding (tests/test_packing.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from groupo.config import ConfigError
from groupo.models.logprobs import Packed, head_logprobs, shared_prefix_forward
from groupo.models.packed_attention import SEGMENTS_KW, Segments


@dataclass(frozen=True)
class FlatRow:
    """One flat pass's inputs as indices into the padded batch (host-side, then moved)."""

    index_N: torch.Tensor     # (N,) long: each token's place in input_ids_BL.view(-1)
    position_N: torch.Tensor  # (N,) long: its position in its own sequence
    segments: Segments


def lengths(packed: Packed) -> tuple[list[int], list[int]]:
    """(prompt tokens, completion tokens) of each row: one host sync."""
    P = packed.prompt_len
    both = torch.stack([packed.attention_mask_BL[:, :P].sum(-1), packed.completion_mask_BT.sum(-1).long()])
    prompt_B, completion_B = both.tolist()
    return prompt_B, completion_B


def flat_rows(packed: Packed, share_prompts: bool,
              lens: tuple[list[int], list[int]] | None = None) -> tuple[FlatRow | None, FlatRow, torch.Tensor]:
    """(the prefix row or None, the main row, keep_N): keep_N are the main row's output columns that
    predict completion tokens, in row-major order of the (B, T) completion block. `lens`: `lengths(packed)`.

    With `share_prompts` and some prompt repeated: the prefix row holds each distinct prompt but its last
    token; the main row each completion after its prompt's last token. Otherwise (no prefix row) the main
    row holds each sequence whole but its last completion token. Rows without completion tokens are left out."""
    P, L = packed.prompt_len, packed.input_ids_BL.shape[1]
    prompt_B, completion_B = lens or lengths(packed)
    rows = [b for b, c in enumerate(completion_B) if c]
    firsts: dict[tuple[int, ...], int] = {}  # each distinct prompt -> its number
    prompt_of, first_rows = [], []           # each row's prompt; each prompt's first row
    if share_prompts and P >= 2:
        heads = packed.input_ids_BL[:, :P].tolist()
        for b in rows:
            key = tuple(heads[b][P - prompt_B[b]:])
            if key not in firsts:
                firsts[key] = len(firsts)
                first_rows.append(b)
            prompt_of.append(firsts[key])
    shared = 0 < len(firsts) < len(rows) and any(len(k) > 1 for k in firsts)
    if not shared:  # each sequence whole: prompt and completion but its last token
        index, position, seg, keep, start = [], [], [], [], 0
        for b in rows:
            n = prompt_B[b] + completion_B[b] - 1
            index += range(b * L + P - prompt_B[b], b * L + P - prompt_B[b] + n)
            position += range(n)
            keep += range(start + prompt_B[b] - 1, start + n)
            seg.append(n)
            start += n
        return None, _row(index, position, Segments(tuple(seg))), torch.tensor(keep)
    p_U = [prompt_B[b] - 1 for b in first_rows]  # the prefix: each prompt but its last token
    p_index, p_position = [], []
    for b, n in zip(first_rows, p_U, strict=True):
        p_index += range(b * L + P - 1 - n, b * L + P - 1)
        p_position += range(n)
    prefix = Segments(tuple(p_U))
    index, position, seg = [], [], []
    for b in rows:
        index += range(b * L + P - 1, b * L + P - 1 + completion_B[b])  # last prompt token, completion
        position += range(prompt_B[b] - 1, prompt_B[b] - 1 + completion_B[b])
        seg.append(completion_B[b])
    tail = _row(index, position, Segments(tuple(seg), tuple(p_U), tuple(prompt_of)))
    return _row(p_index, p_position, prefix), tail, torch.arange(len(index))


def _row(index: list[int], position: list[int], segments: Segments) -> FlatRow:
    return FlatRow(torch.tensor(index, dtype=torch.long), torch.tensor(position, dtype=torch.long), segments)


def completion_index(packed: Packed, completion_B: list[int] | None = None) -> torch.Tensor:
    """(N,) long: the place in completion_ids_BT.view(-1) of each completion token, row by row (the
    order of the flat rows' outputs)."""
    T = packed.completion_ids_BT.shape[1]
    completion_B = lengths(packed)[1] if completion_B is None else completion_B
    return torch.tensor([b * T + t for b, c in enumerate(completion_B) for t in range(c)], dtype=torch.long)


def packed_logprobs(model: torch.nn.Module, packed: Packed, head: torch.nn.Linear | None, temperature: float,
                    with_entropy: bool, share_prompts: bool, chunk: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logprobs.token_logprobs's result, (logp_BT, entropy_BT or None), from the flat passes; `head`:
    the output head taken out of the model (None: the model returns logits)."""
    B, T = packed.completion_ids_BT.shape
    out_1NX, where_N = packed_forward(model, packed, share_prompts)
    targets_1N = packed.completion_ids_BT.reshape(-1)[where_N][None]
    logp_1N, entropy_1N = head_logprobs(out_1NX, head, targets_1N, temperature, with_entropy, chunk)
    # back to the (B, T) layout, zero at padding: what the loss and the masks are written for
    logp_BT = logp_1N.new_zeros(B * T).index_copy(0, where_N, logp_1N[0]).view(B, T)
    entropy_BT = (entropy_1N.new_zeros(B * T).index_copy(0, where_N, entropy_1N[0]).view(B, T)
                  if with_entropy else None)
    return logp_BT, entropy_BT


def packed_forward(model: torch.nn.Module, packed: Packed, share_prompts: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(out_1NX, where_N): the model's outputs (logits, or hidden states with the head taken out)
    that predict the batch's N completion tokens, and each one's place in the (B, T) completion
    block flattened. The model must attend with a `PACKED` kernel (groupo.models.attention)."""
    layers = check_packable(model)
    device = packed.input_ids_BL.device
    flat_ids = packed.input_ids_BL.reshape(-1)
    lens = lengths(packed)
    prefix, main, keep = flat_rows(packed, share_prompts, lens)
    where_N = completion_index(packed, lens[1]).to(device)

    def inputs(row: FlatRow) -> dict:
        return {"input_ids": flat_ids[row.index_N.to(device)][None], "position_ids": row.position_N.to(device)[None],
                SEGMENTS_KW: row.segments}

    out = None
    if prefix is not None:
        out = shared_prefix_forward(model, inputs(prefix), None, inputs(main))
        if out is None:  # the cache could not be shared
            prefix, main, keep = flat_rows(packed, False, lens)
    if out is None:
        out = model(**inputs(main), logits_to_keep=keep.to(device), use_cache=False).logits
    for row in (prefix, main):
        # a layer whose attention bypasses transformers' attention functions would attend across the row's
        # sequences without an error: every layer must have attended segment by segment
        if row is not None and row.segments.calls[0] != layers:
            raise RuntimeError(f"train.packing: {row.segments.calls[0]} of the model's {layers} layers attended "
                               "through groupo's packed kernel; this model's attention does not go through "
                               "transformers' attention functions, so its sequences cannot be kept apart")
    return out, where_N


def check_packable(model: torch.nn.Module) -> int:
    """The model's number of layers, all of them attention (full or sliding window); else a one-line
    error: a recurrent or linear-attention layer would carry state from one sequence of a flat row
    into the next."""
    inner = getattr(model, "module", model)
    config = inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else inner.config
    other = sorted(set(getattr(config, "layer_types", None) or []) - {"full_attention", "sliding_attention"})
    if other:
        raise ConfigError(f"train.packing needs attention in every layer; {config.model_type} also has "
                          f"{', '.join(other)} layers: set train.packing=false")
    return config.num_hidden_layers
