"""The decoding loop's attention for one-token queries (groupo/rollout/attention.py): against
attention written out per head in float64, and the engine with it against the engine with SDPA."""

import math

import pytest
import torch
from test_rollout import eos_biased_tiny, prompts_for
from tiny import make_tiny
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from groupo.rollout.attention import NAME, decode_attention, decode_attention_forward
from groupo.rollout.hf import HFEngine
from groupo.types import SamplingParams


class _Module(torch.nn.Module):  # what transformers' attention functions read from the layer
    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups, self.is_causal, self.training = groups, True, False


def _by_hand(q, k, v, keep, scale):
    """Each query head i attends to KV head i // (H / KV) over the kept positions, in float64."""
    B, H, _, D = q.shape
    KV, L = k.shape[1], k.shape[2]
    out = torch.zeros(B, 1, H, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            kv = h // (H // KV)
            w = [math.exp(scale * float(q[b, h, 0].double() @ k[b, kv, j].double())) if keep[b, j] else 0.0
                 for j in range(L)]
            out[b, 0, h] = sum(w[j] * v[b, kv, j].double() for j in range(L)) / sum(w)
    return out


def _qkv(B=3, H=6, KV=2, L=7, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, n, t, D, generator=g) for n, t in ((H, 1), (KV, L), (KV, L)))
    keep = torch.ones(B, L, dtype=torch.bool)
    keep[1, :2] = keep[2, :4] = False  # left padding of 2 and 4
    return q, k, v, keep


def test_one_query_attends_like_attention_written_out_per_head():
    q, k, v, keep = _qkv()
    want = _by_hand(q, k, v, keep, scale=8 ** -0.5)
    bool_mask = keep[:, None, None, :]
    additive = torch.zeros(3, 1, 1, 7).masked_fill(~bool_mask, float("-inf"))
    for mask in (bool_mask, additive):
        got, weights = decode_attention_forward(_Module(3), q, k, v, mask)
        assert weights is None and got.dtype == torch.float32 and got.shape == (3, 1, 6, 8)
        assert (got.double() - want).abs().max() < 1e-6
    no_pad = _by_hand(q, k, v, torch.ones(3, 7, dtype=torch.bool), scale=0.3)
    assert (decode_attention_forward(_Module(3), q, k, v, None, scaling=0.3)[0].double() - no_pad).abs().max() < 1e-6


def test_under_bf16_autocast_it_returns_bf16_computed_in_float32():
    q, k, v, keep = _qkv(seed=1)
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()  # what a bf16 model's projections give
    want = _by_hand(qb.float(), kb.float(), vb.float(), keep, scale=8 ** -0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = decode_attention_forward(_Module(3), qb, kb, vb, keep[:, None, None, :])
    assert got.dtype == torch.bfloat16
    # only the final rounding to bf16 (relative 2^-8) separates it from the float64 result
    assert ((got.double() - want).abs() <= want.abs() * 2 ** -8 + 1e-6).all()


def test_prompts_of_several_tokens_still_go_to_sdpa():
    g = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(2, 4, 5, 8, generator=g), torch.randn(2, 2, 5, 8, generator=g), torch.randn(2, 2, 5, 8, generator=g)
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool).tril()
    got, _ = decode_attention_forward(_Module(2), q, k, v, mask)
    want, _ = sdpa_attention_forward(_Module(2), q, k, v, mask)
    assert torch.equal(got, want)


def test_the_switch_applies_to_sdpa_models_inside_the_block_only():
    model, _ = make_tiny()
    assert model.config._attn_implementation == "sdpa"
    with decode_attention(model):
        assert model.config._attn_implementation == NAME
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError), decode_attention(model):
        raise RuntimeError
    assert model.config._attn_implementation == "sdpa"
    model.config._attn_implementation = "eager"
    with decode_attention(model):
        assert model.config._attn_implementation == "eager"


def test_the_engine_decodes_the_same_with_it_as_with_sdpa():
    """float32: the two attentions differ by rounding (~1e-7), so the same seed samples the same
    tokens and records the same log-probs to ~1e-5; rows stop at different steps and prompts are
    left-padded, so masks and rows leaving the batch are covered."""
    model, tok = eos_biased_tiny(bias=3.0)
    params = SamplingParams(n=4, temperature=0.8, max_new_tokens=12, seed=7)
    fast, sdpa = (HFEngine(model, tok, batch_size=12, autocast="none", fast_attention=f).generate(prompts_for(tok), params)
                  for f in (True, False))
    pairs = [(a, b) for ga, gb in zip(fast, sdpa) for a, b in zip(ga, gb)]
    assert all(a.token_ids == b.token_ids for a, b in pairs)
    assert max(abs(x - y) for a, b in pairs for x, y in zip(a.logprobs, b.logprobs)) < 1e-5
    assert len({len(a.token_ids) for a, _ in pairs}) > 2
    assert model.config._attn_implementation == "sdpa"


def test_the_engine_log_probs_match_the_trainers_pass_over_the_same_tokens():
    """What the engine records under the fast attention is what a full forward pass (SDPA over
    prompt + completion, as the trainer's log-prob pass runs) gives for the sampled tokens."""
    model, tok = eos_biased_tiny(bias=2.0)
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=10, seed=3)
    out = HFEngine(model, tok, batch_size=9, autocast="none").generate(prompts_for(tok), params)
    with torch.no_grad():
        for group in out:
            for c in group:
                ids = torch.tensor([c.prompt_ids + c.token_ids])
                logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
                P = len(c.prompt_ids)
                want = [float(logp[P - 1 + i, t]) for i, t in enumerate(c.token_ids)]
                assert max(abs(x - y) for x, y in zip(c.logprobs, want)) < 1e-4
