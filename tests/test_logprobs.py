"""The log-prob forward pass: the batch layout, log-probs against an unpadded reference, prompts
encoded once per group (with and without activation checkpointing), the chunked output head."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_models import perturb_lora
from tiny import make_tiny

from groupo.config import LoraConfig
from groupo.models.logprobs import pack, token_logprobs
from groupo.models.policy import load_policy_from


def test_pack_layout_by_hand():
    p = pack([[5, 6, 7], [8]], [[9], [10, 11]], pad_id=0)
    # P = 3 (longest prompt), T = 2 (longest completion); prompts left-, completions right-padded.
    assert p.input_ids_BL.tolist() == [[5, 6, 7, 9, 0], [0, 0, 8, 10, 11]]
    assert p.attention_mask_BL.tolist() == [[1, 1, 1, 1, 0], [0, 0, 1, 1, 1]]
    # positions count real tokens: the second row's first real token (8) is at position 0
    assert p.position_ids_BL.tolist() == [[0, 1, 2, 3, 3], [0, 0, 0, 1, 2]]
    assert p.completion_mask_BT.tolist() == [[1, 0], [1, 1]]
    assert p.completion_ids_BT.tolist() == [[9, 0], [10, 11]]
    assert p.prompt_len == 3


def reference_logprobs(model, prompt, completion, temperature):
    """One unpadded sequence: full forward, log_softmax over every position, gather."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        z = model(input_ids=ids).logits[0].float() / temperature  # (L, V)
    logp_LV = torch.log_softmax(z, -1)
    rows = range(len(prompt) - 1, len(prompt) + len(completion) - 1)
    logp = torch.stack([logp_LV[r, ids[0, r + 1]] for r in rows])
    entropy = torch.stack([-(logp_LV[r].exp() * logp_LV[r]).sum() for r in rows])
    return logp, entropy


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_match_unpadded_reference(temperature):
    model, tok = make_tiny()
    prompts = [[1, 50, 51, 52, 53, 54, 55], [1, 60], [1, 70, 71, 72]]
    completions = [[80, 81], [90, 91, 92, 93, 2], [100]]
    packed = pack(prompts, completions, tok.pad_token_id)
    with torch.no_grad():
        logp_BT, ent_BT = token_logprobs(model, packed, temperature, with_entropy=True)
    assert logp_BT.shape == ent_BT.shape == (3, 5)
    for b, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        ref_logp, ref_ent = reference_logprobs(model, p, c, temperature)
        torch.testing.assert_close(logp_BT[b, :len(c)], ref_logp, atol=1e-5, rtol=0)
        torch.testing.assert_close(ent_BT[b, :len(c)], ref_ent, atol=1e-5, rtol=0)
        assert (logp_BT[b, len(c):] == 0).all() and (ent_BT[b, len(c):] == 0).all()


def test_shared_prompts_match_each_row_on_its_own_in_value_and_gradient():
    """Groups of rows with one prompt (in scrambled order, of several lengths, one prompt alone):
    the shared pass gives each row's unpadded log-probs and entropies, and the same LoRA
    gradient as the plain pass (the prompt's cache is shared, so its gradient is summed)."""
    model, tok = make_tiny()
    with torch.random.fork_rng():  # LoRA's A matrices are drawn from the global generator
        torch.manual_seed(0)
        policy = load_policy_from(model, tok, LoraConfig(rank=4, alpha=8.0), beta=0.0)
    perturb_lora(policy.model)
    prompt_a, prompt_b, prompt_c = [1, 50, 51, 52, 53, 54, 55], [1, 60, 61], [1, 70]
    prompts = [prompt_a, prompt_b, prompt_a, prompt_c, prompt_b, prompt_a]
    completions = [[80, 81], [90, 91, 92, 93, 2], [100], [101, 102, 103], [104, 105], [106, 107, 108]]
    packed = pack(prompts, completions, tok.pad_token_id)
    out = {}
    for share in (True, False):
        policy.model.zero_grad()
        logp_BT, ent_BT = token_logprobs(policy.model, packed, 0.7, with_entropy=True, share_prompts=share)
        (logp_BT * torch.linspace(1, 2, logp_BT.numel()).view_as(logp_BT)).sum().backward()
        grads = [p.grad.clone() for p in policy.trainable_parameters()]
        out[share] = (logp_BT.detach(), ent_BT, grads)
    for b, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        ref_logp, ref_ent = reference_logprobs(policy.model, p, c, 0.7)
        torch.testing.assert_close(out[True][0][b, :len(c)], ref_logp, atol=1e-5, rtol=0)
        torch.testing.assert_close(out[True][1][b, :len(c)], ref_ent, atol=1e-5, rtol=0)
        assert (out[True][0][b, len(c):] == 0).all()
    for g_shared, g_plain in zip(out[True][2], out[False][2], strict=True):
        assert (g_shared - g_plain).norm() <= 1e-4 * g_plain.norm()  # float rounding only (~1e-5)
    assert any(g.abs().sum() > 0 for g in out[True][2])


