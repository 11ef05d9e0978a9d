"""The transformers rollout engine, checked against hand-written decoding and a forward pass."""

from __future__ import annotations

import contextlib

import pytest
import torch
from tiny import make_tiny, nonzero_lora

from groupo.config import Config, LoraConfig
from groupo.engines import EngineContext, build_engine
from groupo.engines.hf import HFEngine
from groupo.models.logprobs import pack, token_logprobs
from groupo.models.policy import load_policy_from
from groupo.types import Completion, SamplingParams


def prompts_for(tok):
    """Prompts of different lengths, so batches are left-padded."""
    chat = tok.apply_chat_template([{"role": "user", "content": "What is 12 + 7?"}],
                                   add_generation_prompt=True, return_dict=False)
    return [chat, [1, *tok.encode("What is")], [1, 40]]


def hand_greedy(model, prompt, steps):
    """Argmax decoding one token at a time, unbatched, no cache."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def eos_biased_tiny(bias):
    """The tiny model with `bias` added to the EOS logit, so sampled sequences end at varied lengths."""
    model, tok = make_tiny()
    head = torch.nn.Linear(64, len(tok), bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[tok.eos_token_id] = bias
    model.lm_head = head
    return model, tok


def test_shapes_types_and_order():
    model, tok = make_tiny()
    prompts = prompts_for(tok)
    out = HFEngine(model, tok, batch_size=4, autocast="none").generate(
        prompts, SamplingParams(n=3, temperature=1.0, max_new_tokens=5, seed=0))
    assert len(out) == 3 and all(len(group) == 3 for group in out)
    for prompt, group in zip(prompts, out, strict=True):
        for c in group:
            assert isinstance(c, Completion) and c.prompt_ids == prompt
            assert len(c.token_ids) == len(c.logprobs) <= 5
            assert all(isinstance(t, int) for t in c.token_ids)
            assert all(lp <= 0 for lp in c.logprobs)
            assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)


def test_greedy_equals_hand_written_loop_in_any_batch_size():
    model, tok = make_tiny()
    prompts = prompts_for(tok)
    expected = [hand_greedy(model, p, 8) for p in prompts]
    for batch_size in (1, 2, 64):
        out = HFEngine(model, tok, batch_size=batch_size, autocast="none").generate(
            prompts, SamplingParams(n=2, temperature=0, max_new_tokens=8))
        for exp, group in zip(expected, out, strict=True):
            assert [c.token_ids for c in group] == [exp, exp]
            assert all(c.finish_reason == "length" for c in group)


def test_shared_prompt_cache_changes_nothing(monkeypatch):
    """Each prompt encoded once and its cache copied to its n rows: the same greedy tokens and the
    same sampled tokens and log-probs (seeded) as encoding every row, with a LoRA policy."""
    model, tok = eos_biased_tiny(bias=2.0)
    policy = load_policy_from(model, tok, LoraConfig(rank=4, alpha=8.0), beta=0.0)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    engine = HFEngine(policy.model, tok, batch_size=6, autocast="none")
    prompts = prompts_for(tok)
    runs = {}
    for shared in (True, False):
        if not shared:
            monkeypatch.setattr(HFEngine, "_shared_prefix", lambda self, batch, n: None)
        runs[shared] = [engine.generate(prompts, SamplingParams(n=3, temperature=t, max_new_tokens=10, seed=5))
                        for t in (0, 1.0)]
    for got, expected in zip(runs[True], runs[False], strict=True):
        for g_group, e_group in zip(got, expected, strict=True):
            assert [c.token_ids for c in g_group] == [c.token_ids for c in e_group]
            for g, e in zip(g_group, e_group, strict=True):
                torch.testing.assert_close(torch.tensor(g.logprobs), torch.tensor(e.logprobs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_a_forward_pass_at_the_same_temperature(temperature):
    model, tok = eos_biased_tiny(bias=3.0)
    prompts = prompts_for(tok)
    out = HFEngine(model, tok, batch_size=4, autocast="none").generate(
        prompts, SamplingParams(n=4, temperature=temperature, max_new_tokens=12, seed=3))
    flat = [c for group in out for c in group]
    packed = pack([c.prompt_ids for c in flat], [c.token_ids for c in flat], tok.pad_token_id)
    with torch.no_grad():
        logp_BT, _ = token_logprobs(model, packed, temperature)
    for b, c in enumerate(flat):
        torch.testing.assert_close(torch.tensor(c.logprobs), logp_BT[b, :len(c.token_ids)],
                                   atol=1e-4, rtol=0)


def test_top_k_logprobs_are_renormalised_over_the_k_kept_tokens():
    model, tok = make_tiny()
    prompt = prompts_for(tok)[1]
    (c,) = HFEngine(model, tok, autocast="none").generate(
        [prompt], SamplingParams(n=1, temperature=0.5, top_k=3, max_new_tokens=6, seed=0))[0]
    ids = torch.tensor([prompt + c.token_ids])
    with torch.no_grad():
        z_LV = model(input_ids=ids).logits[0].float() / 0.5
    for t, (tok_id, lp) in enumerate(zip(c.token_ids, c.logprobs, strict=True)):
        z = z_LV[len(prompt) - 1 + t]
        top3 = z.topk(3).values
        assert z[tok_id] >= top3[-1]  # sampled from the top 3
        assert lp == pytest.approx(float(z[tok_id] - torch.logsumexp(top3, 0)), abs=1e-4)


def test_seeded_sampling_is_reproducible_and_leaves_global_rng_alone():
    model, tok = make_tiny()
    engine = HFEngine(model, tok, batch_size=5, autocast="none")
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=6, seed=11)
    state = torch.get_rng_state()
    a = engine.generate(prompts_for(tok), params)
    b = engine.generate(prompts_for(tok), params)
    assert torch.equal(torch.get_rng_state(), state)
    assert [[c.token_ids for c in g] for g in a] == [[c.token_ids for c in g] for g in b]
    other = engine.generate(prompts_for(tok), SamplingParams(n=4, temperature=1.0, max_new_tokens=6, seed=12))
    assert [[c.token_ids for c in g] for g in a] != [[c.token_ids for c in g] for g in other]


def test_eos_stops_and_is_kept_length_truncates():
    model, tok = eos_biased_tiny(bias=4.0)
    eos = tok.eos_token_id
    out = HFEngine(model, tok, batch_size=8, autocast="none").generate(
        prompts_for(tok), SamplingParams(n=8, temperature=1.0, max_new_tokens=10, seed=0))
    flat = [c for g in out for c in g]
    stopped = [c for c in flat if c.finish_reason == "stop"]
    truncated = [c for c in flat if c.finish_reason == "length"]
    assert stopped and truncated  # the seed gives both kinds
    for c in stopped:
        assert c.token_ids[-1] == eos and eos not in c.token_ids[:-1]
        assert "<|im_end|>" not in c.text
    for c in truncated:
        assert len(c.token_ids) == 10 and eos not in c.token_ids
    assert len({len(c.token_ids) for c in stopped}) > 1  # padding after early stops was trimmed


def test_extra_eos_ids_from_the_generation_config_stop():
    model, tok = make_tiny()
    model.generation_config.eos_token_id = [tok.eos_token_id, 40]  # e.g. an end-of-turn token
    assert hand_greedy(model, [1, 40], 3) == [40, 40, 40]
    (c,) = HFEngine(model, tok, autocast="none").generate(
        [[1, 40]], SamplingParams(n=1, temperature=0, max_new_tokens=5))[0]
    assert c.token_ids == [40] and c.finish_reason == "stop"


@pytest.mark.parametrize(("stop", "n_tokens"), [(" is", 1), ("s i", 2), ("s is is", 3)])
def test_stop_string_trims_after_the_token_that_completes_it(stop, n_tokens):
    model, tok = make_tiny()
    prompt = [1, *tok.encode("What is")]
    greedy = hand_greedy(model, prompt, 8)
    assert [tok.decode([t]) for t in greedy[:4]] == [" is"] * 4  # " is is is is ..."
    # The prompt ends in "is" too, but only generated text counts. " is" is token 1; "s i" straddles
    # tokens 1-2 (token 2 runs past its end); "s is is" ends with token 3 (" is is is").
    (c,) = HFEngine(model, tok, autocast="none").generate(
        [prompt], SamplingParams(n=1, temperature=0, max_new_tokens=8, stop=(stop,)))[0]
    assert c.token_ids == greedy[:n_tokens]
    assert c.text == " is" * n_tokens and c.finish_reason == "stop"


def test_engine_samples_current_lora_weights_and_restores_state():
    base, _ = make_tiny()
    model, tok = make_tiny()
    policy = load_policy_from(model, tok, LoraConfig(rank=4), beta=0.0)
    engine = build_engine(Config(), EngineContext(policy.model, tok, amp="none"))
    prompt = prompts_for(tok)[0]
    params = SamplingParams(n=1, temperature=0, max_new_tokens=6)
    gen_config = policy.model.generation_config
    policy.model.train()
    assert engine.generate([prompt], params)[0][0].token_ids == hand_greedy(base, prompt, 6)
    assert policy.model.training and policy.model.generation_config is gen_config
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 2.0, generator=torch.Generator().manual_seed(0))
    engine.sync_weights()
    policy.model.eval()
    after = engine.generate([prompt], params)[0][0].token_ids
    assert after == hand_greedy(policy.model, prompt, 6) != hand_greedy(base, prompt, 6)


@pytest.mark.filterwarnings("ignore:autocast=bf16 on a CPU")
def test_bf16_autocast_generates():
    model, tok = make_tiny()
    out = HFEngine(model, tok, autocast="bf16").generate(
        prompts_for(tok), SamplingParams(n=2, temperature=1.0, max_new_tokens=4, seed=0))
    assert all(len(c.token_ids) == 4 for g in out for c in g)


def test_engine_registry_errors():
    """(vLLM missing: tests/test_rollout_vllm_api.py)"""
    model, tok = make_tiny()
    cfg = Config()
    cfg.rollout.engine = "nope"
    with pytest.raises(ValueError, match="valid: hf, vllm"):
        build_engine(cfg, EngineContext(model, tok))


def test_inverse_cdf_draws_each_token_with_its_probability_and_never_a_zero_one():
    from groupo.engines.hf import sample_inverse_cdf

    probs = torch.tensor([[0.5, 0.0, 0.2, 0.3, 0.0], [0.0, 1.0, 3.0, 0.0, 0.0]])  # row 2 unnormalised
    n = 100_000
    with torch.random.fork_rng():
        torch.manual_seed(0)
        draws = torch.cat([sample_inverse_cdf(probs.repeat(n // 10, 1)) for _ in range(10)]).view(-1, 2)
    for row in range(2):
        freq = torch.bincount(draws[:, row], minlength=5).double() / n
        expected = probs[row].double() / probs[row].sum()
        sigma = (expected * (1 - expected) / n).sqrt()
        assert torch.all((freq - expected).abs() <= 5 * sigma + 1e-12), (row, freq, expected)
        assert torch.all(freq[expected == 0] == 0)


def test_inverse_cdf_where_rounding_reaches_the_total_takes_the_last_possible_token(monkeypatch):
    from groupo.engines import hf

    monkeypatch.setattr(hf.torch, "rand", lambda shape, **kw: torch.ones(shape))  # u = the total exactly
    probs = torch.tensor([[0.5, 0.0, 0.2, 0.3, 0.0], [0.25, 0.75, 0.0, 0.0, 0.0]])
    assert hf.sample_inverse_cdf(probs).flatten().tolist() == [3, 1]


def test_frozen_weights_cast_once_give_autocasts_exact_tokens_and_logprobs_and_are_restored(monkeypatch):
    from groupo.config import LoraConfig
    from groupo.engines import hf
    from groupo.models.policy import load_policy_from

    model, tok = make_tiny()
    policy = load_policy_from(model, tok, LoraConfig(rank=4, alpha=8), beta=0.0)
    nonzero_lora(policy.model, 0.1)
    before = {n: (p, p.detach().clone()) for n, p in policy.model.named_parameters()}
    engine = HFEngine(policy.model, tok, batch_size=8, autocast="bf16")
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=6, seed=11)
    prompts = [[1, 5, 6], [1, 7]]
    cast = engine.generate(prompts, params)
    monkeypatch.setattr(hf, "frozen_linear_weights_in", lambda model, dtype: contextlib.nullcontext())
    plain = engine.generate(prompts, params)  # autocast casting the float32 weights at every call
    for g_cast, g_plain in zip(cast, plain, strict=True):
        for a, b in zip(g_cast, g_plain, strict=True):
            assert a.token_ids == b.token_ids and a.logprobs == b.logprobs  # bit for bit
    for n, p in policy.model.named_parameters():
        obj, value = before[n]
        assert p is obj and p.dtype == torch.float32 and torch.equal(p, value), n  # the same objects back
    head = policy.model.get_output_embeddings()
    assert head.weight is policy.model.get_input_embeddings().weight  # still tied


def hand_sample(model, rows, steps, seed, temperature, eos, device=None):
    """Each row decoded alone, without a cache; at every step one float64 uniform per row of the
    batch, in row order, drawn for all rows (the engine's protocol); inverse CDF on each row's
    tempered softmax. `device`: the model's CUDA device, where the engine draws the uniforms too
    (from that device's generator seeded with `seed`); None: the CPU."""
    from groupo.engines.hf import sample_inverse_cdf

    seqs, out, done = [list(r) for r in rows], [[] for _ in rows], [False] * len(rows)
    fork = torch.random.fork_rng(devices=[device], device_type="cuda") if device else torch.random.fork_rng()
    with fork, torch.no_grad():
        torch.manual_seed(seed)
        for _ in range(steps):
            u_B1 = torch.rand((len(rows), 1), device=device, dtype=torch.float64)
            for b, seq in enumerate(seqs):
                if done[b]:
                    continue
                logits = model(input_ids=torch.tensor([seq], device=device)).logits[0, -1].float()
                logp = torch.log_softmax(logits / temperature, -1)
                token = int(sample_inverse_cdf(logp.exp()[None], u_B1[b:b + 1])[0, 0])
                seq.append(token)
                out[b].append((token, float(logp[token])))
                done[b] = token == eos
            if all(done):
                break
    return out


def test_sampling_equals_decoding_each_row_alone_while_finished_rows_leave_the_batch():
    """Rows stop at different lengths (an EOS-biased head). Each row's tokens and log-probs are
    those of decoding it alone with the same uniforms, and the rows forwarded after the shared
    prefix number exactly the tokens produced: a row that stopped is not decoded again."""
    model, tok = eos_biased_tiny(bias=3.0)
    prompts = prompts_for(tok)
    forwarded = []
    hook = model.model.register_forward_pre_hook(lambda m, args, kw: forwarded.append(kw["input_ids"].shape[0]),
                                                 with_kwargs=True)
    out = HFEngine(model, tok, batch_size=12, autocast="none").generate(
        prompts, SamplingParams(n=4, temperature=0.8, max_new_tokens=12, seed=7))
    hook.remove()
    flat = [c for group in out for c in group]
    expected = hand_sample(model, [p for p in prompts for _ in range(4)], 12, 7, 0.8, tok.eos_token_id)
    for c, exp in zip(flat, expected, strict=True):
        assert c.token_ids == [t for t, _ in exp]
        torch.testing.assert_close(torch.tensor(c.logprobs), torch.tensor([lp for _, lp in exp]), atol=1e-5, rtol=0)
    lengths = [len(c.token_ids) for c in flat]
    assert len(set(lengths)) > 2 and max(lengths) == 12  # varied stops, and some ran to the limit
    assert forwarded[0] == len(prompts)  # the shared prefix: each prompt once
    assert sum(forwarded[1:]) == sum(lengths) < len(flat) * max(lengths)

    forwarded.clear()  # drop_finished=False: every row decoded to the end, the same completions
    hook = model.model.register_forward_pre_hook(lambda m, args, kw: forwarded.append(kw["input_ids"].shape[0]),
                                                 with_kwargs=True)
    kept = HFEngine(model, tok, batch_size=12, autocast="none", drop_finished=False).generate(
        prompts, SamplingParams(n=4, temperature=0.8, max_new_tokens=12, seed=7))
    hook.remove()
    assert sum(forwarded[1:]) == len(flat) * max(lengths)
    for c, k in zip(flat, [c for group in kept for c in group], strict=True):
        assert (c.token_ids, c.finish_reason) == (k.token_ids, k.finish_reason)
        torch.testing.assert_close(torch.tensor(c.logprobs), torch.tensor(k.logprobs), atol=1e-5, rtol=0)
