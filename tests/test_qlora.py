"""QLoRA (model.quantization): a tiny model's base loaded through bitsandbytes, checked against a
float model holding bitsandbytes' own dequantization of the same weights, PEFT's own loading, and
plain transformers loading the export. Needs the qlora extra (`pip install -e '.[qlora]'`); .ci/run
installs it and runs this file; without it these tests are skipped, but the one-line error is not."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from test_export_chat import _plain_greedy
from test_trainer import REWARD_FILE, _final_weights
from tiny import nonzero_lora, save_tiny

from groupo.config import ConfigError, LoraConfig, ModelConfig, load_config
from groupo.engines.hf import HFEngine
from groupo.models.load import load_model
from groupo.models.logprobs import pack, token_logprobs
from groupo.models.policy import load_policy, load_trained
from groupo.models.quantization import weight_bytes
from groupo.trainer.loop import train
from groupo.types import SamplingParams

IDS = torch.tensor([[1, 20, 21, 22, 23, 24, 25], [1, 30, 31, 32, 33, 34, 35]])
needs_bnb = pytest.mark.skipif(not __import__("importlib").util.find_spec("bitsandbytes"),
                               reason="bitsandbytes is not installed (pip install -e '.[qlora]'; .ci/run does)")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("qlora") / "model", arch="qwen2")


def _dequantized_copy(quantized, folder: Path):
    """The float32 model in `folder` with every linear layer that `quantized` holds quantized given
    bitsandbytes' own dequantization of that layer's weight, built without groupo's code."""
    import bitsandbytes.functional as F
    from bitsandbytes.nn import Linear4bit, Linear8bitLt
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        for name, m in quantized.named_modules():
            if isinstance(m, Linear4bit):
                w = F.dequantize_4bit(m.weight.data, m.weight.quant_state)
            elif isinstance(m, Linear8bitLt):  # int8 rows with one absmax each (SCB): w = q * SCB / 127
                w = m.weight.data.float() * m.weight.SCB[:, None] / 127
            else:
                continue
            model.get_submodule(name.replace(".base_layer", "")).weight.copy_(w.float())  # (a peft-wrapped layer)
    return model


@needs_bnb
@pytest.mark.parametrize("kind", ["nf4", "fp4", "int8"])
def test_a_quantized_base_computes_its_dequantized_weights(tiny_dir, kind):
    from bitsandbytes.nn import Linear4bit, Linear8bitLt

    model, _ = load_model(str(tiny_dir), quantization=kind)  # compute "none": float32
    layer = Linear8bitLt if kind == "int8" else Linear4bit
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert all(isinstance(model.get_submodule(n), layer) for n in linear if n != "lm_head")
    assert type(model.lm_head) is torch.nn.Linear and model.model.embed_tokens.weight.dtype == torch.float32
    # what `groupo plan` prices: the quantized layers' bytes as bitsandbytes stores them
    quantized = [model.get_submodule(n) for n in linear if n != "lm_head"]
    numel = sum(m.in_features * m.out_features for m in quantized)
    scales = sum(m.out_features * 4 for m in quantized) if kind == "int8" else 0  # a float32 scale per row
    stored = sum(t.numel() * t.element_size() for m in quantized for t in _stored(m))
    assert stored == weight_bytes(numel, kind, 4) + scales
    want = _dequantized_copy(model, tiny_dir)(input_ids=IDS).logits
    got = model(input_ids=IDS).logits
    # 4-bit with float32 compute: the same numbers as the dequantized weights; int8 also rounds the
    # matmul's inputs to 8 bits per row (LLM.int8), so it is only close
    torch.testing.assert_close(got, want, atol=5e-2 if kind == "int8" else 1e-5, rtol=0)


def _stored(m):
    """The tensors a quantized layer's weight is kept in: packed weights and their scales."""
    if hasattr(m.weight, "quant_state"):
        return [m.weight.data, m.weight.quant_state.absmax]
    return [m.weight.data, m.weight.SCB]