def test_under_activation_checkpointing_prompts_are_still_encoded_once_with_the_same_values_and_gradients():
    """Checkpointed layers recompute their forward in the backward pass; the shared prompt's keys and
    values are read from a cache the tail pass never writes, so the recomputation sees what the
    forward saw. Log-probs, entropies and LoRA gradients equal those without checkpointing, and the
    prompt pass holds one row per distinct prompt (it is shared, not re-encoded per row)."""
    from groupo.models.logprobs import checkpoint_keeps_cache

    if not checkpoint_keeps_cache():  # older transformers: the plain pass (the next test covers it)
        pytest.skip("this transformers release drops the cache of checkpointed layers")
    model, tok = make_tiny()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        policy = load_policy_from(model, tok, LoraConfig(rank=4, alpha=8.0), beta=0.0)
    perturb_lora(policy.model)
    prompts = [[1, 50, 51, 52, 53], [1, 60, 61], [1, 50, 51, 52, 53], [1, 60, 61], [1, 50, 51, 52, 53]]
    completions = [[80, 81], [90, 91, 92, 2], [100], [101, 102, 103], [104, 105, 106, 107]]
    packed = pack(prompts, completions, tok.pad_token_id)
    inner = policy.model.base_model.model
    rows: list[int] = []  # rows of each model pass, and calls of the first layer's attention
    inner.model.register_forward_pre_hook(lambda m, args, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
    inner.model.layers[0].self_attn.register_forward_pre_hook(lambda m, args: rows.append("attention"))
    out = {}
    policy.model.train()
    for checkpointing in (False, True):
        if checkpointing:
            inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        policy.model.zero_grad()
        rows.clear()
        logp_BT, ent_BT = token_logprobs(policy.model, packed, 0.7, with_entropy=True, share_prompts=True)
        (logp_BT * torch.linspace(1, 2, logp_BT.numel()).view_as(logp_BT)).sum().backward()
        out[checkpointing] = (logp_BT.detach(), ent_BT, [p.grad.clone() for p in policy.trainable_parameters()],
                              list(rows))
    # two distinct prompts once, then the five rows; checkpointed, the tail's layers run again in backward
    assert out[False][3] == [2, "attention", 5, "attention"]
    assert out[True][3] == [2, "attention", 5, "attention", "attention"]
    assert torch.equal(out[True][0], out[False][0]) and torch.equal(out[True][1], out[False][1])
    for g_ckpt, g_plain in zip(out[True][2], out[False][2], strict=True):
        assert (g_ckpt - g_plain).norm() <= 1e-6 * g_plain.norm()
    assert all(g.abs().sum() > 0 for g in out[True][2])
    assert all(not layer.__dict__.get("_can_checkpoint_with_cache") for layer in inner.model.layers)  # restored
    assert all(layer.gradient_checkpointing for layer in inner.model.layers)


def test_where_checkpointed_layers_would_drop_the_cache_the_prompts_are_encoded_per_row(monkeypatch):
    """A transformers release without GradientCheckpointingLayer._can_checkpoint_with_cache drops
    the cache of a checkpointed layer: the shared path must then step aside, not attend to nothing."""
    import groupo.models.logprobs as logprobs

    model, tok = make_tiny()
    policy = load_policy_from(model, tok, LoraConfig(rank=4, alpha=8.0), beta=0.0)
    packed = pack([[1, 50, 51, 52]] * 3, [[80, 81], [90], [91, 92, 93]], tok.pad_token_id)
    policy.model.train()
    want, _ = token_logprobs(policy.model, packed, share_prompts=False)
    policy.model.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    monkeypatch.setattr(logprobs, "checkpoint_keeps_cache", lambda: False)
    shapes: list[tuple[int, int]] = []
    policy.model.base_model.model.model.register_forward_pre_hook(
        lambda m, args, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    got, _ = token_logprobs(policy.model, packed, share_prompts=True)
    # no prompt pass (1 prompt x its first 3 tokens) and no tail (3 x 3): the plain pass (3 rows x 4
    # prompt + 3 completion columns) ...
    assert shapes == [(3, 7)]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)  # ... and the plain pass gave the answer


def test_token_logprobs_gradient_flows_to_real_tokens_only():
    model, tok = make_tiny()
    packed = pack([[1, 50, 51], [1]], [[60], [61, 62]], tok.pad_token_id)
    logp_BT, ent = token_logprobs(model, packed)
    assert ent is None and logp_BT.requires_grad
    logp_BT.sum().backward()
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("share_prompts", [True, False])
def test_chunked_head_gives_the_whole_passes_logprobs_entropy_and_gradients(share_prompts):
    model, tok = make_tiny()  # full fine-tuning, tied embeddings: the head's gradient reaches the embedding
    prompts = [[1, 5, 6, 7]] * 3 + [[1, 8, 9]] * 3
    completions = [[10 + i, 11, 12, 13, 14][: 2 + i % 4] for i in range(6)]
    packed = pack(prompts, completions, tok.pad_token_id)
    results = []
    # whole (B, T, V); 7 (row, position) pairs = one position of 6 rows at a time; 64 = one chunk
    for chunk in (0, 7, 64):
        model.zero_grad()
        logp, ent = token_logprobs(model, packed, 0.8, with_entropy=True, share_prompts=share_prompts, chunk=chunk)
        (logp.sum() + 0.5 * logp[:, 0].sum()).backward()
        results.append((logp.detach(), ent, [p.grad.clone() for p in model.parameters()]))
    (a, ea, ga), *chunked = results
    for b, eb, gb in chunked:
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
        torch.testing.assert_close(eb, ea, atol=1e-5, rtol=0)
        for x, y in zip(ga, gb, strict=True):
            assert (x - y).norm() <= 1e-4 * x.norm() + 1e-7
    head = model.get_output_embeddings()
    assert type(head) is torch.nn.Linear and head.weight is model.get_input_embeddings().weight  # restored, tied


def test_chunked_head_keeps_at_most_one_chunk_of_logits_for_the_backward_pass():
    model, tok = make_tiny()
    V = model.config.vocab_size
    packed = pack([[1, 5, 6]] * 4, [[10, 11, 12, 13, 14, 15]] * 4, tok.pad_token_id)
    B, T = packed.completion_ids_BT.shape
    for chunk, expect_whole in ((0, True), (8, False), (B * T, True)):
        logits: list[int] = []  # sizes of the saved tensors holding vocabulary-wide rows (logits and their kin)

        def pack_hook(t, logits=logits):  # (the head's weight, kept for its own gradient, is not logits)
            if t.dim() >= 2 and t.shape[-1] == V and t.data_ptr() != model.lm_head.weight.data_ptr():
                logits.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda t: t):
            token_logprobs(model, packed, chunk=chunk)
        assert (max(logits, default=0) >= B * T * V) is expect_whole, (chunk, logits, B * T * V)
        if chunk:  # never more than one chunk's (checkpointing keeps none; a batch of one chunk keeps it)
            assert max(logits, default=0) <= chunk * V


