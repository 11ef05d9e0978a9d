"""Model loading, LoRA, the reference policy, save/load (the log-prob forward pass: test_logprobs.py)."""

from __future__ import annotations

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
    assert meta == {"kind": "lora" if rank else "full", "base_model": str(base.resolve()), "quantization": "none"}
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