@needs_bnb
@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_qlora_samples_with_the_trainers_logprobs_and_then_trains_with_the_dequantized_bases_gradients(tiny_dir, kind):
    """Generation first (an eval-mode pass without autograd, after which bitsandbytes' CPU kernel
    would otherwise take over the 4-bit layers: groupo.models.quantization.keep_training_kernels),
    then the update's gradients: those of a float model holding the dequantized weights and the same
    adapter (PEFT on plain layers), and the reference is the quantized base with the adapter off."""
    from peft import get_peft_model

    policy = load_policy(ModelConfig(name=str(tiny_dir), quantization=kind, autocast="none"),
                         LoraConfig(rank=4, alpha=8.0, target_modules=["all-linear"]), beta=0.04)
    nonzero_lora(policy.model, 0.1)
    trainable = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in policy.trainable_parameters())
    with policy.model.disable_adapter():
        float_base = _dequantized_copy(policy.model.get_base_model(), tiny_dir)
    with policy.reference() as ref:  # the quantized base with the adapter off
        torch.testing.assert_close(ref(input_ids=IDS).logits, float_base(input_ids=IDS).logits,
                                   atol=1e-5 if kind == "nf4" else 5e-2, rtol=0)
    # the HF engine samples from the quantized policy (eval mode, no autograd)
    engine = HFEngine(policy.model, policy.tokenizer, autocast="none")
    flat = [c for g in engine.generate([[1, 20, 21, 22], [1, 30, 31]],
                                       SamplingParams(n=3, temperature=1.0, max_new_tokens=6, seed=0)) for c in g]
    packed = pack([c.prompt_ids for c in flat], [c.token_ids for c in flat], policy.tokenizer.pad_token_id)
    policy.model.train()
    logp_BT, _ = token_logprobs(policy.model, packed, 1.0)
    # nf4: the trainer's numbers; int8 on a CPU: bitsandbytes rounds the inputs of eval-mode matmuls to
    # 8 bits (LLM.int8) but trains on the dequantized weights, so the engine's differ by that rounding
    for b, c in enumerate(flat):
        torch.testing.assert_close(torch.tensor(c.logprobs), logp_BT[b, :len(c.token_ids)].detach(),
                                   atol=1e-4 if kind == "nf4" else 5e-2, rtol=0)
    # the same loss through a float base with the same adapter weights: the same gradients
    reference = get_peft_model(float_base, policy.model.peft_config["default"]).train()
    reference.load_state_dict({n: p for n, p in policy.model.state_dict().items() if "lora_" in n}, strict=False)
    want_BT, _ = token_logprobs(reference, packed, 1.0)
    torch.testing.assert_close(logp_BT, want_BT, atol=1e-5, rtol=0)
    (-(logp_BT * packed.completion_mask_BT).sum()).backward()
    (-(want_BT * packed.completion_mask_BT).sum()).backward()
    got = {n: p.grad for n, p in policy.model.named_parameters() if p.requires_grad}
    want = {n: p.grad for n, p in reference.named_parameters() if p.requires_grad}
    assert got.keys() == want.keys()
    for n in got:
        torch.testing.assert_close(got[n], want[n], atol=1e-5, rtol=1e-4, msg=n)


