"""Padding-free passes (train.packing): the flat layout by hand, log-probs against each sequence run
alone, and log-probs, the loss and LoRA gradients against the padded pass, with shared prompts,
micro-batches, activation checkpointing, both attention kernels and several architectures."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from test_logprobs import reference_logprobs
from test_models import perturb_lora
from tiny import make_tiny, nonzero_lora

from groupo.algorithms.presets import get_preset
from groupo.config import ConfigError, LoraConfig
from groupo.distributed import Dist
from groupo.models.attention import attention_kernel
from groupo.models.logprobs import pack, token_logprobs
from groupo.models.packed_attention import Segments, allowed
from groupo.models.packing import completion_index, flat_rows
from groupo.models.policy import load_policy_from
from groupo.trainer.passes import batched_logprobs, micro_batches
from groupo.trainer.prepare import PreparedBatch
from groupo.trainer.settings import UpdateSettings
from groupo.trainer.update import accumulate_gradients, reduce_metrics

# three prompts, rows in scrambled order, prompt c of one token; completions of 1 to 5 tokens
PA, PB, PC = [1, 50, 51, 52, 53, 54, 55], [1, 60, 61], [1]
PROMPTS = [PA, PB, PA, PC, PB, PA]
COMPLETIONS = [[80, 81], [90, 91, 92, 93, 2], [100], [101, 102, 103], [104, 105], [106, 107, 108]]


def _policy(model, tok, rank: int = 4):
    with torch.random.fork_rng():  # LoRA's A matrices are drawn from the global generator
        torch.manual_seed(0)
        policy = load_policy_from(model, tok, LoraConfig(rank=rank, alpha=2.0 * rank), beta=0.0)
    perturb_lora(policy.model)
    return policy


def test_flat_rows_by_hand():
    p = pack([[5, 6, 7], [8], [5, 6, 7]], [[9, 10], [11, 12, 13], [14]], pad_id=0)
    # P = 3, T = 3, L = 6; the padded rows: [5 6 7 9 10 0] [0 0 8 11 12 13] [5 6 7 14 0 0]
    prefix, main, keep = flat_rows(p, share_prompts=False)
    assert prefix is None
    # each sequence whole but its last completion token: 5 6 7 9 | 8 11 12 | 5 6 7
    assert p.input_ids_BL.reshape(-1)[main.index_N].tolist() == [5, 6, 7, 9, 8, 11, 12, 5, 6, 7]
    assert main.position_N.tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 1, 2]
    assert main.segments.q_len == (4, 3, 3) and main.segments.prefix_len == ()
    # the outputs that predict completion tokens: at 7, 9 (row 0), 8, 11, 12 (row 1), the last 7 (row 2)
    assert keep.tolist() == [2, 3, 4, 5, 6, 9]
    assert completion_index(p).tolist() == [0, 1, 3, 4, 5, 6]  # (b, t) -> b * 3 + t
    # shared: the distinct prompts but their last tokens (5 6 | nothing), then each completion after its
    # prompt's last token: 7 9 | 8 11 12 | 7, at positions that continue the prompt
    prefix, main, keep = flat_rows(p, share_prompts=True)
    assert p.input_ids_BL.reshape(-1)[prefix.index_N].tolist() == [5, 6]
    assert prefix.position_N.tolist() == [0, 1] and prefix.segments.q_len == (2, 0)
    assert p.input_ids_BL.reshape(-1)[main.index_N].tolist() == [7, 9, 8, 11, 12, 7]
    assert main.position_N.tolist() == [2, 3, 0, 1, 2, 2]
    assert main.segments == Segments((2, 3, 1), (2, 0), (0, 1, 0))
    assert keep.tolist() == list(range(6))
    # no prompt repeated: nothing to share
    assert flat_rows(pack([[5, 6], [7, 8]], [[1], [2]], 0), share_prompts=True)[0] is None


def test_segment_masks_by_hand():
    # 2 queries after a prefix of 2: each sees the prefix and itself and the queries before it
    assert allowed(2, 2, None, "cpu").int().tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    # a window of 2: a key fewer than 2 positions back
    assert allowed(3, 0, 2, "cpu").int().tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    segs = Segments((4, 2))
    assert segs.key_index(own=0) == [0, 1, 2, 3, 4, 5]
    segs = Segments((2, 1), (3, 1), (1, 0))  # after 4 cached keys: prefix pieces [0 1 2] and [3]
    assert segs.key_index(own=4) == [3, 4, 5, 0, 1, 2, 6]


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
@pytest.mark.parametrize("share_prompts", [True, False])
def test_packed_logprobs_equal_each_sequence_alone_and_the_padded_pass_with_its_gradients(kernel, share_prompts):
    model, tok = make_tiny()
    policy = _policy(model, tok)
    packed = pack(PROMPTS, COMPLETIONS, tok.pad_token_id)
    out = {}
    for packing in (False, True):
        policy.model.zero_grad()
        with attention_kernel(policy.model, kernel, packing=packing):
            logp, ent = token_logprobs(policy.model, packed, 0.7, with_entropy=True, share_prompts=share_prompts,
                                       packing=packing)
            (logp * torch.linspace(1, 2, logp.numel()).view_as(logp)).sum().backward()
        out[packing] = (logp.detach(), ent, [p.grad.clone() for p in policy.trainable_parameters()])
    for b, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS, strict=True)):
        want_logp, want_ent = reference_logprobs(policy.model, p, c, 0.7)  # the sequence alone, no padding
        torch.testing.assert_close(out[True][0][b, :len(c)], want_logp, atol=1e-5, rtol=0)
        torch.testing.assert_close(out[True][1][b, :len(c)], want_ent, atol=1e-5, rtol=0)
        assert (out[True][0][b, len(c):] == 0).all() and (out[True][1][b, len(c):] == 0).all()
    for g_packed, g_padded in zip(out[True][2], out[False][2], strict=True):
        assert (g_packed - g_padded).norm() <= 1e-4 * g_padded.norm()
    assert all(g.abs().sum() > 0 for g in out[True][2])
    assert model.config._attn_implementation == "sdpa"  # restored


def test_shared_prompts_are_encoded_once_in_the_packed_pass():
    model, tok = make_tiny()
    packed = pack(PROMPTS, COMPLETIONS, tok.pad_token_id)
    shapes: list[tuple[int, ...]] = []
    model.model.register_forward_pre_hook(lambda m, args, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                          with_kwargs=True)
    with torch.no_grad():
        token_logprobs(model, packed, share_prompts=True, packing=True)
        token_logprobs(model, packed, share_prompts=False, packing=True)
    # shared: prompts a, b, c but their last tokens (6 + 2 + 0), then the 2+5+1+3+2+3 = 16 completion
    # tokens; unshared: every sequence whole but its last token, 8 + 7 + 7 + 3 + 4 + 9 = 38
    assert shapes == [(1, 8), (1, 16), (1, 38)]


def test_under_activation_checkpointing_the_packed_pass_keeps_values_and_gradients():
    model, tok = make_tiny()
    policy = _policy(model, tok)
    packed = pack(PROMPTS, COMPLETIONS, tok.pad_token_id)
    inner = policy.model.base_model.model
    policy.model.train()
    out = {}
    for checkpointing in (False, True):
        if checkpointing:
            inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        policy.model.zero_grad()
        with attention_kernel(policy.model, "sdpa", packing=True):  # held through the backward's recomputation
            logp, _ = token_logprobs(policy.model, packed, packing=True)
            (logp * torch.linspace(1, 2, logp.numel()).view_as(logp)).sum().backward()
        out[checkpointing] = (logp.detach(), [p.grad.clone() for p in policy.trainable_parameters()])
    torch.testing.assert_close(out[True][0], out[False][0], atol=1e-6, rtol=0)
    for a, b in zip(out[True][1], out[False][1], strict=True):
        assert (a - b).norm() <= 1e-5 * b.norm()
    # without the kernel held, the recomputation would attend across sequences: refused
    with pytest.raises(RuntimeError, match="attention_kernel"):
        token_logprobs(policy.model, packed, packing=True)


def _batch(policy, tok, settings):
    prompts = [[5, 6, 7], [5, 6, 7], [8, 9], [8, 9], [20, 21, 22, 23], [20, 21, 22, 23], [30], [30]]
    comps = [[10, 11, 12], [13], [14, 15], [16, 17, 18, 19, 2], [40, 41], [42], [43, 44, 45], [46, 47]]
    packed = pack(prompts, comps, tok.pad_token_id)
    mask = packed.completion_mask_BT.float()
    g = torch.Generator().manual_seed(3)
    old = batched_logprobs(policy.model, packed, settings) + 0.05 * torch.randn(mask.shape, generator=g)
    with policy.reference() as ref_model:
        ref = batched_logprobs(ref_model, packed, settings)
    return PreparedBatch(packed=packed, adv_B=torch.randn(8, generator=g), mask_BT=mask, old_logp_BT=old,
                         ref_logp_BT=ref)


@pytest.mark.parametrize("preset", ["grpo", "dapo", "gspo"])
def test_packed_update_has_the_padded_loss_metrics_and_gradients(preset):
    """accumulate_gradients, padded against packed, over micro-batches by rows and by tokens, both kernels,
    the old and reference log-probs of the packed no-grad passes equal to the padded ones too."""
    torch.manual_seed(0)
    model, tok = make_tiny()
    policy = load_policy_from(model, tok, LoraConfig(rank=4, alpha=8), beta=0.04)
    nonzero_lora(policy.model, 0.05)
    s = UpdateSettings(loss=get_preset(preset).with_overrides(beta=0.04), temperature=0.9, micro_batch_size=8,
                       max_len=5)
    batch = _batch(policy, tok, s)
    torch.testing.assert_close(batched_logprobs(policy.model, batch.packed, replace(s, packing=True)),
                               batched_logprobs(policy.model, batch.packed, s), atol=1e-5, rtol=0)

    def run(**over):
        policy.model.zero_grad(set_to_none=True)
        m = reduce_metrics(accumulate_gradients(policy.model, batch, replace(s, **over)), Dist())
        return m, {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.grad is not None}

    padded = run()
    # with an entropy bonus (its gradient goes through the entropy) on the highest-entropy half of the tokens
    bonus = {"loss": s.loss.with_overrides(entropy_coef=0.01, top_entropy_quantile=0.5)}
    padded_bonus = run(**bonus)
    for over in ({"micro_batch_size": 8}, {"micro_batch_size": 3}, {"micro_batch_tokens": 14},
                 {"attention": "eager", "micro_batch_size": 4}, bonus):
        got, got_g = run(packing=True, **over)
        want, want_g = padded_bonus if over is bonus else padded
        for k in ("loss", "kl", "entropy", "ratio_mean", "ratio_min", "ratio_max"):
            assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), (over, k)
        assert got_g.keys() == want_g.keys() and want_g
        for n in want_g:
            torch.testing.assert_close(got_g[n], want_g[n], rtol=1e-4, atol=1e-6)


def test_micro_batches_by_token_budget_count_real_tokens_when_packing():
    prompts = [[5, 6, 7], [8, 9], [20, 21, 22, 23], [30]] * 2  # lengths 3 2 4 1 3 2 4 1
    comps = [[10, 11, 12], [13], [14, 15], [16, 17, 18, 19], [40, 41], [42], [43, 44, 45], [46, 47]]  # 3 1 2 4 2 1 3 2
    packed = pack(prompts, comps, 0)
    # rows cost 6 3 6 5 5 3 7 3 real tokens; by hand, consecutive sums within 12: 6+3 (then 15), 6+5 (16),
    # 5+3 (15), 7+3
    got = micro_batches(packed, 16, tokens=12, packing=True)
    assert [(sl.start, sl.stop) for sl in got] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    # padded, rows 0-1 cost 2 x (3 + 3) = 12 and row 2 alone 6 <= 12 but rows 2-3 cost 2 x (4 + 4) = 16
    assert [(sl.start, sl.stop) for sl in micro_batches(packed, 16, tokens=12)][:3] == [(0, 2), (2, 3), (3, 4)]


def _tiny_arch(kind: str):
    """A two- or three-layer random model of another architecture (no download), float32, eval mode."""
    import transformers as tf

    _, tok = make_tiny()
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tok.pad_token_id)
    if kind == "qwen2":  # biases on q/k/v
        cfg, cls = tf.Qwen2Config(num_hidden_layers=2, **common), tf.Qwen2ForCausalLM
    elif kind == "mistral":  # every layer a sliding window of 3: shorter than the sequences
        cfg, cls = tf.MistralConfig(num_hidden_layers=2, sliding_window=3, **common), tf.MistralForCausalLM
    elif kind == "gemma3":  # sliding (window 3) and full layers, q/k norms, its own scaling
        cfg = tf.Gemma3TextConfig(num_hidden_layers=3, head_dim=16, sliding_window=3,
                                  layer_types=["sliding_attention", "sliding_attention", "full_attention"], **common)
        cls = tf.Gemma3ForCausalLM
    else:  # phi3: fused qkv and gate_up projections
        cfg, cls = tf.Phi3Config(num_hidden_layers=2, **common), tf.Phi3ForCausalLM
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = cls(cfg)
    return model.eval(), tok


@pytest.mark.parametrize("kind", ["qwen2", "mistral", "gemma3", "phi3"])
@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
def test_other_architectures_give_each_sequence_its_own_logprobs_and_the_padded_gradients(kind, kernel):
    model, tok = _tiny_arch(kind)
    model.config._attn_implementation = {"": kernel}  # the reference runs this kernel too
    prompts = [[1, 50, 51, 52, 53], [1, 60], [1, 50, 51, 52, 53], [1, 60]]
    comps = [[80, 81, 82, 83, 84, 85], [90, 91], [100, 101, 102], [103, 104, 105, 106, 107]]
    packed = pack(prompts, comps, tok.pad_token_id)
    out = {}
    for packing in (False, True):
        model.zero_grad()
        with attention_kernel(model, kernel, packing=packing):
            logp, _ = token_logprobs(model, packed, packing=packing)
            logp.sum().backward()
        out[packing] = (logp.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None])
    for b, (p, c) in enumerate(zip(prompts, comps, strict=True)):
        want, _ = reference_logprobs(model, p, c, 1.0)
        torch.testing.assert_close(out[True][0][b, :len(c)], want, atol=1e-5, rtol=0)
    for a, b in zip(out[True][1], out[False][1], strict=True):
        assert (a - b).norm() <= 1e-4 * b.norm() + 1e-8


def test_a_model_with_other_than_attention_layers_is_refused_in_one_line():
    model, tok = make_tiny()
    model.config.layer_types = ["full_attention", "linear_attention"]
    with pytest.raises(ConfigError, match="linear_attention") as e:
        token_logprobs(model, pack([[1, 2]], [[3, 4]], tok.pad_token_id), packing=True)
    assert "\n" not in str(e.value)


def test_a_layer_that_attends_without_the_packed_kernel_is_caught():
    """A layer whose attention does not dispatch through transformers' functions would attend across
    the flat row's sequences and give wrong numbers silently: the pass counts the layers that used it."""
    import copy

    model, tok = make_tiny()
    model.model.layers[1].self_attn.config = copy.deepcopy(model.config)  # keeps "sdpa" when the model switches
    with pytest.raises(RuntimeError, match="1 of the model's 2 layers"):
        token_logprobs(model, pack(PROMPTS, COMPLETIONS, tok.pad_token_id), packing=True)


