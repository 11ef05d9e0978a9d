"""Attention inside the segments of a flat row: the kernel of the padding-free passes
(groupo.models.packing), registered with transformers under the names `PACKED`.

A flat row holds several sequences end to end, each a *segment* with its own positions.
`packed_attention` runs the configured kernel (SDPA or eager) once per segment on that segment's
queries and keys, causal, so attention costs the sum of the segments' squares, not the square of
the row. One block-diagonal mask over the whole row (transformers' own packed format, position ids
alone) gives back in attention what the linear layers save: measured on 16 sequences of 70 + 20-256
tokens, 8 SmolLM2-135M layers, one thread, forward and backward took 11.8 CPU s with it and 7.3 s
segment by segment (prompts encoded per sequence in both), and the padded pass 12.2 s even with its
prompts encoded once per group. On CUDA, where torch has its variable-length flash kernel,
one call does all segments.

A segment may also attend to a *prefix*, a span of the keys a KV cache holds before the pass's own
(its shared prompt): its keys are then (the prefix, its own tokens), causal bottom-right aligned.
`Segments` says where each segment's queries and prefix are.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import sys
from dataclasses import dataclass, field

import torch

PACKED = {"sdpa": "groupo_packed_sdpa", "eager": "groupo_packed_eager"}  # inner kernel -> registered name
SEGMENTS_KW = "groupo_segments"  # the model-call keyword that carries `Segments` down to attention


@dataclass(frozen=True)
class Segments:
    """The segments of one flat pass (host-side ints). Segment i is q_len[i] tokens of the pass's
    row, end to end; it also attends to piece prefix_of[i] of the keys a cache holds before the
    pass's own (its shared prompt; -1: none), those pieces being prefix_len[k] tokens each, end to
    end. Rows are cut with `split` rather than slices: a slice's backward writes a zero gradient of
    the whole row per segment, quadratic in the segments (measured: 6% of a pass over 16 sequences)."""

    q_len: tuple[int, ...]
    prefix_len: tuple[int, ...] = ()
    prefix_of: tuple[int, ...] = ()
    _masks: dict = field(default_factory=dict, compare=False, repr=False)  # built once per pass, not per layer
    calls: list = field(default_factory=lambda: [0], compare=False, repr=False)  # layers that attended with them

    @property
    def tokens(self) -> int:
        return sum(self.q_len)

    def prefix(self, i: int) -> int:
        """Segment i's prefix length (0: none)."""
        k = self.prefix_of[i] if self.prefix_of else -1
        return self.prefix_len[k] if k >= 0 else 0

    def mask(self, i: int, window: int | None, dtype: torch.dtype | None, device) -> torch.Tensor:
        """(1, 1, q, prefix + q) for segment i: bool (dtype None) or additive in `dtype` (eager)."""
        key = (self.q_len[i], self.prefix(i), window, dtype, str(device))
        if key not in self._masks:
            ok = allowed(self.q_len[i], self.prefix(i), window, device)[None, None]
            self._masks[key] = ok if dtype is None else torch.zeros(ok.shape, dtype=dtype, device=device).masked_fill_(
                ~ok, torch.finfo(dtype).min)
        return self._masks[key]

    def key_index(self, own: int) -> list[int]:
        """For the variable-length layout: the key positions of every segment in turn (its prefix,
        then its own tokens, which start at `own` in the key tensor)."""
        starts = [0]
        for n in self.prefix_len:
            starts.append(starts[-1] + n)
        out: list[int] = []
        q = own
        for i, n in enumerate(self.q_len):
            k = self.prefix_of[i] if self.prefix_of else -1
            out += [*(range(starts[k], starts[k] + self.prefix_len[k]) if k >= 0 else ()), *range(q, q + n)]
            q += n
        return out


def allowed(q_len: int, prefix_len: int, window: int | None, device) -> torch.Tensor:
    """(q_len, prefix_len + q_len) bool: query j (at position prefix_len + j) sees key k where k is at
    or before it and, with a sliding window, less than `window` positions back."""
    q_pos = torch.arange(prefix_len, prefix_len + q_len, device=device)[:, None]
    k_pos = torch.arange(prefix_len + q_len, device=device)[None, :]
    ok = k_pos <= q_pos
    return ok & (q_pos - k_pos < window) if window else ok