@needs_bnb
@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("share_prompts", [True, False])
def test_the_planner_counts_the_dequantizations_bitsandbytes_runs(tiny_dir, checkpointing, share_prompts):
    """`groupo plan` prices a quantized base by the dequantizations its passes run
    (groupo.plan.trace.quantized_base, on a fake unquantized model): per weight shape, forward and
    backward apart, the same number as bitsandbytes' own ops in the trainer's update of the
    quantized model, with and without shared prompts and checkpointing (whose recomputation stops
    early)."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import AutoConfig

    from groupo.plan.trace import fake_mode, fake_model, update_pass

    class BnbOps(TorchDispatchMode):  # bitsandbytes' fused 4-bit matmul (forward) and dequantize (backward)
        def __init__(self):
            super().__init__()
            self.calls = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.name().startswith("bitsandbytes::"):
                shape = next(a for a in args if isinstance(a, (list, tuple, torch.Size)))
                self.calls[(*shape, func.name() == "bitsandbytes::dequantize_4bit")] += 1
            return func(*args, **(kwargs or {}))

    lora = LoraConfig(rank=4)
    policy = load_policy(ModelConfig(name=str(tiny_dir), quantization="nf4", autocast="none",
                                     gradient_checkpointing=checkpointing), lora, beta=0.0)
    policy.model.train()
    packed = pack([[1, 20, 21, 22]] * 3 + [[1, 30, 31, 32]] * 3, [[5, 6, 7, 8, 9]] * 6, policy.tokenizer.pad_token_id)
    ops = BnbOps()
    with ops:
        logp_BT, _ = token_logprobs(policy.model, packed, 1.0, with_entropy=True, share_prompts=share_prompts)
        logp_BT.sum().backward()
    mode = fake_mode()
    fake = fake_model(AutoConfig.from_pretrained(tiny_dir), torch.float32, "cpu", mode, lora, checkpointing)
    with mode:
        traced = update_pass(fake, 6, 3, 4, 5, None, "cpu", share_prompts=share_prompts, quantized=True)
    assert ops.calls and traced.dequantized == ops.calls


@needs_bnb
@pytest.mark.long  # three short runs and a second process: ~20 s
def test_a_qlora_run_resumes_exactly_and_exports_a_merged_model_on_the_dequantized_base(tiny_dir, tmp_path):
    (tmp_path / "reward.py").write_text(REWARD_FILE)
    settings = {"model.name": str(tiny_dir), "model.quantization": "nf4", "model.autocast": "none",
                "lora.rank": 4, "lora.alpha": 8, "lora.target_modules": "[all-linear]", "task.difficulty": 1,
                "task.eval_size": 2, "task.prompt_style": "plain", "rollout.group_size": 4, "rollout.max_new_tokens": 4,
                "train.prompts_per_step": 2, "train.save_every": 1, "train.lr": 3e-2, "algorithm.beta": 0.04,
                "run.progress": "plain", "run.device": "cpu", "run.tensorboard": "false",
                "rewards.funcs": json.dumps({f"{tmp_path / 'reward.py'}:digit_share": 1.0})}
    cfg = lambda steps: load_config(None, [f"{k}={v}" for k, v in {**settings, "train.steps": steps}.items()])
    run, resumed = tmp_path / "run", tmp_path / "resumed"
    train(cfg(2), run)
    train(cfg(1), resumed)
    train(cfg(2), resumed, resume=True)  # the base quantized again, the checkpoint's adapter: the same run
    a, b = _final_weights(run), _final_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((run / "final" / "groupo_model.json").read_text())["quantization"] == "nf4"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["rollout/logprob_mismatch"] < 1e-4 for r in rows)

    from groupo.cli import main

    out = tmp_path / "exported"
    assert main(["export", str(run), str(out)]) == 0
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    policy, _ = load_trained(run)  # the run's policy: the nf4 base and its adapter, float32 compute
    assert policy.get_base_model().is_loaded_in_4bit
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=IDS).logits, policy(input_ids=IDS).logits, atol=1e-4, rtol=0)
    greedy = _plain_greedy(out)  # and plain transformers without groupo loads and runs it
    assert greedy["dtype"] == "torch.float32" and len(greedy["tokens"]) == 3


def test_without_bitsandbytes_quantization_is_one_line_naming_the_extra(tiny_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if it were not installed
    with pytest.raises(ConfigError) as e:
        load_model(str(tiny_dir), quantization="nf4")
    assert str(e.value) == ("model.quantization = 'nf4' needs bitsandbytes: pip install 'groupo[qlora]' "
                            "(bitsandbytes)")


def test_a_gguf_file_cannot_be_quantized_again(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match="needs a Hugging Face model folder, not the GGUF file"):
        load_model(str(gguf), quantization="nf4")


def test_quantized_bytes_by_hand():
    assert weight_bytes(4096, "none", 4) == 16384
    assert weight_bytes(4096, "int8", 4) == 4096
    assert weight_bytes(4096, "nf4", 4) == weight_bytes(4096, "fp4", 2) == 2048 + 64 * 4  # 64 blocks of 64
