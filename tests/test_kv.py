"""The decoding loop's in-place KV cache (groupo/engines/kv.py) against transformers' DynamicCache."""

import pytest
import torch
from test_rollout import eos_biased_tiny, prompts_for
from transformers.cache_utils import DynamicLayer

from groupo.engines.hf import HFEngine
from groupo.engines.kv import ReservedLayer
from groupo.types import SamplingParams


def _kv(b: int, t: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 2, t, 4, generator=g), torch.randn(b, 2, t, 4, generator=g)


def test_a_reserved_layer_holds_what_concatenation_holds_and_writes_in_place():
    plain, reserved = DynamicLayer(), ReservedLayer(room=3)
    for i, t in enumerate([5, 1, 1, 1, 2, 1]):  # a prefill, then tokens; the 2 overflows the room
        k, v = _kv(3, t, seed=i)
        want, got = plain.update(k, v), reserved.update(k, v)
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
        if i == 0:
            buf = reserved.key_buf.data_ptr()
        if i == 3:  # 5 + 3 tokens fill the room: still the first buffer
            assert reserved.key_buf.data_ptr() == buf and reserved.key_buf.shape[-2] == 8
    assert reserved.key_buf.shape[-2] == 10 + 3 and reserved.get_seq_length() == plain.get_seq_length() == 11
    for op in (lambda layer: layer.batch_select_indices(torch.tensor([2, 0])),
               lambda layer: layer.batch_repeat_interleave(2)):
        op(plain)
        op(reserved)
        assert torch.equal(plain.keys, reserved.keys) and torch.equal(plain.values, reserved.values)
    k, v = _kv(4, 1, seed=9)  # and it goes on writing after them
    assert torch.equal(plain.update(k, v)[0], reserved.update(k, v)[0])


@pytest.mark.parametrize("autocast", ["none", "bf16"])
def test_decoding_with_the_reserved_cache_gives_the_same_tokens_and_logprobs_bit_for_bit(autocast):
    model, tok = eos_biased_tiny(bias=3.0)  # rows stop at different steps: rows leave the cache too
    params = SamplingParams(n=4, temperature=0.8, max_new_tokens=12, seed=7)
    runs = [HFEngine(model, tok, batch_size=12, autocast=autocast, reserve_cache=r).generate(prompts_for(tok), params)
            for r in (True, False)]
    flat = [[(c.token_ids, c.logprobs, c.finish_reason) for g in out for c in g] for out in runs]
    assert flat[0] == flat[1]
    assert len({len(t) for t, _, _ in flat[0]}) > 2  # rows of several lengths
