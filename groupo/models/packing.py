"""Padding-free log-prob passes (`train.packing`): a batch's sequences end to end in one row.

The padded layout (groupo.models.logprobs) gives every row the batch's longest prompt and longest
completion, so a batch of completions of 20 to 250 tokens runs every layer over 250 completion
columns per row. Here the real tokens of the rows are laid end to end in one row, each sequence a
segment whose positions restart at 0, and attention stays inside each segment
(groupo.models.packed_attention): no FLOPs go to padding.

    padded    [ p0  p1  p2  c0  c1  c2 pad pad]
              [pad  q0  q1  d0  d1  d2  d3  d4]
    flat      [ p0  p1  p2  c0  c1 | q0  q1  d0  d1  d2  d3]
    position     0   1   2   3   4 |  0   1   2   3   4   5

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

from collections.abc import Callable
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
    """`flat_layout` of a padded batch: its rows' lengths and, with `share_prompts`, which rows have
    the same prompt (nothing is shared where no prompt repeats). `lens`: `lengths(packed)`."""
    P, L = packed.prompt_len, packed.input_ids_BL.shape[1]
    prompt_B, completion_B = lens or lengths(packed)
    prompt_of = None
    if share_prompts and P >= 2:
        heads = packed.input_ids_BL[:, :P].tolist()
        firsts: dict[tuple[int, ...], int] = {}  # each distinct prompt -> its number
        prompt_of = [firsts.setdefault(tuple(heads[b][P - prompt_B[b]:]), len(firsts)) for b in range(len(heads))]
    return flat_layout(prompt_B, completion_B, prompt_of, P, L)


def flat_layout(prompt_B: list[int], completion_B: list[int], prompt_of: list[int] | None, P: int,
                L: int) -> tuple[FlatRow | None, FlatRow, torch.Tensor]:
    """(the prefix row or None, the main row, keep_N) of B padded rows of width L (prompts left-padded
    to P) with these prompt and completion lengths; keep_N are the main row's output columns that
    predict completion tokens, in row-major order of the (B, T) completion block.

    With `prompt_of` (each row's prompt, numbered) and some prompt of two or more tokens repeated: the
    prefix row holds each distinct prompt but its last token; the main row each completion after its
    prompt's last token. Otherwise (no prefix row) the main row holds each sequence whole but its last
    completion token. Rows without completion tokens are left out."""
    rows = [b for b, c in enumerate(completion_B) if c]
    first_rows: dict[int, int] = {}  # each prompt -> its first row with a completion
    for b in rows if prompt_of is not None else []:
        first_rows.setdefault(prompt_of[b], b)
    if not (len(first_rows) < len(rows) and any(prompt_B[b] > 1 for b in first_rows.values())):
        index, position, seg, keep, start = [], [], [], [], 0
        for b in rows:  # each sequence whole: prompt and completion but its last token
            n = prompt_B[b] + completion_B[b] - 1
            index += range(b * L + P - prompt_B[b], b * L + P - prompt_B[b] + n)
            position += range(n)
            keep += range(start + prompt_B[b] - 1, start + n)
            seg.append(n)
            start += n
        return None, _row(index, position, Segments(tuple(seg))), torch.tensor(keep, dtype=torch.long)
    piece = {u: k for k, u in enumerate(first_rows)}  # prompt -> its piece of the prefix row
    p_U = [prompt_B[b] - 1 for b in first_rows.values()]  # the prefix: each prompt but its last token
    p_index, p_position = [], []
    for b, n in zip(first_rows.values(), p_U, strict=True):
        p_index += range(b * L + P - 1 - n, b * L + P - 1)
        p_position += range(n)
    index, position, seg = [], [], []
    for b in rows:
        index += range(b * L + P - 1, b * L + P - 1 + completion_B[b])  # last prompt token, completion
        position += range(prompt_B[b] - 1, prompt_B[b] - 1 + completion_B[b])
        seg.append(completion_B[b])
    tail = _row(index, position, Segments(tuple(seg), tuple(p_U), tuple(piece[prompt_of[b]] for b in rows)))
    return _row(p_index, p_position, Segments(tuple(p_U))), tail, torch.arange(len(index))


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
    device = packed.input_ids_BL.device
    lens = lengths(packed)
    flat_ids = packed.input_ids_BL.reshape(-1)
    out_1NX = run_flat(model, *flat_rows(packed, share_prompts, lens), lambda row: flat_ids[row.index_N.to(device)])
    if out_1NX is None:  # the prompts' cache could not be shared
        out_1NX = run_flat(model, *flat_rows(packed, False, lens), lambda row: flat_ids[row.index_N.to(device)])
    where_N = completion_index(packed, lens[1]).to(device)
    targets_1N = packed.completion_ids_BT.reshape(-1)[where_N][None]
    logp_1N, entropy_1N = head_logprobs(out_1NX, head, targets_1N, temperature, with_entropy, chunk)
    # back to the (B, T) layout, zero at padding: what the loss and the masks are written for
    logp_BT = logp_1N.new_zeros(B * T).index_copy(0, where_N, logp_1N[0]).view(B, T)
    entropy_BT = (entropy_1N.new_zeros(B * T).index_copy(0, where_N, entropy_1N[0]).view(B, T)
                  if with_entropy else None)
    return logp_BT, entropy_BT


def run_flat(model: torch.nn.Module, prefix: FlatRow | None, main: FlatRow, keep_N: torch.Tensor,
             ids_of: Callable[[FlatRow], torch.Tensor]) -> torch.Tensor | None:
    """(1, N, X): the model's outputs (logits, or hidden states with the head taken out) at the main
    row's N columns that predict completion tokens, `ids_of(row)` giving a row's token ids (N,).
    None where there is a prefix row and its cache could not be shared (logprobs.shared_prefix_forward).
    The model must attend with a `PACKED` kernel (groupo.models.attention)."""
    layers = check_packable(model)

    def inputs(row: FlatRow) -> dict:
        ids = ids_of(row)
        return {"input_ids": ids[None], "position_ids": row.position_N.to(ids.device)[None],
                SEGMENTS_KW: row.segments}

    if prefix is not None:
        out = shared_prefix_forward(model, inputs(prefix), None, inputs(main))
    else:
        x = inputs(main)
        out = model(**x, logits_to_keep=keep_N.to(x["input_ids"].device), use_cache=False).logits
    for row in (prefix, main):
        # a layer whose attention bypasses transformers' attention functions would attend across the row's
        # sequences without an error: every layer must have attended segment by segment
        if row is not None and out is not None and row.segments.calls[0] != layers:
            raise RuntimeError(f"train.packing: {row.segments.calls[0]} of the model's {layers} layers attended "
                               "through groupo's packed kernel; this model's attention does not go through "
                               "transformers' attention functions, so its sequences cannot be kept apart")
    return out


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
