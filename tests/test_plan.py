"""groupo plan: traced counts against hand formulas, extrapolation against the full trace, the
cost arithmetic by hand, and the command's fit / suggestion logic on a tiny model."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import sys
from collections import Counter

import pytest
import torch
from tiny import make_tiny, save_tiny

from groupo.cli import main
from groupo.config import LoraConfig, quickstart_config
from groupo.plan import estimate as E
from groupo.plan.machine import Machine
from groupo.plan.trace import (
    Counts,
    fake_mode,
    fake_model,
    generation_passes,
    packed_inputs,
    update_logprobs,
    update_pass,
)


def _config(layers: int = 2):
    cfg = copy.deepcopy(make_tiny()[0].config)
    cfg.num_hidden_layers = layers
    return cfg


def test_traced_matmul_flops_are_the_hand_count():
    """A no-grad log-prob pass (prompts not shared) of B rows x (P + T) tokens: 2 FLOPs per weight per
    token in every decoder layer, and the output head on the T completion positions only."""
    cfg = _config()
    H, F, V, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    hd = H // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    per_token = L * (H * q + 2 * H * kv + q * H + 3 * H * F)
    B, P, T = 6, 9, 5
    mode = fake_mode()
    model = fake_model(cfg, torch.float32, "cpu", mode)
    with mode:
        c = update_pass(model, B, 3, P, T, None, "cpu", share_prompts=False, backward=False)
    assert c.matmul_flops == 2 * B * (P + T) * per_token + 2 * B * T * H * V
    assert c.ops_backward == 0 and c.other_flops > 0  # attention, counted apart


def test_a_pass_holds_only_the_memory_it_makes():
    """A linear layer's forward on fake tensors made before the pass: the weight's transpose
    (aten.t, a view) and an in-place op on the input share memory that existed already, so the
    pass's peak is its output alone, rows x out x 4 bytes. (A 128k-vocabulary output head's
    transpose counted as new memory put 0.5 GB into every head chunk of Llama-3.2-1B's plan.)"""
    from groupo.plan.trace import OpTrace

    mode = fake_mode()
    with mode:
        weight, x = torch.empty(512, 256), torch.empty(8, 256)
        trace = OpTrace()
        with trace, torch.no_grad():
            x.mul_(2.0)
            y = torch.nn.functional.linear(x, weight)
    assert y.shape == (8, 512) and trace.counts["pass"].peak_bytes == 8 * 512 * 4


