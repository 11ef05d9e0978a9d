"""A KV cache for the decoding loop that writes each new token in place.

transformers' DynamicCache appends a token by concatenation: every layer copies all of its keys
and values at every decoding step, so a completion of S tokens after a prompt of P costs
O((P + S)^2) bytes of copying per layer instead of O(P + S). `reserve` gives each full-attention
layer buffers with room for the tokens still to come; its keys and values are views of the
filled part, so attention reads the same numbers as from the concatenated tensors (tested: the
same tokens and log-probabilities, bit for bit). Generation only: the buffers are written in
place, which autograd must not see.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer


class ReservedLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are views of buffers with room for `room` more tokens;
    a buffer is reallocated (with `room` more again) only when a write would overflow it."""

    def __init__(self, room: int):
        super().__init__()
        self.room = room
        self.key_buf = self.value_buf = None

    @classmethod
    def holding(cls, layer: DynamicLayer, room: int) -> ReservedLayer:
        """A ReservedLayer with `layer`'s keys and values (copied once into its buffers)."""
        new = cls(room)
        if layer.is_initialized and layer.get_seq_length() > 0:
            new.update(layer.keys, layer.values)
        return new

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, q = self.get_seq_length(), key_states.shape[-2]
        if self.key_buf is None or n + q > self.key_buf.shape[-2]:
            self.key_buf = _with_room(self.keys, key_states, n, n + q + self.room)
            self.value_buf = _with_room(self.values, value_states, n, n + q + self.room)
        self.key_buf[..., n:n + q, :] = key_states
        self.value_buf[..., n:n + q, :] = value_states
        self.keys, self.values = self.key_buf[..., :n + q, :], self.value_buf[..., :n + q, :]
        return self.keys, self.values

    def _apply(self, rows) -> None:
        n = self.get_seq_length()
        if n > 0:
            self.key_buf, self.value_buf = rows(self.key_buf), rows(self.value_buf)
            self.keys, self.values = self.key_buf[..., :n, :], self.value_buf[..., :n, :]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._apply(lambda buf: buf[indices, ...])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._apply(lambda buf: buf.repeat_interleave(repeats, dim=0))

    def reset(self) -> None:
        self.key_buf = self.value_buf = None
        super().reset()


def _with_room(old: torch.Tensor, new: torch.Tensor, n: int, capacity: int) -> torch.Tensor:
    """An empty (..., capacity, D) buffer shaped like `new`, its first n positions `old`'s."""
    buf = new.new_empty((*new.shape[:-2], capacity, new.shape[-1]))
    if n:
        buf[..., :n, :] = old
    return buf


def reserve(cache, room: int):
    """`cache` (a DynamicCache) with each plain full-attention layer given room for `room` more
    tokens; other layer kinds (sliding windows, ...) are left as they are. Returns the cache."""
    cache.layers = [ReservedLayer.holding(layer, room) if type(layer) is DynamicLayer else layer
                    for layer in cache.layers]
    return cache
