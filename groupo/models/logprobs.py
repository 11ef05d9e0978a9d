"""Batch layout for (prompt, completion) pairs and the per-token log-prob forward pass.

Layout (B sequences, P = longest prompt, T = longest completion, L = P + T):

    input_ids_BL   [pad pad p0 p1 p2 | c0 c1 c2 pad]     prompts left-padded, completions right-padded
    completion_BT                    [ c0 c1 c2 pad]     completion block starts at column P for all

Left-padding the prompts makes every completion start at the same column P, so the logits that
predict completion tokens are one contiguous slice (columns P-1 .. L-2) for the whole batch.
Position ids come from the attention mask, so left padding does not shift a sequence's positions
(its first real token has position 0, as in the unpadded sequence).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer

from groupo.models.attention import packed_kernel
from groupo.models.token_logp import token_logp


@dataclass
class Packed:
    input_ids_BL: torch.Tensor        # (B, L) long
    attention_mask_BL: torch.Tensor   # (B, L) long, 1 = real token
    position_ids_BL: torch.Tensor     # (B, L) long
    completion_mask_BT: torch.Tensor  # (B, T) float, 1 = completion token, 0 = right padding
    completion_ids_BT: torch.Tensor   # (B, T) long, right-padded with pad_id

    @property
    def prompt_len(self) -> int:
        """P: the column where every completion starts."""
        return self.input_ids_BL.shape[1] - self.completion_ids_BT.shape[1]

    def to(self, device: torch.device | str) -> Packed:
        return Packed(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def pack(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int) -> Packed:
    """Lay out B (prompt, completion) pairs as described in the module docstring."""
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every prompt needs at least one token (the first completion token is "
                         "predicted from the last prompt token)")
    B = len(prompt_ids)
    P = max(len(p) for p in prompt_ids)
    T = max((len(c) for c in completion_ids), default=0)
    input_ids_BL = torch.full((B, P + T), pad_id, dtype=torch.long)
    attention_mask_BL = torch.zeros((B, P + T), dtype=torch.long)
    completion_mask_BT = torch.zeros((B, T), dtype=torch.float32)
    for b, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        input_ids_BL[b, P - len(p):P] = torch.tensor(p, dtype=torch.long)
        input_ids_BL[b, P:P + len(c)] = torch.tensor(c, dtype=torch.long)
        attention_mask_BL[b, P - len(p):P + len(c)] = 1
        completion_mask_BT[b, :len(c)] = 1
    position_ids_BL = (attention_mask_BL.cumsum(-1) - 1).clamp(min=0)
    return Packed(input_ids_BL, attention_mask_BL, position_ids_BL, completion_mask_BT,
                  input_ids_BL[:, P:].clone())


def trim(packed: Packed) -> Packed:
    """Drop the columns that are padding in every row: left of the longest prompt and right of
    the longest completion. A micro-batch sliced from a big batch then costs only its own
    lengths; log-probs of real tokens are unchanged (positions come from `position_ids_BL`)."""
    P, T = packed.prompt_len, packed.completion_ids_BT.shape[1]
    t = int(packed.completion_mask_BT.sum(-1).max().item()) if T else 0
    start = P - int(packed.attention_mask_BL[:, :P].sum(-1).max().item())
    cols = slice(start, P + t)
    return Packed(packed.input_ids_BL[:, cols], packed.attention_mask_BL[:, cols],
                  packed.position_ids_BL[:, cols], packed.completion_mask_BT[:, :t],
                  packed.completion_ids_BT[:, :t])


LOGIT_CHUNK = 1024  # (row, position) pairs whose logits exist at once in token_logprobs


def token_logprobs(model: torch.nn.Module, packed: Packed, temperature: float = 1.0,
                   with_entropy: bool = False, share_prompts: bool = True,
                   chunk: int = LOGIT_CHUNK, packing: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of each completion token under softmax(logits / temperature).

    Returns (logp_BT, entropy_BT or None), float32, zero at padded positions. logp_BT is
    differentiable; entropy_BT (of the temperature-scaled next-token distribution, in nats) is
    differentiable too (the entropy bonus; a metric where the loss does not use it).

    Memory: the model computes outputs only at the T completion-predicting columns
    (`logits_to_keep`), never the prompt's. The (B, T, V) logits are never whole: the model's
    output head is taken out for the pass, which then returns the final hidden states (B, T, H),
    and the head runs on `chunk` (row, position) pairs at a time, each chunk under activation
    checkpointing, so autograd keeps the hidden states and one chunk's logits are recomputed in
    the backward pass (one more head matmul). A batch of at most `chunk` pairs is one chunk, run
    without checkpointing: its logits are kept, no more than one recomputed chunk's at once. Per
    token it takes log p(token) = z[token] - logsumexp(z), z = logits / temperature, with the
    backward pass written out (groupo/models/token_logp.py). A GRPO micro-batch of 16 x
    400 completion tokens over a 49k vocabulary would otherwise hold ~1.3 GB of float32 logits for
    the backward pass and about three times that at its peak. `chunk=0`, a head that is not a plain
    Linear (e.g. LoRA on lm_head) and FSDP-sharded models take the whole (B, T, V) at once.

    share_prompts: rows with the same prompt (a GRPO group) encode it once (see
    `_shared_prompt_logits`); the result equals the unshared pass up to float rounding.

    packing: no padding in the pass: the rows' real tokens end to end in one row
    (groupo.models.packing), shared prompts still encoded once; the same result up to float rounding.
    """
    ids_BT, mask_BT = packed.completion_ids_BT, packed.completion_mask_BT
    B, T = ids_BT.shape
    if T == 0:
        empty = torch.zeros((B, 0), dtype=torch.float32, device=ids_BT.device)
        return empty, (empty.clone() if with_entropy else None)
    head = _chunkable_head(model) if chunk else None
    if packing:
        from groupo.models.packing import packed_logprobs  # it imports this module

        with _without_head(model, head), packed_kernel(model):
            return packed_logprobs(model, packed, head, temperature, with_entropy, share_prompts, chunk)
    with _without_head(model, head):
        out_BTX = _shared_prompt_logits(model, packed) if share_prompts else None
        if out_BTX is None:
            P = packed.prompt_len
            # Column P-1+t holds the outputs that predict completion token t.
            keep = torch.arange(P - 1, P + T - 1, device=ids_BT.device)
            out_BTX = model(input_ids=packed.input_ids_BL, attention_mask=packed.attention_mask_BL,
                            position_ids=packed.position_ids_BL, logits_to_keep=keep, use_cache=False).logits
    logp_BT, entropy_BT = head_logprobs(out_BTX, head, ids_BT, temperature, with_entropy, chunk)
    return logp_BT * mask_BT, (entropy_BT * mask_BT if with_entropy else None)