def packed_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, *, kernel: str, scaling: float | None = None,
                     dropout: float = 0.0, sliding_window: int | None = None, **kwargs):
    """A transformers attention function over a flat row: query (1, H, N, D), key and value (1, Hkv,
    K, D) whose last N positions are the pass's own tokens (before them: the prefix pieces of a
    cache). Returns ((1, N, H, D), None) as transformers' kernels do."""
    segs: Segments | None = kwargs.pop(SEGMENTS_KW, None)
    if segs is None:
        raise RuntimeError(f"attention {PACKED[kernel]!r} runs only the padding-free passes (groupo.models."
                           "packing); this forward pass gave no segments")
    segs.calls[0] += 1
    N = query.shape[2]
    own = key.shape[2] - N
    if segs.tokens != N or own != sum(segs.prefix_len):
        raise RuntimeError(f"packed attention: {N} queries and {own} cached keys, but segments of {segs.tokens} "
                           f"and prefixes of {sum(segs.prefix_len)}")
    if kernel == "sdpa" and _use_varlen(query):
        return _varlen_attention(query, key, value, segs, own, scaling, sliding_window), None
    inner = _inner(module, kernel)
    qs = query.split(segs.q_len, dim=2)
    ks, vs = key[:, :, own:].split(segs.q_len, dim=2), value[:, :, own:].split(segs.q_len, dim=2)
    pk, pv = key[:, :, :own].split(segs.prefix_len, dim=2), value[:, :, :own].split(segs.prefix_len, dim=2)
    outs = []
    for i, (q, k, v) in enumerate(zip(qs, ks, vs, strict=True)):
        if q.shape[2] == 0:
            continue
        piece = segs.prefix_of[i] if segs.prefix_of else -1
        if piece >= 0 and segs.prefix_len[piece]:
            k, v = torch.cat([pk[piece], k], dim=2), torch.cat([pv[piece], v], dim=2)
        mask = None
        if k.shape[2] > q.shape[2] or sliding_window or kernel == "eager":  # else SDPA's causal kernel (is_causal)
            mask = segs.mask(i, sliding_window, None if kernel == "sdpa" else query.dtype, query.device)
        out, _ = inner(module, q, k, v, mask, scaling=scaling, dropout=dropout, **kwargs)
        outs.append(out)
    return torch.cat(outs, dim=1), None


def _inner(module: torch.nn.Module, kernel: str):
    """The model's own function for `kernel`: transformers' SDPA, or the eager function of the
    module's modeling file (some models change it, e.g. logit soft-capping)."""
    if kernel == "sdpa":
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward
    eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if eager is None:
        from transformers.models.llama.modeling_llama import eager_attention_forward as eager
    return eager


def _use_varlen(query: torch.Tensor) -> bool:
    """Whether `_varlen_attention` runs: a CUDA tensor in half precision and torch's kernel present."""
    return query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and _varlen() is not None


@functools.cache
def _varlen():
    """torch's variable-length flash attention (CUDA), or None where this torch has none or one
    without the arguments used here (sliding windows and grouped-query attention)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    return varlen_attn if {"window_size", "enable_gqa", "scale"} <= set(params) else None


def _varlen_attention(query, key, value, segs: Segments, own: int, scaling, window) -> torch.Tensor:
    """All segments in one variable-length call: the keys gathered segment by segment (prefix, then
    its own) so that segment i's keys are the i-th span of the cumulative lengths; causal is
    bottom-right aligned in these kernels, as a prefix needs. Tested on the CPU against a written-out
    variable-length attention (tests/test_packing.py); not yet run on a GPU."""
    device = query.device
    index = torch.tensor(segs.key_index(own), device=device)
    k_lens = [segs.prefix(i) + n for i, n in enumerate(segs.q_len)]
    cu_q = torch.tensor([0, *itertools.accumulate(segs.q_len)], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, *itertools.accumulate(k_lens)], dtype=torch.int32, device=device)
    q = query[0].transpose(0, 1).contiguous()          # (N, H, D)
    k = key[0].transpose(0, 1).index_select(0, index)  # (sum of k_lens, Hkv, D)
    v = value[0].transpose(0, 1).index_select(0, index)
    out = _varlen()(q, k, v, cu_q, cu_k, max(segs.q_len), max(k_lens), scale=scaling,
                    window_size=(window - 1 if window else -1, 0), enable_gqa=k.shape[1] != q.shape[1])
    return out[None]                                   # (1, N, H, D)


def register() -> None:
    """Make `PACKED`'s names known to transformers (idempotent). With no mask function registered
    for them, the models build no attention mask: the segments are the mask."""
    from transformers import AttentionInterface

    for kernel, name in PACKED.items():
        AttentionInterface.register(name, functools.partial(packed_attention, kernel=kernel))
