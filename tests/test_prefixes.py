"""The HF engine's KV cache kept across the rounds of multi-turn episodes (groupo/engines/prefixes.py):
a round that extends the last one's rows encodes only what it adds, and samples what encoding
everything again would."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest
import torch
from test_episodes import EOS, call, episode, hermes_tokenizer
from test_rollout import eos_biased_tiny, prompts_for
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from groupo.engines import Engine
from groupo.engines.hf import HFEngine
from groupo.engines.prefixes import cacheable
from groupo.models.logprobs import pack, token_logprobs
from groupo.tools import load_tools
from groupo.types import SamplingParams

EXTRA = ([5, 6, 7], [8, 9, 10, 11, 12], [13])  # the "tool output" each row's next prompt adds


class Widths:
    """Records the input width of each forward pass of `model` (the first of a call is its encoding)."""

    def __init__(self, model):
        self.model, self.widths = model, []
        self._hook = model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        self.widths.append(kwargs["input_ids"].shape[1])

    def close(self):
        self._hook.remove()


def next_prompts(first, extra=EXTRA):
    """What a multi-turn round sends next: each row's prompt, its sampled tokens, then its extra tokens."""
    flat = [c for g in first for c in g]
    return [c.prompt_ids + c.token_ids + extra[i % len(extra)] for i, c in enumerate(flat)]


def two_rounds(engine, params, keep: bool):
    """Round 1 (n samples of each prompt), then one sample of each row's continuation, inside
    keeping_prefixes or not. Returns (round 1, round 2, input widths of round 2's forward passes)."""
    scope = engine.keeping_prefixes() if keep else contextlib.nullcontext()
    widths = Widths(engine.model)
    try:
        with scope:
            first = engine.generate(prompts_for(engine.tokenizer), params)
            start = len(widths.widths)
            second = engine.generate(next_prompts(first), replace(params, n=1))
    finally:
        widths.close()
    return first, second, widths.widths[start:]


@pytest.mark.parametrize(("temperature", "bias"), [(1.0, 3.0), (0.0, 1.0)])
def test_a_round_that_extends_kept_rows_encodes_only_its_new_tokens_and_samples_the_same(temperature, bias):
    model, tok = eos_biased_tiny(bias)  # rows stop at different steps: rows are kept as they leave
    params = SamplingParams(n=2, temperature=temperature, max_new_tokens=10, seed=3)
    first, second, widths = two_rounds(HFEngine(model, tok, batch_size=16, autocast="none"), params, keep=True)
    ref_first, ref_second, ref_widths = two_rounds(
        HFEngine(model, tok, batch_size=16, autocast="none", keep_prefixes=False), params, keep=True)
    flat = [c for g in first for c in g]
    assert [c.token_ids for c in flat] == [c.token_ids for g in ref_first for c in g]
    assert len({len(c.token_ids) for c in flat}) > 1
    # Every row's cache holds its prompt and all its sampled tokens but the last (never fed), so
    # the first pass feeds that token and the row's extra tokens: 1 + the longest extra.
    assert widths[0] == 1 + max(len(e) for e in EXTRA)
    assert ref_widths[0] == max(len(p) for p in next_prompts(first))
    got, want = [c for g in second for c in g], [c for g in ref_second for c in g]
    assert [c.token_ids for c in got] == [c.token_ids for c in want]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)
    # and the log-probs are those of one forward pass over the whole sequence
    packed = pack([c.prompt_ids for c in got], [c.token_ids for c in got], tok.pad_token_id)
    with torch.no_grad():
        logp_BT, _ = token_logprobs(model, packed, temperature or 1.0)
    if temperature:
        for b, c in enumerate(got):
            torch.testing.assert_close(torch.tensor(c.logprobs), logp_BT[b, :len(c.token_ids)], atol=1e-4, rtol=0)


def test_samples_that_sampled_the_same_tokens_share_one_kept_row_and_both_resume():
    model, tok = eos_biased_tiny(bias=1.0)
    engine = HFEngine(model, tok, batch_size=16, autocast="none")
    params = SamplingParams(n=3, temperature=0.0, max_new_tokens=6, seed=0)  # greedy: the 3 samples agree
    with engine.keeping_prefixes():
        first = engine.generate(prompts_for(tok), params)
        assert len(engine._kept.rows) == len(prompts_for(tok))  # one row per prompt, not per sample
        widths = Widths(model)
        engine.generate(next_prompts(first, ([4],)), SamplingParams(n=1, temperature=0.0, max_new_tokens=2))
        widths.close()
    assert widths.widths[0] == 2
    assert engine._kept is None  # freed on leaving


def test_outside_the_scope_and_with_keep_prefixes_off_every_prompt_is_encoded_whole():
    model, tok = eos_biased_tiny(bias=3.0)
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=1)
    for engine, keep in ((HFEngine(model, tok, autocast="none"), False),
                         (HFEngine(model, tok, autocast="none", keep_prefixes=False), True)):
        first, _, widths = two_rounds(engine, params, keep=keep)
        assert widths[0] == max(len(p) for p in next_prompts(first))
        assert engine._kept is None


def test_a_prompt_that_extends_no_kept_row_is_encoded_whole_beside_ones_that_resume():
    model, tok = eos_biased_tiny(bias=3.0)
    params = SamplingParams(n=1, temperature=1.0, max_new_tokens=8, seed=2)
    outs = []
    for keep in (True, False):
        engine = HFEngine(model, tok, autocast="none", keep_prefixes=keep)
        with engine.keeping_prefixes():
            first = engine.generate(prompts_for(tok), params)
            stranger = [1, *tok.encode("Something else entirely")]
            widths = Widths(model)
            outs.append(engine.generate([*next_prompts(first), stranger], params))
            widths.close()
        if keep:  # the stranger is fed whole: the pass is as wide as it, no wider
            assert widths.widths[0] == max(len(stranger), 1 + max(len(e) for e in EXTRA))
    got, want = ([c for g in out for c in g] for out in outs)
    assert [c.token_ids for c in got] == [c.token_ids for c in want]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)


def test_caches_with_sliding_window_layers_are_not_kept():
    full, sliding = DynamicCache(), DynamicCache()
    full.layers = [DynamicLayer(), DynamicLayer()]
    sliding.layers = [DynamicLayer(), DynamicSlidingWindowLayer(sliding_window=4)]
    assert cacheable(full) and not cacheable(sliding)


class Scoped(Engine):
    """An engine wrapper that says whether each generate call ran inside keeping_prefixes."""

    def __init__(self, engine):
        self.engine, self.inside, self.calls = engine, False, []

    @contextlib.contextmanager
    def keeping_prefixes(self):
        self.inside = True
        try:
            yield
        finally:
            self.inside = False

    def generate(self, prompts, params):
        self.calls.append(self.inside)
        return self.engine.generate(prompts, params)

    def sync_weights(self):
        pass


def test_the_episode_driver_runs_all_of_an_episodes_rounds_in_one_keeping_scope(monkeypatch):
    import test_episodes

    real = test_episodes.ScriptedEngine
    monkeypatch.setattr(test_episodes, "ScriptedEngine", lambda *a: Scoped(real(*a)))
    turn = call("calculator", '{"expression": "2 + 3"}') + EOS
    groups, engine, _ = episode(hermes_tokenizer(), [[[turn, "It is 5." + EOS]]], load_tools(["calculator"]))
    assert engine.calls == [True, True] and not engine.inside  # two rounds, both inside; left afterwards
    assert groups[0][0].tool_stats["turns"] == 2