def head_logprobs(out_BTX: torch.Tensor, head: torch.nn.Linear | None, ids_BT: torch.Tensor, temperature: float,
                  with_entropy: bool, chunk: int = LOGIT_CHUNK) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs of `ids_BT`, entropy or None) from the model's outputs: logits when `head` is
    None, else final hidden states that `head` turns into logits `chunk` (row, position) pairs at a
    time, each chunk under activation checkpointing where there are several (see token_logprobs)."""
    if head is None:
        return _head_logprobs(out_BTX, None, ids_BT, temperature, with_entropy)
    from torch.utils.checkpoint import checkpoint

    B, T = ids_BT.shape
    step = max(1, chunk // B)
    if step >= T:
        # One chunk: checkpointing would recompute its logits in the backward pass right where they
        # are needed, for the same peak; keeping them saves that head matmul (bit for bit the same).
        return _head_logprobs(out_BTX, head.weight, ids_BT, temperature, with_entropy)
    parts = [checkpoint(_head_logprobs, out_BTX[:, t:t + step], head.weight, ids_BT[:, t:t + step], temperature,
                        with_entropy, use_reentrant=False) for t in range(0, T, step)]
    logp_BT = torch.cat([lp for lp, _ in parts], dim=1)
    return logp_BT, (torch.cat([e for _, e in parts], dim=1) if with_entropy else None)


def _head_logprobs(x_BTX: torch.Tensor, weight_VH: torch.Tensor | None, ids_BT: torch.Tensor, temperature: float,
                   with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs of `ids_BT`, entropy or None) from logits, or from hidden states and the head's weight."""
    logits_BTV = x_BTX if weight_VH is None else torch.nn.functional.linear(x_BTX, weight_VH)
    B, T, V = logits_BTV.shape
    logp_N, entropy_N = token_logp(logits_BTV.reshape(B * T, V), ids_BT.reshape(B * T), temperature, with_entropy)
    return logp_N.view(B, T), (entropy_N.view(B, T) if with_entropy else None)


