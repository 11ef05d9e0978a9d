"""The KV cache of one `generate` call's rows, kept for the next call that extends them.

A multi-turn episode's round k + 1 prompt is its round-k prompt, the tokens sampled in round k and
the tool's output: everything but the tool's output was encoded in round k already. `KeptRows`
holds, for each row the decoding loop ran, the keys and values of the tokens it fed (prompt and
sampled tokens but the last, which was never fed), with the padding columns taken out. `resume`
turns the prompts that extend a kept row into a first feed of only their new tokens and a batch
cache made from the kept rows: left-padded to the longest, so a row's columns read
[pad.. kept | pad.. new], with the attention mask zero on both pads and positions continuing the
kept ones. Attention is relative between positions (RoPE) and masked columns take no weight, so
the logits are those of encoding the whole prompt again, up to float rounding (tested).

Rows are kept for one call: each call reads the rows its prompts extend, then its own rows
replace all earlier ones. Valid only while the weights do not change
(`HFEngine.keeping_prefixes` scopes it to one multi-turn rollout). Memory: the kept rows' keys
and values, as much again as the decoding loop's own cache at its largest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicLayer

from groupo.engines.kv import ReservedLayer


@dataclass
class Row:
    tokens: tuple[int, ...]                           # what was fed: prompt, sampled tokens but the last
    kv: list[tuple[torch.Tensor, torch.Tensor]]       # per layer: keys, values, each (heads, len(tokens), dim)


@dataclass
class Feed:
    """The first pass of a decoding loop: its input ids, the attention mask over the cache and
    the input (cache columns first), and the inputs' positions."""

    ids_AL: torch.Tensor
    mask_AL: torch.Tensor
    pos_AL: torch.Tensor


def cacheable(cache) -> bool:
    """Rows of this cache can be kept: every layer plain full attention (a sliding-window layer
    drops old keys, so its rows are not whole prompts)."""
    return all(type(layer) in (DynamicLayer, ReservedLayer) for layer in cache.layers)


class KeptRows:
    def __init__(self) -> None:
        self.rows: dict[tuple[int, ...], Row] = {}
        self._next: dict[tuple[int, ...], Row] = {}

    def find(self, prompt: list[int]) -> Row | None:
        """The kept row whose tokens are the longest proper prefix of `prompt`. Rows are not
        removed: episodes of one prompt that sampled the same turn share one kept row."""
        for n in sorted({len(t) for t in self.rows}, reverse=True):
            row = self.rows.get(tuple(prompt[:n])) if n < len(prompt) else None
            if row is not None:
                return row
        return None

    def save(self, cache, mask_AL: torch.Tensor, which_A: torch.Tensor, fed: list[list[int]]) -> None:
        """Keep rows `which_A` of the decoding loop's `cache` (columns where `mask_AL` is 1), whose
        fed tokens are `fed` (one list per row of which_A), for the next call."""
        real_WC = mask_AL[which_A].bool()
        for j, a in enumerate(which_A.tolist()):
            key = tuple(fed[j])
            if key in self._next:  # another sample of the same prompt that sampled the same tokens
                continue
            cols = real_WC[j].nonzero()[:, 0]
            if len(cols) != len(key):
                raise RuntimeError(f"kept row: {len(cols)} cached positions for {len(key)} fed tokens")
            self._next[key] = Row(key, [(layer.keys[a][:, cols], layer.values[a][:, cols]) for layer in cache.layers])

    def end_call(self) -> None:
        """The rows this call saved replace all earlier ones."""
        self.rows, self._next = self._next, {}

    def resume(self, prompts: list[list[int]], pad_id: int, config, device) -> tuple[Feed, object] | None:
        """(first feed, batch cache) for `prompts`, each continuing its kept row where one extends
        it (a prompt with none is fed whole); None when no prompt extends a kept row."""
        from transformers import DynamicCache

        rows = [self.find(p) for p in prompts]
        if not any(rows):
            return None
        kept = [len(r.tokens) if r else 0 for r in rows]
        B, C = len(prompts), max(kept)
        L = max(len(p) - k for p, k in zip(prompts, kept, strict=True))
        ids_BL = torch.full((B, L), pad_id, dtype=torch.long)
        mask_BW = torch.zeros((B, C + L), dtype=torch.long)
        pos_BL = torch.zeros((B, L), dtype=torch.long)
        for b, (p, k) in enumerate(zip(prompts, kept, strict=True)):
            new = len(p) - k
            ids_BL[b, L - new:] = torch.tensor(p[k:], dtype=torch.long)
            mask_BW[b, C - k:C] = 1
            mask_BW[b, C + L - new:] = 1
            pos_BL[b, L - new:] = torch.arange(k, len(p))
        cache = DynamicCache(config=config)
        some = next(r for r in rows if r)
        for i in range(len(some.kv)):
            k0, v0 = some.kv[i]
            keys = k0.new_zeros((B, k0.shape[0], C, k0.shape[-1]))
            values = v0.new_zeros((B, v0.shape[0], C, v0.shape[-1]))
            for b, (r, k) in enumerate(zip(rows, kept, strict=True)):
                if r:
                    keys[b, :, C - k:], values[b, :, C - k:] = r.kv[i]
            cache.update(keys.to(device), values.to(device), i)
        return Feed(ids_BL.to(device), mask_BW.to(device), pos_BL.to(device)), cache