def test_training_with_packing_gives_the_padded_runs_metrics_and_weights(tmp_path):
    """Two real steps of the trainer each way, from the same start and seed: the samples are the same
    (generation does not pack), so losses, gradient norms and the final LoRA weights agree to rounding."""
    import json

    from test_trainer import _final_weights, _overrides

    from groupo.config import load_config
    from groupo.trainer.loop import train

    runs = {}
    for packing in (False, True):
        # stop strings cut some completions short: rows of several lengths (max 12, mean ~11)
        cfg = load_config(None, _overrides(tmp_path, 2, **{"train.packing": str(packing).lower(),
                                                            "algorithm.beta": 0.04, "task.eval_size": 1,
                                                            "rollout.stop": '["1", "5"]',
                                                            "rollout.max_new_tokens": 12}))
        run = tmp_path / f"run-{packing}"
        torch.manual_seed(0)  # LoRA's A matrices: the same start
        train(cfg, run, policy=load_policy_from(*make_tiny(), cfg.lora, beta=0.04))
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        runs[packing] = (rows, _final_weights(run))
    (padded, w_padded), (packed, w_packed) = runs[False], runs[True]
    assert any(r["completion/len_mean"] < r["completion/len_max"] for r in padded)
    for a, b in zip(padded, packed, strict=True):
        assert a["completion/len_mean"] == b["completion/len_mean"]
        for k in ("loss/total", "loss/kl", "optim/grad_norm", "loss/entropy"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-7), k
    for n in w_padded:
        torch.testing.assert_close(w_packed[n], w_padded[n], rtol=1e-4, atol=1e-6)