def _chunkable_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The model's output head where token_logprobs may run it itself: a bias-free nn.Linear, on a
    model that is not FSDP-sharded (outside the root's forward its weight is a shard) and whose
    forward does nothing to the logits after the head (Gemma 2's final_logit_softcapping would be
    applied to the hidden states instead)."""
    from torch.distributed.fsdp import FSDPModule

    inner = getattr(model, "module", model)  # DDP keeps the model on .module
    if isinstance(inner, FSDPModule) or any(isinstance(m, FSDPModule) for m in inner.modules()):
        return None
    if getattr(getattr(inner, "config", None), "final_logit_softcapping", None):
        return None
    get = getattr(inner, "get_output_embeddings", None)
    head = get() if get is not None else None
    return head if type(head) is torch.nn.Linear and head.bias is None else None


@contextlib.contextmanager
def _without_head(model: torch.nn.Module, head: torch.nn.Linear | None) -> Iterator[None]:
    """With `head` given: the model's output head replaced by the identity for the block, so that
    its `.logits` are the final hidden states; the head (and any weight tying) restored after."""
    if head is None:
        yield
        return
    inner = getattr(model, "module", model)
    inner.set_output_embeddings(torch.nn.Identity())
    try:
        yield
    finally:
        inner.set_output_embeddings(head)


def _shared_prompt_logits(model: torch.nn.Module, packed: Packed) -> torch.Tensor | None:
    """(B, T, V) logits predicting the completion tokens, with each distinct prompt encoded once.

    A GRPO batch holds G completions of each prompt, and a plain forward pass encodes every
    prompt G times. Here the prompts' first P-1 tokens go through the model once per distinct
    prompt, their keys and values are indexed to the rows that share them (so gradients from all
    G rows flow back into the one prompt pass), and only the last prompt token and the
    completions run per row. With SmolLM2-135M, 8 prompts x 8 completions, ~45-token prompts,
    that is about half of the tokens of the forward and backward pass.

    None (the caller then runs the plain pass) where nothing is shared, or where the model did not
    fill the cache or cannot attend to a shared prefix under activation checkpointing.
    """
    P, T = packed.prompt_len, packed.completion_ids_BT.shape[1]
    if P < 2:
        return None
    key_BK = torch.cat([packed.input_ids_BL[:, :P], packed.attention_mask_BL[:, :P]], dim=1)
    unique_UK, row_to_unique = torch.unique(key_BK, dim=0, return_inverse=True)
    if len(unique_UK) == len(key_BK):
        return None
    rows_B = torch.arange(len(key_BK), device=key_BK.device)
    first = torch.empty(len(unique_UK), dtype=torch.long, device=key_BK.device).scatter_(0, row_to_unique, rows_B)
    head = (first, slice(0, P - 1))
    tail = slice(P - 1, P + T - 1)  # the last prompt token and all but the last completion token
    return shared_prefix_forward(
        model, dict(input_ids=packed.input_ids_BL[head], attention_mask=packed.attention_mask_BL[head],
                    position_ids=packed.position_ids_BL[head]),
        row_to_unique,
        dict(input_ids=packed.input_ids_BL[:, tail], attention_mask=packed.attention_mask_BL[:, :P + T - 1],
             position_ids=packed.position_ids_BL[:, tail]))


def shared_prefix_forward(model: torch.nn.Module, prefix: dict, rows: torch.Tensor | None,
                          tail: dict) -> torch.Tensor | None:
    """`model(**tail).logits` where every row of `tail` continues one of the prefixes `prefix` (model
    inputs of the U distinct prefixes), `rows` (B,) naming each row's: the prefixes are encoded
    once, and each row attends to its prefix's keys and values. Differentiable into the prefix pass.
    `rows` None: `prefix` and `tail` are flat rows (groupo.models.packing) whose segments say which
    span of the prefix row each tail segment attends to; the cache is kept as it is.

    Under activation checkpointing (`model.gradient_checkpointing`) the prefix pass runs without it
    (its activations are those of U prefixes, a few of the batch's rows) and the tail pass with it:
    the tail reads the prefix from a cache that it never writes (`PrefixLayer`), so the layers'
    recomputation in the backward pass reads the same keys and values as their forward. None where
    the model did not fill the cache, or a layer is not plain full attention, or this transformers
    release drops the cache of checkpointed layers (it then cannot be shared)."""
    from transformers import DynamicCache

    if any(_checkpoint_layers(model, "gradient_checkpointing")) and not checkpoint_keeps_cache():
        return None
    inner = getattr(model, "module", model)  # a DDP wrapper keeps the model on .module
    cache = DynamicCache(config=inner.config)
    if any(type(layer) is not DynamicLayer for layer in cache.layers):  # e.g. sliding windows (Gemma 3, Phi-3):
        return None  # known from the config, before a prefix pass that would be thrown away
    with _layers_set(model, "gradient_checkpointing", False):
        model(**prefix, past_key_values=cache, use_cache=True, logits_to_keep=1)
    n = prefix["input_ids"].shape[1]
    if cache.get_seq_length() != n or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    if rows is not None:
        cache.batch_select_indices(rows)
    cache.layers = [PrefixLayer(layer.keys, layer.values) for layer in cache.layers]
    with _layers_set(model, "_can_checkpoint_with_cache", True):
        return model(**tail, past_key_values=cache, use_cache=True).logits


def checkpoint_keeps_cache() -> bool:
    """Whether this transformers release lets a checkpointed layer keep a cache it only reads."""
    return hasattr(GradientCheckpointingLayer, "_can_checkpoint_with_cache")


class PrefixLayer(DynamicLayer):
    """A cache layer holding a prefix's keys and values that each forward pass attends to and none
    extends: `update` returns the prefix followed by the pass's own keys and values, and stores
    nothing, so the same pass run again (activation checkpointing's recomputation) sees the same
    prefix. The numbers are those of DynamicLayer's concatenation."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


def _checkpoint_layers(model: torch.nn.Module, attr: str) -> Iterator[bool]:
    return (getattr(m, attr) for m in model.modules() if isinstance(m, GradientCheckpointingLayer))


@contextlib.contextmanager
def _layers_set(model: torch.nn.Module, attr: str, value: bool) -> Iterator[None]:
    """Every checkpointable layer of `model` with `attr` set to `value` for the block (as an
    attribute of the layer itself), then as before."""
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    saved = [m.__dict__.get(attr, _UNSET) for m in layers]
    for m in layers:
        setattr(m, attr, value)
    try:
        yield
    finally:
        for m, old in zip(layers, saved, strict=True):
            if old is _UNSET:
                m.__dict__.pop(attr, None)
            else:
                setattr(m, attr, old)


_UNSET = object()


def prompt_kv_cache(model: torch.nn.Module, packed: Packed):
    """A DynamicCache holding the keys and values of each prompt's first P-1 tokens (generation's
    shared prefix); the last prompt token is left to the pass that uses the cache, so that its
    logits predict the first completion token. None where there is nothing to cache (P < 2) or
    the model did not fill it."""
    from transformers import DynamicCache

    P = packed.prompt_len
    if P < 2:
        return None
    head = slice(0, P - 1)
    cache = DynamicCache(config=getattr(model, "module", model).config)  # a DDP wrapper keeps it on .module
    model(input_ids=packed.input_ids_BL[:, head], attention_mask=packed.attention_mask_BL[:, head],
          position_ids=packed.position_ids_BL[:, head], past_key_values=cache, use_cache=True, logits_to_keep=1)
    return cache if cache.get_seq_length() == P - 1 else None