def test_token_logprobs_empty_completions():
    model, tok = make_tiny()
    logp_BT, _ = token_logprobs(model, pack([[1, 2]], [[]], tok.pad_token_id))
    assert logp_BT.shape == (1, 0)


def test_trim_drops_all_pad_columns_and_keeps_logprobs():
    from groupo.models.logprobs import trim

    model, tok = make_tiny()
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15]]
    comps = [[20, 21], [22, 23, 24, 25, 26], [27]]
    full = pack(prompts, comps, tok.pad_token_id)
    sub = dataclasses.replace(full, **{f.name: getattr(full, f.name)[1:] for f in dataclasses.fields(full)})
    small = trim(sub)
    # rows 1-2: longest prompt 3 tokens, longest completion 5 -> 3 + 5 columns instead of 6 + 5
    assert small.input_ids_BL.shape == (2, 8) and small.completion_ids_BT.shape == (2, 5)
    with torch.no_grad():
        a, _ = token_logprobs(model, sub)
        b, _ = token_logprobs(model, small)
    torch.testing.assert_close(a[:, :5], b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logp_and_its_written_out_backward_match_autograd_through_log_softmax(dtype, temperature):
    from groupo.models.token_logp import token_logp

    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(13, 301, generator=g) * 4).to(dtype)
    ids = torch.randint(0, 301, (13,), generator=g)
    ids[3] = ids[4]  # rows sharing a token
    weights = torch.randn(13, generator=g)
    results = []
    for written_out in (True, False):
        x = logits.clone().requires_grad_(True)
        if written_out:
            logp, ent = token_logp(x, ids, temperature, with_entropy=True)
        else:  # the reference: autograd through log_softmax, in float32
            full = torch.log_softmax(x.float() / temperature, dim=-1)
            logp, ent = full.gather(-1, ids[:, None])[:, 0], -(full.exp() * full).sum(-1).detach()
        (weights * logp).sum().backward()
        results.append((logp.detach(), ent, x.grad))
    (a, ea, ga), (b, eb, gb) = results
    assert a.dtype == ea.dtype == torch.float32 and ga.dtype == dtype
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(ea, eb, atol=1e-5, rtol=1e-4)  # lse - sum(p z): float32 cancellation
    torch.testing.assert_close(ga.float(), gb.float(), atol=1e-6 if dtype == torch.float32 else 1e-2, rtol=1e-2)
    # by hand for one row: d(w log p(token))/dz = w (onehot - p) / temperature
    p0 = torch.softmax(logits[0].float() / temperature, -1)
    want = -weights[0] * p0 / temperature
    want[ids[0]] += weights[0] / temperature
    torch.testing.assert_close(ga[0].float(), want.to(dtype).float(), atol=1e-6, rtol=1e-2)


def test_token_logp_without_a_gradient_keeps_nothing_and_gives_no_entropy_unasked():
    from groupo.models.token_logp import token_logp

    logits = torch.randn(4, 50)
    saved: list[torch.Size] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        logp, ent = token_logp(logits, torch.tensor([1, 2, 3, 4]))
    assert ent is None and not logp.requires_grad and saved == []
    torch.testing.assert_close(logp, torch.log_softmax(logits, -1)[torch.arange(4), torch.tensor([1, 2, 3, 4])])
