"""LoRA targets (groupo/models/targets.py), variants and adapters in (lora.init_from), checked against
PEFT's own resolution and loading and against the variants' formulas written out."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tiny import ARCHS, make_tiny, nonzero_lora, save_tiny

from groupo.cli import main
from groupo.config import ConfigError, LoraConfig, load_config
from groupo.config_rules import validate
from groupo.models.lora import apply_lora
from groupo.models.policy import load_policy_from
from groupo.models.targets import Targets, resolve_targets

IDS = torch.tensor([[1, 20, 21, 22, 23, 24], [1, 30, 31, 32, 33, 34]])

# What each group holds, written out from the architectures' modelling code (transformers 5).
ATTENTION = {"phi3": {"qkv_proj", "o_proj"}}
MLP = {"phi3": {"gate_up_proj", "down_proj"}, "qwen3_moe": set()}


@pytest.mark.parametrize("arch", ARCHS)
def test_groups_resolve_per_architecture_and_all_linear_is_peft_s(arch):
    model, _ = make_tiny(arch=arch)
    resolve = lambda *g: resolve_targets(model, list(g))
    assert set(resolve("attention").modules) == ATTENTION.get(arch, {"q_proj", "k_proj", "v_proj", "o_proj"})
    assert set(resolve("mlp").modules) == MLP.get(arch, {"gate_proj", "up_proj", "down_proj"})
    assert resolve("all-linear") == Targets("all-linear", ())  # PEFT resolves the word itself
    # attention + mlp adapt what PEFT's all-linear does, module by module (on a mixture of experts,
    # all but the router, which PEFT's all-linear adapts as it was a linear layer before transformers 5)
    adapted = lambda cfg: {n.removesuffix(".lora_A") for n, _ in apply_lora(make_tiny(arch=arch)[0], cfg)
                           .named_modules() if n.endswith("lora_A")}
    ours = adapted(LoraConfig(rank=2, target_modules=["attention", "mlp"]))
    peft = adapted(LoraConfig(rank=2, target_modules=["all-linear"]))
    router = {n for n in peft if n.endswith(".mlp.gate")}
    assert ours == peft - router and len(ours) >= 8
    assert bool(router) == (arch == "qwen3_moe")


def test_mlp_of_a_mixture_of_experts_adapts_the_fused_expert_weights():
    model, _ = make_tiny(arch="qwen3_moe")
    targets = resolve_targets(model, ["mlp"])
    assert targets.parameters == ("mlp.experts.down_proj", "mlp.experts.gate_up_proj") and not targets.modules
    peft_model = apply_lora(model, LoraConfig(rank=2, alpha=4.0, target_modules=["attention", "mlp"]))
    nonzero_lora(peft_model, 0.1)
    logits = peft_model(input_ids=IDS).logits
    logits.sum().backward()
    expert_grads = [p.grad for n, p in peft_model.named_parameters() if "experts" in n and p.requires_grad]
    assert len(expert_grads) == 2 * 2 * 2 and all(g is not None and g.abs().sum() > 0 for g in expert_grads)
    with torch.no_grad(), peft_model.disable_adapter():
        assert (peft_model(input_ids=IDS).logits - logits).abs().max() > 1e-3  # the experts' adapters act


def test_a_name_that_is_not_a_module_is_one_line_naming_the_models_layers():
    model, _ = make_tiny(arch="phi3")
    with pytest.raises(ConfigError) as e:
        resolve_targets(model, ["q_proj", "v_proj"])
    assert "'q_proj' is not a module" in str(e.value) and "qkv_proj" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="is a Phi3Attention, not a linear layer"):
        resolve_targets(model, ["self_attn"])


def test_the_command_line_exits_2_with_that_line(tmp_path, capsys):
    model_dir = save_tiny(tmp_path / "phi3", arch="phi3")
    code = main(["train", f"model.name={model_dir}", "lora.target_modules=[q_proj]", "task.eval_size=1",
                 f"run.dir={tmp_path / 'run'}", "run.progress=off", "run.device=cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("groupo: error: lora.target_modules: 'q_proj' is not a module"), err
    assert not any("Traceback" in line for line in err)


def _linear(peft_model, path="model.layers.0.self_attn.q_proj"):
    return peft_model.get_submodule(f"base_model.model.{path}")


@pytest.mark.parametrize("variant", ["lora", "rslora", "dora"])
def test_variants_compute_their_formulas(variant):
    """One adapted layer's output against the variant's formula, written out: W x + s B A x with
    s = alpha / r (LoRA) or alpha / sqrt(r) (rsLoRA, arXiv 2312.03732); DoRA (arXiv 2402.09353):
    m * (W + s B A) x / ||W + s B A||, the norm of each output row (PEFT's orientation)."""
    torch.manual_seed(0)
    model, tok = make_tiny()
    policy = load_policy_from(model, tok, LoraConfig(rank=4, alpha=8.0, variant=variant), beta=0.0)
    nonzero_lora(policy.model, 0.2)
    layer = _linear(policy.model)
    W, A, B = layer.base_layer.weight, layer.lora_A["default"].weight, layer.lora_B["default"].weight
    s = 8.0 / (math.sqrt(4) if variant == "rslora" else 4)
    x = torch.randn(3, W.shape[1])
    merged = W + s * B @ A
    if variant == "dora":
        m = layer.lora_magnitude_vector["default"].weight
        assert torch.allclose(m, W.norm(dim=1))  # DoRA starts with the base's own row norms
        with torch.no_grad():
            m.mul_(torch.linspace(0.5, 1.5, len(m)))  # a magnitude that moved
        want = x @ (m[:, None] * merged / merged.norm(dim=1, keepdim=True)).T
    else:
        want = x @ merged.T
    torch.testing.assert_close(layer(x), want, atol=1e-5, rtol=1e-5)
    with policy.reference() as ref:  # the reference policy: the base alone
        torch.testing.assert_close(ref.get_submodule("base_model.model.model.layers.0.self_attn.q_proj")(x), x @ W.T)


def _peft_adapter(tmp_path: Path, **kw) -> Path:
    """An adapter saved by PEFT itself (as an SFT run would leave one), B drawn so it is not a no-op."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    model, _ = make_tiny()
    torch.manual_seed(3)
    settings = {"r": 8, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"], "use_rslora": True, **kw}
    peft_model = get_peft_model(model, PeftLoraConfig(**settings))
    nonzero_lora(peft_model, 0.3)
    out = tmp_path / "sft-adapter"
    peft_model.save_pretrained(out)
    return out


def test_init_from_takes_the_adapters_settings_and_weights_and_keeps_the_base_as_reference(tmp_path):
    from peft import PeftModel

    adapter = _peft_adapter(tmp_path)
    cfg = load_config(None, [f"lora.init_from={adapter}"])
    validate(cfg)
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.target_modules, cfg.lora.variant) == (
        8, 4.0, ["q_proj", "v_proj"], "rslora")
    model, tok = make_tiny()
    policy = load_policy_from(model, tok, cfg.lora, beta=0.04)
    trainable = {n for n, p in policy.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in policy.trainable_parameters())
    # the same outputs as PEFT's own loading of the folder, and the base alone as the reference
    want = PeftModel.from_pretrained(make_tiny()[0], adapter).eval()
    with torch.no_grad():
        torch.testing.assert_close(policy.model(input_ids=IDS).logits, want(input_ids=IDS).logits, atol=0, rtol=0)
        with policy.reference() as ref:
            torch.testing.assert_close(ref(input_ids=IDS).logits, make_tiny()[0](input_ids=IDS).logits)
        assert (policy.model(input_ids=IDS).logits - make_tiny()[0](input_ids=IDS).logits).abs().max() > 1e-3


def test_init_from_conflicts_and_bad_folders_are_one_line(tmp_path):
    adapter = _peft_adapter(tmp_path)
    cases = {
        (f"lora.init_from={adapter}", "lora.rank=4"): "lora.rank = 4 conflicts with the adapter of lora.init_from (8)",
        (f"lora.init_from={adapter}", "lora.variant=dora"): "lora.variant = 'dora' conflicts",
        (f"lora.init_from={tmp_path}",): "no adapter_config.json there",
        (f"lora.init_from={adapter}", "lora.rank=0"): "lora.rank = 0 is full fine-tuning",
    }
    for overrides, message in cases.items():
        with pytest.raises(ConfigError) as e:
            validate(load_config(None, list(overrides)))
        assert message in str(e.value) and "\n" not in str(e.value), overrides
    # values that agree with the adapter's (the targets in another order) are no conflict
    cfg = load_config(None, [f"lora.init_from={adapter}", "lora.rank=8", "lora.target_modules=[v_proj, q_proj]"])
    validate(cfg)
    # an adapter of another model
    other = tmp_path / "other"
    other.mkdir()
    cfg_json = json.loads((adapter / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**cfg_json, "target_modules": ["qkv_proj"]}))
    (other / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes())
    with pytest.raises(ConfigError, match="does not fit LlamaForCausalLM"):
        load_policy_from(*make_tiny(), LoraConfig(rank=8, alpha=4.0, init_from=str(other)), beta=0.0)


def test_keys_that_cannot_go_together_are_one_line():
    cases = {
        ("model.quantization=nf4", "lora.rank=0"): "full fine-tuning (lora.rank = 0) cannot update",
        ("model.quantization=nf4", "train.parallel=fsdp2"): "beside train.parallel = 'ddp' only",
        ("model.quantization=int8", "rollout.engine=vllm"): "to nf4 only",
        ("lora.variant=dora", "rollout.engine=vllm"): "vLLM serves plain LoRA adapters only",
        ("lora.variant=vera",): "expected one of 'lora', 'rslora', 'dora'",
        ("model.quantization=nf8",): "expected one of 'none', 'nf4', 'fp4', 'int8'",
    }
    for overrides, message in cases.items():
        with pytest.raises(ConfigError) as e:
            load_config(None, list(overrides))
        assert message in str(e.value) and "\n" not in str(e.value), overrides


def test_init_from_a_groupo_runs_final_folder_continues_its_policy(tmp_path):
    """An all-linear rsLoRA adapter as a run's final/ holds it (save_policy): the adopted settings
    resolve on the model again (PEFT stored the module paths it resolved all-linear to), and the new
    policy computes what the saved one did."""
    from groupo.models.policy import save_policy

    torch.manual_seed(0)
    saved = load_policy_from(*make_tiny(arch="phi3"), LoraConfig(rank=4, alpha=8.0, target_modules=["all-linear"],
                                                                  variant="rslora"), beta=0.0)
    nonzero_lora(saved.model, 0.2)
    save_policy(saved, tmp_path / "final")
    cfg = load_config(None, [f"lora.init_from={tmp_path / 'final'}"])
    validate(cfg)
    assert (cfg.lora.rank, cfg.lora.variant) == (4, "rslora")
    adopted = resolve_targets(make_tiny(arch="phi3")[0], cfg.lora.target_modules).modules  # module paths, kept exact
    assert {m.rsplit(".", 1)[-1] for m in adopted} == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    policy = load_policy_from(*make_tiny(arch="phi3"), cfg.lora, beta=0.0)
    with torch.no_grad():
        assert torch.equal(policy.model(input_ids=IDS).logits, saved.model(input_ids=IDS).logits)
