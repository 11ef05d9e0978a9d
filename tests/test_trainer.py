"""The training loop on a tiny random model: real steps, exact resume after SIGKILL, micro-batching."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import make_tiny, nonzero_lora, save_tiny

from groupo.algorithms.presets import get_preset
from groupo.config import ConfigError, LoraConfig, load_config
from groupo.distributed import Dist
from groupo.models import load_policy_from
from groupo.models.logprobs import pack
from groupo.report.keys import documented
from groupo.trainer.loop import fits_budget, train
from groupo.trainer.passes import batched_logprobs, micro_batches, rows
from groupo.trainer.prepare import PreparedBatch
from groupo.trainer.settings import UpdateSettings
from groupo.trainer.update import accumulate_gradients, reduce_metrics

ROOT = Path(__file__).resolve().parents[1]

REWARD_FILE = '''
def digit_share(prompts, completions, **kwargs):
    """Share of characters that are digits: varies between samples, learnable by a tiny model.
    The prompts are chat messages, so completions come as TRL passes them: [{"role", "content"}]."""
    texts = [c[0]["content"] for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(1, len(t)) for t in texts]
'''


def _overrides(tmp_path: Path, steps: int, **extra) -> list[str]:
    model_dir = tmp_path / "model"
    if not model_dir.exists():
        save_tiny(model_dir)
    (tmp_path / "reward.py").write_text(REWARD_FILE)
    base = {
        "model.name": str(model_dir), "model.autocast": "none", "lora.rank": 4, "lora.alpha": 8,
        "task.name": "arithmetic", "task.difficulty": 1, "task.eval_size": 4,
        "rollout.group_size": 4, "rollout.max_new_tokens": 6, "rollout.temperature": 1.0,
        "train.prompts_per_step": 2, "train.micro_batch_size": 3, "train.steps": steps, "train.save_every": 1,
        "train.lr": 3e-3, "algorithm.beta": 0.0, "run.progress": "plain", "run.samples_per_step": 1,
        "rewards.funcs": json.dumps({f"{tmp_path / 'reward.py'}:digit_share": 1.0}),
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    files = sorted((run_dir / "final").glob("*.safetensors"))
    assert files, f"no weights in {run_dir / 'final'}"
    out = {}
    for f in files:
        out.update(load_file(f))
    return out


def test_real_steps_change_parameters_and_log_everything(tmp_path):
    cfg = load_config(None, _overrides(tmp_path, 3, **{"run.dir": str(tmp_path / "run")}))
    model, tok = make_tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    policy = load_policy_from(model, tok, cfg.lora, beta=0.0)
    summary = train(cfg, tmp_path / "run", policy=policy)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert torch.isfinite(torch.tensor(r["loss/total"]))
        for key in ("reward/mean", "reward/std", "completion/len_mean", "completion/len_max",
                    "completion/truncated_frac", "completion/multi_answer_frac", "rollout/zero_var_group_frac",
                    "loss/clip_low_frac", "loss/clip_high_frac", "loss/entropy", "optim/grad_norm", "optim/lr",
                    "time/step_s", "time/gen_s", "time/update_s", "time/tokens_per_s", "memory/host_peak_rss_mb",
                    "reward/timeout_frac", *(k for k in r if k.startswith(("reward/fn/", "reward/none_frac/")))):
            assert r.get(key) is not None, key
        assert sum(k.startswith("reward/fn/") for k in r) == 1
        assert all(documented(k) for k in r), [k for k in r if not documented(k)]
    # mu = 1: the first (and every) update's ratio is exactly 1
    assert rows[0]["loss/ratio_mean"] == rows[0]["loss/ratio_min"] == rows[0]["loss/ratio_max"] == 1.0
    # float32 everywhere: the engine (merged LoRA, KV cache) and the trainer agree to rounding
    for r in rows:
        assert 0 <= r["rollout/logprob_mismatch"] < 1e-4 and 0 <= r["rollout/mismatch_kl"] < 1e-6
    lora_changed = [n for n, p in policy.model.named_parameters()
                    if "lora_B" in n and not torch.equal(p, torch.zeros_like(p))]
    assert lora_changed, "LoRA B matrices start at zero and must move"
    base_after = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
                  for n, p in policy.model.named_parameters() if "lora_" not in n}
    assert all(torch.equal(before[n], base_after[n]) for n in before if n in base_after)
    for name in ("config.yaml", "samples.jsonl", "eval.jsonl", "report.html", "summary.json"):
        assert (tmp_path / "run" / name).exists(), name
    assert (tmp_path / "run" / "checkpoints" / "step-3").is_dir()
    assert summary["steps"] == 3 and summary["accuracy_before"] is not None


def test_time_budget_starts_a_step_only_if_the_mean_step_time_fits():
    assert fits_budget(0.0, [], 1.0)                   # the first step: nothing to go by yet
    assert fits_budget(80.0, [10.0, 30.0], 100.0)      # 80 + mean 20 = 100: just fits
    assert not fits_budget(80.1, [10.0, 30.0], 100.0)
    assert not fits_budget(95.0, [6.0], 100.0)          # time left (5 s) but not a whole step


def test_time_budget_ends_training_early(tmp_path):
    cfg = load_config(None, _overrides(tmp_path, 5, **{"train.max_minutes": 1e-6}))
    summary = train(cfg, tmp_path / "run", policy=load_policy_from(*make_tiny(), cfg.lora, beta=0.0))
    assert summary["steps"] == 1 and summary["stopped_early"]  # the first step already overran
    resumed = train(cfg, tmp_path / "run", resume=True, policy=load_policy_from(*make_tiny(), cfg.lora, beta=0.0))
    assert resumed["steps"] == 1 and resumed["stopped_early"]  # the budget was spent: no step starts


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_first_update_ratio_is_exactly_one_with_reused_batches(attention):
    """mu > 1: the stored old log-probs come from the same weights (and the same attention kernel:
    the old-policy pass runs the update's), so the first ratio is 1."""
    torch.manual_seed(0)
    model, tok = make_tiny()
    policy = load_policy_from(model, tok, LoraConfig(rank=4, alpha=8), beta=0.0)
    packed = pack([[5, 6, 7], [8, 9]] * 2, [[10, 11, 12], [13], [14, 15], [16, 17, 18, 19]], tok.pad_token_id)
    mask = packed.completion_mask_BT.float()
    s = UpdateSettings(loss=get_preset("grpo").with_overrides(beta=0.0), temperature=0.7, micro_batch_size=3, max_len=4,
                       attention=attention)
    old = batched_logprobs(policy.model, packed, s)
    batch = PreparedBatch(packed=packed, adv_B=torch.tensor([1.0, -1.0, 0.5, -0.5]), mask_BT=mask, old_logp_BT=old)
    m = reduce_metrics(accumulate_gradients(policy.model, batch, s), Dist())
    assert m["ratio_min"] == m["ratio_max"] == 1.0
    assert model.config._attn_implementation == "sdpa"  # generation's kernel is back


@pytest.mark.parametrize("preset", ["grpo", "dapo", "dr_grpo", "gspo", "cispo"])
def test_micro_batch_size_does_not_change_loss_or_gradient(preset):
    torch.manual_seed(0)
    model, tok = make_tiny()
    policy = load_policy_from(model, tok, LoraConfig(rank=4, alpha=8), beta=0.04)
    nonzero_lora(policy.model, 0.05)
    prompts = [[5, 6, 7], [8, 9], [20, 21, 22, 23], [30]] * 2
    comps = [[10, 11, 12], [13], [14, 15], [16, 17, 18, 19], [40, 41], [42], [43, 44, 45], [46, 47]]
    packed = pack(prompts, comps, tok.pad_token_id)
    mask = packed.completion_mask_BT.float()
    settings = UpdateSettings(loss=get_preset(preset).with_overrides(beta=0.04), temperature=1.0, micro_batch_size=8,
                              max_len=5)
    old = batched_logprobs(policy.model, packed, settings) + 0.05 * torch.randn(mask.shape)
    with policy.reference() as ref_model:
        ref = batched_logprobs(ref_model, packed, settings)
    batch = PreparedBatch(packed=packed, adv_B=torch.randn(8), mask_BT=mask, old_logp_BT=old, ref_logp_BT=ref)
    results = []
    for micro in ({"micro_batch_size": 8}, {"micro_batch_size": 3}, {"micro_batch_size": 1},
                  {"micro_batch_tokens": 12}, {"micro_batch_tokens": 1},  # budgets: 6 passes, then one per row
                  {"attention": "eager"}):  # the scores written out: the same math, another kernel
        policy.model.zero_grad(set_to_none=True)
        m = reduce_metrics(accumulate_gradients(policy.model, batch, replace(settings, **micro)), Dist())
        grads = {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.grad is not None}
        results.append((m["loss"], grads))
    (loss8, g8), *others = results
    for loss, g in others:
        assert loss == pytest.approx(loss8, rel=1e-5, abs=1e-7)
        assert g.keys() == g8.keys() and g8
        for n in g8:
            torch.testing.assert_close(g[n], g8[n], rtol=1e-4, atol=1e-6)


def test_micro_batches_by_token_budget_take_the_consecutive_rows_that_fit():
    prompts = [[5, 6, 7], [8, 9], [20, 21, 22, 23], [30]] * 2  # lengths 3 2 4 1 3 2 4 1
    comps = [[10, 11, 12], [13], [14, 15], [16, 17, 18, 19], [40, 41], [42], [43, 44, 45], [46, 47]]  # 3 1 2 4 2 1 3 2
    packed = pack(prompts, comps, 0)
    # by hand: rows 0-1 cost 2 x (3 + 3) = 12; adding row 2 would cost 3 x (4 + 3) = 21 > 12; ...
    got = micro_batches(packed, 16, tokens=12)
    assert [(sl.start, sl.stop) for sl in got] == [(0, 2), (2, 3), (3, 4), (4, 6), (6, 7), (7, 8)]
    for sl in got:  # what a pass really costs: its rows x its trimmed width
        r, width = rows(packed, sl).input_ids_BL.shape
        assert r == 1 or r * width <= 12
    assert [(sl.start, sl.stop) for sl in micro_batches(packed, 16, tokens=100)] == [(0, 8)]
    assert [(sl.start, sl.stop) for sl in micro_batches(packed, 16, tokens=1)] == [(i, i + 1) for i in range(8)]
    assert [(sl.start, sl.stop) for sl in micro_batches(packed, 3)] == [(0, 3), (3, 6), (6, 9)]  # by rows


def _cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "groupo", "train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_sigkill_at_any_moment_then_resume_gives_identical_weights(tmp_path):
    sigkill_then_resume(tmp_path, 10)


def sigkill_then_resume(tmp_path: Path, steps: int, **extra) -> None:
    """A run left alone, and the same run killed by SIGKILL somewhere after its second checkpoint
    then resumed, end with the same weights and the same metrics log."""
    left_alone, killed = tmp_path / "alone", tmp_path / "killed"
    p = _cli(_overrides(tmp_path, steps, **extra, **{"run.dir": str(left_alone)}))
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out

    p = _cli(_overrides(tmp_path, steps, **extra, **{"run.dir": str(killed)}))
    kill_after_checkpoints(p, killed, "step-1", "step-2", lambda: p.send_signal(signal.SIGKILL))

    p = _cli(["--resume", str(killed)])
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    assert "resumed at step" in out
    assert_same_final_weights_and_log(left_alone, killed, steps)


def kill_after_checkpoints(p: subprocess.Popen, run_dir: Path, first: str, second: str, kill) -> None:
    """Once checkpoint `second` exists, `kill()` somewhere inside one of the next three steps (or a
    checkpoint write), scaled to this machine's step time (first -> second) so that a fast
    machine does not finish the run first."""
    deadline = time.monotonic() + 240
    seen = {}
    while second not in seen:
        assert p.poll() is None and time.monotonic() < deadline, (
            (p.stdout.read() if p.stdout else "") or "the run ended before it could be killed")
        for name in (first, second):
            if name not in seen and (run_dir / "checkpoints" / name).exists():
                seen[name] = time.monotonic()
        time.sleep(0.01)
    step_s = seen[second] - seen.get(first, seen[second] - 0.2)
    time.sleep(random.uniform(0.0, 3 * step_s))
    kill()
    p.wait()
    assert not (run_dir / "final").exists(), "the run should have been killed before finishing"


def assert_same_final_weights_and_log(alone: Path, resumed: Path, steps: int) -> None:
    a, b = _final_weights(alone), _final_weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    steps_logged = [json.loads(x)["step"] for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == list(range(1, steps + 1))


def test_trivial_reward_is_learned(tmp_path):
    """Reward = share of digits in the completion: it must rise within a few dozen steps."""
    cfg = load_config(None, _overrides(tmp_path, 20, **{
        "run.dir": str(tmp_path / "learn"), "train.save_every": 0, "train.lr": 5e-3, "lora.rank": 0,
        "rollout.group_size": 8, "train.prompts_per_step": 4, "train.micro_batch_size": 32,
        "task.eval_size": 2}))
    model, tok = make_tiny(seed=1)
    policy = load_policy_from(model, tok, cfg.lora, beta=0.0)
    train(cfg, tmp_path / "learn", policy=policy)
    rows = [json.loads(x) for x in (tmp_path / "learn" / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["reward/mean"] for r in rows[:5]) / 5
    last = sum(r["reward/mean"] for r in rows[-5:]) / 5
    assert last > first + 0.2, (first, last)


def test_top_k_sampling_shows_as_mismatch_and_tis_weights_it(tmp_path):
    """With top-k the engine samples from a truncated distribution, the trainer scores under the full
    softmax: pi_trainer < pi_engine on every token, so the mismatch is clearly non-zero and every
    TIS weight min(pi_trainer / pi_engine, C) is below 1."""
    cfg = load_config(None, _overrides(tmp_path, 2, **{"run.dir": str(tmp_path / "run"), "rollout.top_k": 5,
                                                       "algorithm.tis_cap": 2.0}))
    train(cfg, tmp_path / "run", policy=load_policy_from(*make_tiny(), cfg.lora, beta=0.0))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        assert r["rollout/logprob_mismatch"] > 0.1 and r["rollout/mismatch_kl"] > 0.01
        assert 0 < r["rollout/is_weight_mean"] < 1


def test_engine_log_probs_as_the_old_policy(tmp_path):
    """algorithm.engine_old_logprobs: the first update's ratio is pi_trainer / pi_engine, not exactly 1
    (top-k makes the two differ); it needs mu = 1."""
    cfg = load_config(None, _overrides(tmp_path, 1, **{"run.dir": str(tmp_path / "run"), "rollout.top_k": 5,
                                                       "algorithm.engine_old_logprobs": True}))
    train(cfg, tmp_path / "run", policy=load_policy_from(*make_tiny(), cfg.lora, beta=0.0))
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["loss/ratio_mean"] < 1 and row["loss/ratio_max"] <= 1.0 + 1e-6  # pi_trainer <= pi_engine under top-k
    with pytest.raises(ConfigError, match="num_iterations = 1"):
        load_config(None, ["algorithm.engine_old_logprobs=true", "algorithm.num_iterations=2"])
