"""The new knobs in the trainer: train.steps_per_generation (mini-batches of whole groups, one optimizer
step each, the old log-probs fixed at sampling, mu passes over them; exact resume from an interrupt
between mini-batches), adaptive entropy control's state across steps and checkpoints, which
importance-sampling correction a run gets, and GDPO's advantages from a scored batch."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
from test_interrupts import _steps_logged, _train
from test_trainer import _final_weights, _overrides
from tiny import make_tiny, nonzero_lora

from groupo.algorithms import policy_loss
from groupo.algorithms.presets import get_preset
from groupo.config import ConfigError, LoraConfig, load_config
from groupo.distributed import Dist
from groupo.models import load_policy_from
from groupo.models.logprobs import pack, token_logprobs
from groupo.trainer import loop
from groupo.trainer import update as update_module
from groupo.trainer.checkpoint import list_checkpoints
from groupo.trainer.collect import RolloutBatch
from groupo.trainer.passes import batched_logprobs, rows
from groupo.trainer.prepare import PreparedBatch, _minibatches, advantages, minibatches
from groupo.trainer.settings import UpdateSettings, resolve_is_correction
from groupo.trainer.update import update


def test_mini_batches_take_whole_groups_across_ranks_with_their_global_denominators():
    # 4 groups of 2 rows over 2 ranks: rank 0 holds global groups 0 and 2, rank 1 groups 1 and 3
    tokens = [3, 1, 2, 2, 4, 1, 1, 5]  # counted tokens of the 8 global rows, group-major
    everyone = torch.tensor([[1.0] * t + [0.0] * (5 - t) for t in tokens])
    # mini-batch 0 = local group 0 of each rank = global groups 0 and 1: rows 0-3, 3+1+2+2 = 8 tokens;
    # mini-batch 1 = global groups 2 and 3: rows 4-7, 4+1+1+5 = 11 tokens
    for rank in (0, 1):
        got = _minibatches(everyone, 2, 2, 2, "token_mean", Dist(rank=rank, world_size=2), torch.device("cpu"))
        assert [(sl.start, sl.stop) for sl, _ in got] == [(0, 2), (2, 4)]  # this rank's rows
        assert [d.item() for _, d in got] == [8.0, 11.0]
    seq = _minibatches(everyone, 2, 2, 2, "seq_mean_token_mean", Dist(rank=0, world_size=2), torch.device("cpu"))
    assert [d.item() for _, d in seq] == [4.0, 4.0]  # sequences per global mini-batch
    # one process, 3 groups in 2 mini-batches: the first a group larger, as torch.tensor_split splits
    one = _minibatches(everyone[:6], 3, 2, 2, "token_mean", Dist(), torch.device("cpu"))
    assert [(sl.start, sl.stop) for sl, _ in one] == [(0, 4), (4, 6)] and [d.item() for _, d in one] == [8.0, 5.0]
    assert _minibatches(everyone, 4, 2, 1, "token_mean", Dist(), torch.device("cpu")) == ()
    assert [(sl.start, sl.stop) for sl, _ in _minibatches(everyone[:2], 1, 2, 2, "token_mean", Dist(),
                                                          torch.device("cpu"))] == [(0, 2)]  # no empty step


@pytest.mark.parametrize("mu", [1, 2])
def test_each_optimizer_step_minimises_its_mini_batch_loss_with_the_sampling_time_old_log_probs(mu):
    """update() against the rule written out: for each of mu passes, for each mini-batch, an SGD step on
    that mini-batch's token-mean loss, its ratio against log-probs taken once, before any step."""
    torch.manual_seed(0)
    prompts = [[5, 6, 7], [5, 6, 7], [8, 9], [8, 9]]
    comps = [[10, 11, 12], [13], [14, 15], [16, 17, 18, 19]]
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    s = UpdateSettings(loss=get_preset("dapo").with_overrides(beta=0.0), temperature=1.0, micro_batch_size=8,
                       max_len=4, num_iterations=mu, steps_per_generation=2)

    def policy():
        torch.manual_seed(0)
        p = load_policy_from(*make_tiny(), LoraConfig(rank=4, alpha=8), beta=0.0)
        nonzero_lora(p.model, 0.05)
        return p

    packed = pack(prompts, comps, 0)
    mask = packed.completion_mask_BT.float()
    got = policy()
    old = batched_logprobs(got.model, packed, s)
    batch = PreparedBatch(packed=packed, adv_B=adv, mask_BT=mask, old_logp_BT=old, n_tokens=mask.sum(),
                          n_seqs=torch.tensor(4), minibatches=_minibatches(mask, 2, 2, 2, "token_mean", Dist(),
                                                                           torch.device("cpu")))
    assert [len(p.adv_B) for p in minibatches(batch)] == [2, 2]
    opt = torch.optim.SGD([p for p in got.model.parameters() if p.requires_grad], lr=0.5)
    metrics = update(got.model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0), batch, s, Dist(), seed=3)

    want = policy()
    params = [p for p in want.model.parameters() if p.requires_grad]
    want.model.train()
    for _ in range(mu):
        for sl in (slice(0, 2), slice(2, 4)):
            logp, _ = token_logprobs(want.model, rows(packed, sl), 1.0)
            t = logp.shape[1]
            loss = policy_loss(logp, old[sl, :t], adv[sl], mask[sl, :t], "dapo", beta=0.0).loss  # its own token mean
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    p -= 0.5 * g  # SGD, lr 0.5 (UpdateSettings' max_grad_norm 0: no clipping)
    for a, b in zip([p for p in got.model.parameters() if p.requires_grad], params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert metrics["ratio_max"] > metrics["ratio_min"]  # later steps' weights are not the sampling ones


def test_steps_per_generation_must_divide_the_prompts():
    with pytest.raises(ConfigError, match=r"must divide train\.prompts_per_step = 8"):
        load_config(None, ["train.steps_per_generation=3"])


def _knobs(tmp, steps, **extra):
    """A tiny run with every new knob on: 2 mini-batches, a high-entropy token mask, adaptive entropy
    control that always engages (target far above any entropy), token-masked importance weights, the
    off-policy sequence mask and the importance-corrected KL."""
    return load_config(None, _overrides(tmp, steps, **{
        "train.steps_per_generation": 2, "algorithm.entropy_coef": 0.01, "algorithm.entropy_target": 100.0,
        "algorithm.entropy_coef_delta": 0.005, "algorithm.entropy_coef_max": 0.03,
        "algorithm.top_entropy_quantile": 0.5, "algorithm.is_correction": "token_mask", "algorithm.is_lower": 0.5,
        "algorithm.off_policy_mask_threshold": 0.01, "algorithm.kl_is_corrected": True,
        "algorithm.num_iterations": 2, **extra}))


STEPS = 3


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("alone")
    _train(_knobs(tmp, STEPS, **{"run.dir": str(tmp / "run"), "train.save_every": 0}), tmp / "run")
    rows_ = [json.loads(x) for x in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    return _final_weights(tmp / "run"), rows_


def test_adaptive_entropy_coefficient_moves_each_optimizer_step_and_is_logged(alone):
    _, logged = alone
    # 2 mini-batches x 2 passes = 4 optimizer steps a step, each +0.005 from 0.01 (always below the target),
    # capped at 0.03: 0.03 from the first step on; the first optimizer step has no bonus (no entropy yet)
    assert [r["loss/entropy_coef"] for r in logged] == pytest.approx([0.03] * STEPS)
    for r in logged:
        assert r["loss/entropy_bonus"] < 0 and r["loss/entropy_kept_frac"] == pytest.approx(0.5, abs=0.2)
        assert r["loss/entropy_kept"] >= r["loss/entropy"]  # the highest-entropy half
        assert 0 <= r["rollout/is_masked_frac"] <= 1 and 0 <= r["rollout/off_policy_masked_seq_frac"] <= 1


def test_an_interrupt_between_mini_batches_resumes_exactly(tmp_path, monkeypatch, alone):
    """SIGINT after the first mini-batch of step 2: the step is finished first (all its mini-batches and
    passes), saved, and the resumed run, adaptive coefficient included, ends with the same weights."""
    run = tmp_path / "run"
    cfg = _knobs(tmp_path, STEPS, **{"run.dir": str(run), "train.save_every": 0})
    real_update, real_accumulate, calls, sent = loop.update, update_module.accumulate_gradients, [], []

    def counting_update(*args, **kwargs):
        calls.append(1)
        return real_update(*args, **kwargs)

    def accumulate(*args, **kwargs):  # the first mini-batch of step 2 has run backward: one SIGINT
        out = real_accumulate(*args, **kwargs)
        if len(calls) == 2 and not sent:
            sent.append(os.kill(os.getpid(), signal.SIGINT))
        return out

    monkeypatch.setattr(loop, "update", counting_update)
    monkeypatch.setattr(update_module, "accumulate_gradients", accumulate)
    with pytest.raises(KeyboardInterrupt):
        _train(cfg, run)
    assert [p.name for p in list_checkpoints(run)][-1] == "step-2"
    state = json.loads((run / "checkpoints" / "step-2" / "state.json").read_text())
    assert state["entropy_control"]["coef"] == pytest.approx(0.03)
    monkeypatch.undo()
    _train(cfg, run, resume=True)
    got, want = _final_weights(run), alone[0]
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert _steps_logged(run) == list(range(1, STEPS + 1))


@pytest.mark.parametrize("overrides,want", [
    ([], ("none", 2.0)),                                                      # the transformers engine
    (["rollout.engine=vllm"], ("token_truncate", 2.0)),                        # auto on vLLM
    (["rollout.engine=vllm", "algorithm.engine_old_logprobs=true"], ("none", 2.0)),  # weights would all be 1
    (["algorithm.tis_cap=3.0"], ("token_truncate", 3.0)),                     # the older name
    (["algorithm.is_correction=sequence_mask", "algorithm.is_upper=null"], ("sequence_mask", None)),
])
def test_which_importance_sampling_correction_a_run_gets(overrides, want):
    assert resolve_is_correction(load_config(None, overrides)) == want


@pytest.mark.parametrize("overrides,match", [
    (["algorithm.tis_cap=2", "algorithm.is_correction=token_mask"], "set algorithm.is_upper instead"),
    (["algorithm.is_lower=3", "algorithm.is_upper=2"], "is above algorithm.is_upper"),
    (["algorithm.engine_old_logprobs=true", "algorithm.is_correction=token_mask"], "would be 1"),
    (["algorithm.entropy_coef_min=0.5", "algorithm.entropy_coef_max=0.1"], "is above algorithm.entropy_coef_max"),
    (["algorithm.top_entropy_quantile=1.5"], "out of range"),
    (["algorithm.is_correction=token_clip"], "wrong type"),
    (["train.eval_samples=1"], "use 0"),
])
def test_the_new_keys_are_checked(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_gdpo_advantages_from_a_scored_batch_use_each_reward_and_its_weight():
    """reward_norm: normalize_then_sum reads the per-function scores (None counts 0, as in the sum) and the
    weights the run gave them; by hand as in test_algorithms: groups (1, 1) / (0, 0) and (1, 0) / (0, 0)."""
    from types import SimpleNamespace

    rollout = SimpleNamespace(rewards_PG=torch.tensor([[3.0, 0.0], [1.0, 0.0]]),
                              per_fn={"a": [1.0, 0.0, 1.0, 0.0], "b": [1.0, None, 0.0, 0.0]},
                              reward_weights={"a": 1.0, "b": 2.0})
    L = get_preset("grpo").with_overrides(reward_norm="normalize_then_sum", adv_eps=0.0)
    # per reward +-1/sqrt(2) (b constant in group 1); weighted sums +-3/sqrt(2), +-1/sqrt(2); batch std
    # sqrt((4.5 + 4.5 + .5 + .5) / 3) = sqrt(10/3)
    a, b = 3 / math.sqrt(2) / math.sqrt(10 / 3), 1 / math.sqrt(2) / math.sqrt(10 / 3)
    torch.testing.assert_close(advantages(rollout, L), torch.tensor([[a, -a], [b, -b]]))
    plain = advantages(rollout, get_preset("grpo").with_overrides(adv_eps=0.0))  # the sums (3, 0), (1, 0) alike
    torch.testing.assert_close(plain[0], plain[1])
    assert RolloutBatch.__dataclass_fields__["reward_weights"]  # collect fills it from the run's rewards


def test_a_smoke_quickstart_with_the_new_knobs_completes_and_its_report_shows_their_metrics(tmp_path):
    """The issue's end-to-end check, on the tiny model: entropy bonus, sequence-masked importance weights,
    two mini-batches per step and 4 samples per held-out problem at every evaluation."""
    import re

    from tiny import save_tiny

    from groupo.cli import main

    run = tmp_path / "run"
    assert main(["train", "--smoke", f"model.name={save_tiny(tmp_path / 'tiny')}", f"run.dir={run}",
                 "run.progress=plain", "algorithm.entropy_coef=0.01", "algorithm.is_correction=sequence_mask",
                 "train.steps_per_generation=2", "train.eval_samples=4"]) == 0
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for r in logged:
        assert r["loss/entropy_bonus"] < 0 and 0 <= r["rollout/is_masked_frac"] <= 1
        assert {"rollout/is_masked_seq_frac", "rollout/is_weight_mean", "loss/total"} <= set(r)
    evals = [e for e in map(json.loads, (run / "eval.jsonl").read_text().splitlines()) if "split" not in e]
    assert [e["step"] for e in evals] == [0, 2]
    for e in evals:
        assert e["samples"] == 4 and {"pass@4", "maj@4", "mean@4"} <= set(e) and 0 <= e["mean@4"] <= e["pass@4"] <= 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval_samples"] == 4 and {"pass@4_before", "pass@4_after", "maj@4_after", "mean@4_after"} <= set(
        summary)
    page = (run / "report.html").read_text(encoding="utf-8")
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S).group(1))
    series = data["runs"][0]["series"]
    for key in ("loss/entropy_bonus", "rollout/is_masked_frac", "rollout/is_masked_seq_frac", "eval/pass@4",
                "eval/maj@4", "eval/mean@4"):
        assert any(v is not None for v in series[key]), key