def _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale, window_size, enable_gqa):
    """Variable-length attention written out (flash-attention's semantics): segment i is rows
    cu_q[i]:cu_q[i+1] of q (N, H, D) against rows cu_k[i]:cu_k[i+1] of k and v (M, Hkv, D), causal
    aligned bottom-right, keys at most window_size[0] positions back (-1: any)."""
    outs = []
    for i in range(len(cu_q) - 1):
        qi = q[cu_q[i]:cu_q[i + 1]].transpose(0, 1)
        ki, vi = (x[cu_k[i]:cu_k[i + 1]].transpose(0, 1).repeat_interleave(q.shape[1] // k.shape[1], 0)
                  for x in (k, v))
        n, m = qi.shape[1], ki.shape[1]
        q_pos, k_pos = torch.arange(n)[:, None] + (m - n), torch.arange(m)[None, :]
        ok = (k_pos <= q_pos) & ((q_pos - k_pos <= window_size[0]) if window_size[0] >= 0 else True)
        outs.append(torch.nn.functional.scaled_dot_product_attention(qi, ki, vi, attn_mask=ok, scale=scale)
                    .transpose(0, 1))
    return torch.cat(outs)


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_the_variable_length_layout_of_cuda_gives_the_padded_logprobs(monkeypatch, kind):
    """On CUDA one variable-length call does every segment: its gathered keys and cumulative lengths,
    run here through a written-out variable-length attention, give the padded pass's log-probs, with
    shared prompts (Llama) and a sliding window of 3 (Mistral)."""
    import groupo.models.packed_attention as pa

    model, tok = make_tiny() if kind == "llama" else _tiny_arch("mistral")
    packed = pack(PROMPTS, COMPLETIONS, tok.pad_token_id)
    with torch.no_grad():
        want, _ = token_logprobs(model, packed)
        calls = []
        monkeypatch.setattr(pa, "_use_varlen", lambda query: True)
        monkeypatch.setattr(pa, "_varlen", lambda: lambda *a, **kw: calls.append(1) or _reference_varlen(*a, **kw))
        got, _ = token_logprobs(model, packed, packing=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # Llama: the prompts' pass, then the tails'; Mistral: its sliding-window cache cannot be shared, so
    # whole sequences in one pass (no prefix pass is run only to be thrown away: models.logprobs)
    assert len(calls) == (2 if kind == "llama" else 1) * model.config.num_hidden_layers