def test_shared_prompts_encode_each_prompt_once():
    """With groups of 3 the prompt's first P-1 tokens run once per group: the decoder layers'
    FLOPs drop by exactly those tokens' share."""
    cfg = _config()
    mode = fake_mode()
    model = fake_model(cfg, torch.float32, "cpu", mode)
    B, G, P, T = 6, 3, 9, 5
    with mode:
        plain = update_pass(model, B, G, P, T, None, "cpu", share_prompts=False, backward=False)
        shared = update_pass(model, B, G, P, T, None, "cpu", share_prompts=True, backward=False)
    H, F, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    q, kv = H, H * cfg.num_key_value_heads // cfg.num_attention_heads
    flops_per_token = 2 * L * (H * q + 2 * H * kv + q * H + 3 * H * F)
    # plain: every row's P + T tokens; shared: B // G prompts' first P - 1 tokens, then T per row
    saved_tokens = B * (P + T) - (B // G * (P - 1) + B * T)
    assert plain.matmul_flops - shared.matmul_flops == saved_tokens * flops_per_token


def test_extrapolated_counts_equal_the_full_trace():
    lora = LoraConfig(rank=4, alpha=8)
    traced = {}
    for layers in (2, 3, 5):
        mode = fake_mode()
        model = fake_model(_config(layers), torch.float32, "cpu", mode, lora)
        with mode:
            traced[layers] = (update_pass(model, 4, 2, 7, 6, None, "cpu", True),
                              *generation_passes(model, 2, 2, 7, 6, None, "cpu"))
    for two, three, five in zip(traced[2], traced[3], traced[5], strict=True):
        guess = Counts.extrapolate(two, three, 2, 5)
        assert (guess.ops_forward, guess.ops_backward) == (five.ops_forward, five.ops_backward)
        assert guess.matmuls == five.matmuls
        assert guess.bytes_moved == pytest.approx(five.bytes_moved)
        assert guess.peak_bytes == five.peak_bytes


def test_the_decoding_step_peak_holds_the_kv_cache():
    """Two steps whose caches differ by 10 positions: their peaks differ by those positions' keys
    and values (2 x layers x kv heads x head dim x rows x 4 bytes each), give or take the mask."""
    cfg = _config()
    mode = fake_mode()
    model = fake_model(cfg, torch.float32, "cpu", mode)
    with mode:
        _, short = generation_passes(model, 2, 4, 8, 10, None, "cpu")
        _, long = generation_passes(model, 2, 4, 8, 20, None, "cpu")
    hd = cfg.hidden_size // cfg.num_attention_heads
    per_position = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * hd * 8 * 4
    assert long.peak_bytes - short.peak_bytes == pytest.approx(10 * per_position, rel=0.1)


def test_seconds_add_fixed_matmul_attention_and_bandwidth_costs():
    big, small = (8, 16, 32, "float32", False, True), (4, 4, 4, "float32", False, False)
    m = Machine("cpu", op_nograd_s=1e-5, op_forward_s=2e-5, op_backward_s=5e-6, generate_step_s=1e-3,
                bandwidth=1e10, baseline_bytes=0, matmul_rate={big: 1e9, small: 5e8})
    c = Counts(ops_forward=100, ops_backward=50, matmuls=Counter({big: 3, small: 2}), other_flops=1e6, bytes_moved=2e8)
    mm = 3 * 2 * 8 * 16 * 32 / 1e9 + 2 * 2 * 4 * 4 * 4 / 5e8
    mean_rate = (3 * 2 * 8 * 16 * 32 + 2 * 2 * 4 * 4 * 4) / mm
    assert E.seconds(c, m, grad=True) == pytest.approx(100 * 2e-5 + 50 * 5e-6 + mm + 1e6 / mean_rate + 2e8 / 1e10)
    assert E.seconds(c, m, grad=False) == pytest.approx(100 * 1e-5 + 50 * 5e-6 + mm + 1e6 / mean_rate + 0.02)
    step = E.seconds(c, m, grad=False) + 1e-3 + 3 * 7 * E.SAMPLING_BYTES_PER_LOGIT / 1e10
    assert E.generation_seconds(c, c, 5, 3, 7, m) == pytest.approx(E.seconds(c, m, grad=False) + 5 * step)
    # a quantized base: each dequantization at its shape's measured time
    m.dequant_s = {(64, 32, False): 1e-3, (64, 32, True): 3e-3, (32, 64, False): 4e-4}
    q = dataclasses.replace(c, dequantized=Counter({(64, 32, False): 5, (64, 32, True): 4, (32, 64, False): 2}))
    assert E.seconds(q, m, grad=True) - E.seconds(c, m, grad=True) == pytest.approx(5e-3 + 4 * 3e-3 + 2 * 4e-4)


def test_a_quantized_base_is_traced_dequantizing_each_layer_per_call():
    """Under model.quantization every linear layer but the head dequantizes its weight at each call,
    and again in the backward pass where its input needs a gradient. Counted by hand for the tiny
    Llama (2 layers; weights (out, in): q and o 64 x 64, k and v 32 x 64, gate and up 128 x 64, down
    64 x 128) with LoRA on attention, prompts not shared: the forward calls each layer once; the
    backward every layer but the first one's q, k and v, whose input (the embeddings) needs no
    gradient; the two are counted apart (the key's last field), as they are priced apart. A no-grad
    pass and a decoding step call each layer once; generation runs the adapters unmerged (as on a
    quantized base), so its step has the adapters' matmuls too.
    (tests/test_qlora.py checks these counts against the ops bitsandbytes itself runs.)"""
    mode = fake_mode()
    model = fake_model(_config(), torch.float32, "cpu", mode, LoraConfig(rank=4))
    once = Counter({(64, 64, False): 4, (32, 64, False): 4, (128, 64, False): 4, (64, 128, False): 2})
    with mode:
        upd = update_pass(model, 6, 3, 9, 5, None, "cpu", share_prompts=False, quantized=True)
        ref = update_pass(model, 6, 3, 9, 5, None, "cpu", share_prompts=False, backward=False, quantized=True)
        plain = update_pass(model, 6, 3, 9, 5, None, "cpu", share_prompts=False)
        _, step = generation_passes(model, 2, 3, 9, 5, None, "cpu", quantized=True)
        _, merged = generation_passes(model, 2, 3, 9, 5, None, "cpu")
    assert upd.dequantized == once + Counter({(64, 64, True): 3, (32, 64, True): 2, (128, 64, True): 4,
                                              (64, 128, True): 2})
    assert ref.dequantized == once and step.dequantized == once and not plain.dequantized
    assert upd.matmuls == plain.matmuls  # the matmuls themselves are counted as before
    lora_matmuls = 2 * 4 * 2  # A and B of q, k, v, o in two layers
    assert sum(step.matmuls.values()) == sum(merged.matmuls.values()) + lora_matmuls


def test_batches_split_as_the_trainer_and_engine_split_them():
    assert E.micro_batches(40, 16) == [16, 16, 8]
    assert E.chunks(10, 8, 64) == [8, 2]  # whole groups: 64 // 8 prompts per generate call
    assert E.chunks(3, 100, 64) == [1, 1, 1]
    assert E.Memory(1, 2, 3, 10, 7, 4).peak == 1 + 2 + 3 + 4 + 10


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.mark.long
def test_plan_of_a_run_that_does_not_fit_names_settings_that_do(tiny_dir, capsys):
    from groupo.plan.build import make_plan

    over = [f"model.name={tiny_dir}", "task.name=arithmetic", "rollout.group_size=4", "train.prompts_per_step=4",
            "train.micro_batch_size=16", "rollout.max_new_tokens=32", "model.autocast=none", "lora.rank=4"]
    cfg = quickstart_config(over)  # what `groupo plan` without a config file plans
    plan = make_plan(cfg)
    assert plan.fits and plan.step_s > 0 and plan.rows == 16
    m = plan.memory
    assert m.update > m.generation  # 16 rows x ~60 tokens of activations against a 4-row... cache
    # Room for everything but a third of the update's activations: a micro-batch of 8 fits, 16 does not.
    tight = m.peak - m.update // 3
    short = make_plan(cfg, machine=plan.machine, available=tight)  # the same measured machine
    assert not short.fits and short.memory.peak == m.peak
    fixes = dict(short.suggestions)
    assert "train.micro_batch_size=8" in fixes and fixes["train.micro_batch_size=8"] <= tight
    assert all(b <= tight for b in fixes.values())

    assert main(["plan", *over, "--json", "--available-gb=0.01"]) == 1  # exit status 1: does not fit
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not out["fits"] and out["memory"]["update"] == m.update and out["completions_per_step"] == 16
    assert main(["plan", *over]) == 0
    text = capsys.readouterr().out
    assert "fits" in text and "update" in text and "16 completions" in text


def test_a_token_budget_is_planned_as_the_rows_that_fit_at_the_longest_lengths(tiny_dir):
    """train.micro_batch_tokens: every completion max_new_tokens long beside the given prompt
    length, so a budget of 2.5 rows of (20 + 32) tokens plans as micro-batches of 2 rows."""
    from groupo.plan.build import make_plan

    over = [f"model.name={tiny_dir}", "task.name=arithmetic", "rollout.group_size=4", "train.prompts_per_step=2",
            "rollout.max_new_tokens=32", "model.autocast=none", "lora.rank=4"]
    rows = make_plan(quickstart_config([*over, "train.micro_batch_size=2"]), prompt_tokens=20, suggest=False)
    budget = make_plan(quickstart_config([*over, f"train.micro_batch_tokens={52 * 5 // 2}"]), prompt_tokens=20,
                       suggest=False, machine=rows.machine)
    assert budget.memory.update == rows.memory.update and budget.update_s == pytest.approx(rows.update_s)
    other = make_plan(quickstart_config([*over, "train.micro_batch_size=4"]), prompt_tokens=20, suggest=False,
                      machine=rows.machine)
    assert other.memory.update > rows.memory.update  # the comparison can fail


@pytest.mark.parametrize("share", [True, False])
def test_the_traced_update_computes_the_trainers_log_probs(share):
    """The pass the planner traces is the trainer's: on real tensors it gives token_logprobs' values
    (two groups of three completions of different lengths, prompts encoded once or per row)."""
    from groupo.models.logprobs import pack, token_logprobs

    torch.manual_seed(0)
    model, _ = make_tiny()
    model.eval()
    prompts = [[5, 6, 7, 8]] * 3 + [[9, 10, 11, 12]] * 3
    completions = [[20, 21, 22], [23, 24], [25], [26, 27, 28], [29], [30, 31]]
    packed = pack(prompts, completions, pad_id=0)
    with torch.no_grad():
        want, want_h = token_logprobs(model, packed, temperature=0.7, with_entropy=True, share_prompts=share)
        got, got_h = update_logprobs(model, packed_inputs(packed), share, temperature=0.7, with_entropy=True)
    mask = packed.completion_mask_BT
    torch.testing.assert_close(got * mask, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_h * mask, want_h, atol=1e-5, rtol=1e-5)


class AnyShape(dict):
    """One made-up rate for every matmul, so a plan measures nothing: for tests comparing memory."""

    def __contains__(self, key):
        return True

    def __missing__(self, key):
        return 1e11


def test_quantization_prices_the_linear_layers_weights_at_4_or_8_bits(tiny_dir):
    """The tiny Llama's linear layers, counted by hand: per layer q and o 64 x 64, k and v 64 x 32, gate,
    up and down 64 x 128; two layers. nf4 stores half a byte per weight and a float32 absmax per 64
    weights, int8 a byte; everything else (embeddings, norms, the adapters) is priced as before."""
    from groupo.plan.build import make_plan

    linear = 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128)
    over = [f"model.name={tiny_dir}", "task.name=arithmetic", "rollout.group_size=2", "train.prompts_per_step=2",
            "rollout.max_new_tokens=8", "model.autocast=none", "lora.rank=4"]
    machine = Machine("cpu", 1e-6, 1e-6, 1e-6, 1e-5, 1e10, 0, AnyShape())
    plans = {kind: make_plan(quickstart_config([*over, f"model.quantization={kind}"]), prompt_tokens=12,
                             suggest=False, machine=machine) for kind in ("none", "nf4", "int8")}
    weights = {kind: plan.memory.weights for kind, plan in plans.items()}
    assert weights["none"] - weights["nf4"] == 4 * linear - (linear // 2 + linear // 64 * 4)
    assert weights["none"] - weights["int8"] == 3 * linear
    assert plans["nf4"].memory.update == plans["none"].memory.update
    assert any("model.quantization=nf4" in n for n in plans["nf4"].notes) and not plans["none"].notes
    if not importlib.util.find_spec("bitsandbytes"):  # without it the dequantization is said to be unpriced
        assert any("not priced (bitsandbytes is not installed)" in n for n in plans["nf4"].notes)


def test_without_bitsandbytes_the_plan_says_the_dequantization_is_not_priced(tiny_dir, monkeypatch):
    from groupo.plan.build import make_plan

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if it were not installed
    over = [f"model.name={tiny_dir}", "task.name=arithmetic", "rollout.group_size=2", "train.prompts_per_step=2",
            "rollout.max_new_tokens=8", "model.autocast=none", "lora.rank=4", "model.quantization=nf4"]
    plan = make_plan(quickstart_config(over), prompt_tokens=12, suggest=False,
                     machine=Machine("cpu", 1e-6, 1e-6, 1e-6, 1e-5, 1e10, 0, AnyShape()))
    assert [n for n in plan.notes if n.startswith("model.quantization")] == [
        "model.quantization=nf4: the linear layers' weights are priced at 4 bits (and a float32 scale per 64) each, "
        "and their dequantization at every call is not priced (bitsandbytes is not installed)"]


def test_a_run_from_an_adapter_is_planned_with_the_adapters_rank_and_targets(tiny_dir, tmp_path):
    """lora.init_from: AdamW's state is that of the adapter's weights, counted by hand: rank 8 on q
    (64 -> 64) and v (64 -> 32) in two layers, two float32 moments each."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    from groupo.commands.resolve import resolve_config
    from groupo.plan.build import make_plan

    get_peft_model(make_tiny()[0], PeftLoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
                   ).save_pretrained(tmp_path / "adapter")
    cfg = resolve_config(None, [f"model.name={tiny_dir}", f"lora.init_from={tmp_path / 'adapter'}",
                                "rollout.group_size=2", "train.prompts_per_step=2", "rollout.max_new_tokens=8"])
    plan = make_plan(cfg, prompt_tokens=12, suggest=False, machine=Machine("cpu", 1e-6, 1e-6, 1e-6, 1e-5, 1e10, 0,
                                                                            AnyShape()))
    trainable = 2 * (8 * (64 + 64) + 8 * (64 + 32))
    assert plan.memory.training_state == 2 * trainable * 4


def test_the_traced_padding_free_update_is_the_trainers_and_costs_only_real_tokens():
    """train.packing: on real tensors the traced flat pass gives token_logprobs' packed values; on fake
    ones its decoder and head FLOPs are those of the real tokens: with equal lengths the padded shared
    pass's matmuls exactly, and with completions of T' < T tokens fewer by rows x (T - T') tokens."""
    from groupo.models.attention import attention_kernel
    from groupo.models.logprobs import pack, token_logprobs
    from groupo.plan.trace import packed_update_logprobs

    model, _ = make_tiny()
    rows, G, P, T = 6, 3, 4, 3
    packed = pack([[0] * P] * rows, [[0] * T] * rows, pad_id=1)  # the trace's token ids: zeros
    with torch.no_grad(), attention_kernel(model, "sdpa", packing=True):
        want, _ = token_logprobs(model, packed, 0.7, packing=True)
        got, _ = packed_update_logprobs(model, rows, G, P, T, True, "cpu", temperature=0.7)
    torch.testing.assert_close(got.view(rows, T), want, atol=1e-5, rtol=0)

    cfg = _config()
    mode = fake_mode()
    fake = fake_model(cfg, torch.float32, "cpu", mode)
    B, P, T, short = 6, 9, 8, 5
    with mode, attention_kernel(fake, "sdpa", packing=True):
        flat = update_pass(fake, B, G, P, T, None, "cpu", share_prompts=True, backward=False, packing=True)
        flat_short = update_pass(fake, B, G, P, short, None, "cpu", share_prompts=True, backward=False, packing=True)
    with mode:
        padded = update_pass(fake, B, G, P, T, None, "cpu", share_prompts=True, backward=False)
    assert flat.matmul_flops == padded.matmul_flops
    H, F, V, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    q, kv = H, H * cfg.num_key_value_heads // cfg.num_attention_heads
    per_token = 2 * L * (H * q + 2 * H * kv + q * H + 3 * H * F) + 2 * H * V  # decoder layers + the head
    assert flat.matmul_flops - flat_short.matmul_flops == B * (T - short) * per_token


def test_packing_is_planned_at_the_mean_completion_length(tiny_dir):
    from groupo.plan.build import make_plan

    over = [f"model.name={tiny_dir}", "task.name=arithmetic", "rollout.group_size=4", "train.prompts_per_step=4",
            "train.micro_batch_size=16", "rollout.max_new_tokens=64", "model.autocast=none", "lora.rank=4"]
    padded = make_plan(quickstart_config(over), prompt_tokens=20, suggest=False)
    packed = make_plan(quickstart_config([*over, "train.packing=true"]), prompt_tokens=20, suggest=False,
                       machine=padded.machine, mean_completion_tokens=16)
    assert packed.update_completion_tokens == 16 and padded.update_completion_tokens == 64
    # (not its time: on a model this small the per-sequence attention's extra ops cost more than the FLOPs saved)
    assert packed.memory.update < padded.memory.update
    assert packed.gen_s == pytest.approx(padded.gen_s)  # generation still runs to the longest
    # without a mean length, every completion is planned as long as the longest: no saving in FLOPs
    equal = make_plan(quickstart_config([*over, "train.packing=true"]), prompt_tokens=20, suggest=False,
                      machine=padded.machine)
    assert equal.update_completion_tokens == 64 and equal.update_s > packed.update_s
