"""Peer check against TRL 1.16: where GRPOTrainer implements the same rule, TRL's own code and
groupo's get the same tensors, and their values and gradients are compared.

TRL's loss (`GRPOTrainer._compute_loss`) runs on a stand-in trainer whose forward pass returns the
test's log-probs and entropies; TRL computes its importance-sampling weights and its advantages inline
in `_generate_and_score_completions`, so those blocks of TRL's installed source are located by their
first and last lines and run on the test's tensors (a TRL release that moves them fails here loudly).
verl 0.9.1 is compared in tests/test_peers_verl.py.

Differences of convention found (each also in docs/algorithms.md, "Beside TRL and verl"):
1. The entropy bonus: TRL's is always the mean entropy of the tokens it acts on; groupo's is
   aggregated like the policy term (verl's rule). Equal under token_mean (TRL's dapo) on every token;
   under the sequence mean they differ by entropy_coef x (token mean - sequence mean of token means),
   and with top_entropy_quantile < 1 TRL divides the bonus by the kept tokens, groupo by all counted
   tokens, as the policy term (both tested below).
2. The high-entropy quantile: TRL takes it over a micro-batch gathered from every process; groupo
   over each process's micro-batch (no collective per micro-batch). Equal on one process.
3. Importance-sampling defaults: TRL corrects by default under vLLM with sequence_mask, bounds
   [none, 3]; groupo's auto is token_truncate with bounds [none, 2] on vLLM, none on hf. TRL's
   weight on a padding position is 1, groupo's 0 (neither counts).
4. The importance-corrected KL: on by default in TRL (use_bias_correction_kl), off in groupo
   (algorithm.kl_is_corrected); with a sequence-level ratio TRL weights the KL by the sequence
   ratio, groupo always by the token ratio.
5. GDPO: TRL's normalize_then_sum ignores scale_rewards (group std per reward, then batch std);
   groupo applies adv_baseline / adv_scale / adv_std / adv_eps per reward, then the batch step
   (equal to TRL's under the defaults); a reward that returned None counts 0 in groupo (as in its
   sum), while TRL leaves it out of that reward's group statistics (NaN-aware means).
6. Off-policy sequence masking compares with the sampler's log-probs in both; TRL falls back to the
   trainer's old log-probs without vLLM, groupo always has the engine's.
7. steps_per_generation: TRL counts gradient-accumulation micro-steps (optimizer steps per
   generation = steps_per_generation / gradient_accumulation_steps) and shuffles the batch before
   splitting it; groupo counts optimizer steps and splits whole groups in order.
"""

from __future__ import annotations

import inspect
import math
import textwrap
import types
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is a test extra: pip install -e '.[trl]'")
from trl.trainer.grpo_trainer import GRPOTrainer  # noqa: E402
from trl.trainer.utils import nanstd  # noqa: E402

from groupo.algorithms import decoupled_advantages, group_advantages, policy_loss  # noqa: E402
from groupo.algorithms.entropy import adapt_entropy_coef, applied_entropy_coef, high_entropy_mask  # noqa: E402
from groupo.algorithms.offpolicy import is_weights, off_policy_sequence_mask  # noqa: E402


def test_this_is_the_trl_release_compared():
    assert trl.__version__ == "1.16.0"


class _OneProcess:
    """accelerate's Accelerator on one process: gathers, reductions and padding are the identity."""

    sync_gradients = True
    num_processes = 1

    def gather(self, t):
        return t

    gather_for_metrics = gather

    def reduce(self, t, reduction="sum"):
        return t

    def pad_across_processes(self, t, dim=0, pad_index=0):
        return t


def _trl_loss(logp, entropy, old, adv, mask, *, loss_type="grpo", beta=0.0, ref=None, is_ratio=None,
              sampling=None, off_policy=None, top_q=1.0, entropy_coef=0.0, adaptive=None, kl_corrected=False):
    """TRL's _compute_loss on one process, no gradient accumulation, the forward pass replaced by
    (logp, entropy). `adaptive`: (target, delta, lo, hi, last_entropy) of use_adaptive_entropy."""
    B, T = logp.shape
    target, delta, lo, hi, last = adaptive or (0.2, 0.005, 0.0, 1.0, math.inf)
    args = SimpleNamespace(use_bias_correction_kl=kl_corrected, sapo_temperature_pos=1.0, sapo_temperature_neg=1.05,
                           delta=None, entropy_target=target, entropy_coef_delta=delta, entropy_coef_min=lo,
                           entropy_coef_max=hi, steps_per_generation=1)
    stub = SimpleNamespace(
        args=args, aux_loss_enabled=False, top_entropy_quantile=top_q, off_policy_mask_threshold=off_policy,
        importance_sampling_level="token", beta=beta, loss_type=loss_type, epsilon_low=0.2, epsilon_high=0.2,
        use_vllm=is_ratio is not None, vllm_importance_sampling_correction=is_ratio is not None,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1, accelerator=_OneProcess(),
        max_completion_length=T, entropy_coef=entropy_coef, use_adaptive_entropy=adaptive is not None,
        _entropy_bonus_enabled=entropy_coef != 0.0 or adaptive is not None, _last_world_entropy=last,
        _entropy_window_stats=None, _metrics=defaultdict(lambda: defaultdict(list)),
        get_off_policy_mask=GRPOTrainer.get_off_policy_mask,
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, entropy, None))
    stub.get_high_entropy_mask = types.MethodType(GRPOTrainer.get_high_entropy_mask, stub)
    inputs = {"prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1),
              "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask, "advantages": adv,
              "old_per_token_logps": old, "num_items_in_batch": mask.sum()}
    if ref is not None:
        inputs["ref_per_token_logps"] = ref
    if is_ratio is not None:
        inputs["importance_sampling_ratio"] = is_ratio
    if sampling is not None:
        inputs["sampling_per_token_logps"] = sampling
    loss = GRPOTrainer._compute_loss(stub, None, inputs)
    return loss, stub


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    B, T = 4, 5
    old = -torch.rand(B, T, generator=g) * 2 - 0.1
    logp = (old + 0.3 * torch.randn(B, T, generator=g)).requires_grad_()
    entropy = (torch.rand(B, T, generator=g) * 3).requires_grad_()
    adv = torch.tensor([1.0, -0.7, 0.4, -1.2])
    mask = torch.ones(B, T)
    mask[1, 3:] = 0
    mask[3, 1:] = 0
    return logp, entropy, old, adv, mask


def _both(trl_loss, ours, *wrt):
    """Values and gradients (w.r.t. `wrt`) of the two losses, compared."""
    g_trl = torch.autograd.grad(trl_loss, wrt, allow_unused=True, retain_graph=True)
    g_ours = torch.autograd.grad(ours, wrt, allow_unused=True, retain_graph=True)
    torch.testing.assert_close(ours, trl_loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_ours, g_trl, strict=True):
        torch.testing.assert_close(a if a is not None else torch.zeros_like(b), b if b is not None else
                                   torch.zeros_like(a), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss_type,preset,aggregation", [("grpo", "grpo", "seq_mean_token_mean"),
                                                          ("dapo", "grpo", "token_mean"),
                                                          ("sapo", "sapo", "seq_mean_token_mean")])
def test_the_policy_term_grpo_dapo_and_sapo(loss_type, preset, aggregation):
    logp, entropy, old, adv, mask = _batch()
    ours = policy_loss(logp, old, adv, mask, preset, beta=0.0, aggregation=aggregation).loss
    _both(_trl_loss(logp, entropy, old, adv, mask, loss_type=loss_type)[0], ours, logp)


def test_the_importance_corrected_kl():
    logp, entropy, old, adv, mask = _batch(1)
    ref = old + 0.2
    ours = policy_loss(logp, old, adv, mask, "grpo", beta=0.1, ref_logp_BT=ref, kl_is_corrected=True).loss
    _both(_trl_loss(logp, entropy, old, adv, mask, beta=0.1, ref=ref, kl_corrected=True)[0], ours, logp)
    plain = policy_loss(logp, old, adv, mask, "grpo", beta=0.1, ref_logp_BT=ref).loss
    _both(_trl_loss(logp, entropy, old, adv, mask, beta=0.1, ref=ref)[0], plain, logp)


@pytest.mark.parametrize("quantile", [1.0, 0.4, 0.0])
def test_the_high_entropy_mask(quantile):
    _, entropy, _, _, mask = _batch(2)
    stub = SimpleNamespace(accelerator=_OneProcess())
    theirs = GRPOTrainer.get_high_entropy_mask(stub, entropy.detach(), mask, 1 - quantile)
    assert torch.equal(high_entropy_mask(entropy, mask, quantile), theirs)


def test_the_entropy_bonus_under_token_mean():
    logp, entropy, old, adv, mask = _batch(3)
    ours = policy_loss(logp, old, adv, mask, "grpo", beta=0.0, aggregation="token_mean", entropy_BT=entropy,
                       entropy_coef=0.05).loss
    theirs, _ = _trl_loss(logp, entropy, old, adv, mask, loss_type="dapo", entropy_coef=0.05)
    _both(theirs, ours, logp, entropy)


def test_with_the_high_entropy_mask_the_bonus_differs_by_its_denominator():
    """Difference 1b: both put the bonus on the kept tokens only, and the policy term alike; TRL divides
    the bonus by the kept tokens, groupo (like the policy term) by all counted tokens."""
    logp, entropy, old, adv, mask = _batch(3)
    ours = policy_loss(logp, old, adv, mask, "grpo", beta=0.0, aggregation="token_mean", entropy_BT=entropy,
                       entropy_coef=0.05, top_entropy_quantile=0.5).loss
    theirs, _ = _trl_loss(logp, entropy, old, adv, mask, loss_type="dapo", entropy_coef=0.05, top_q=0.5)
    kept = high_entropy_mask(entropy, mask, 0.5).float()
    h_kept = (entropy.detach() * kept).sum()
    torch.testing.assert_close(ours - theirs, -0.05 * (h_kept / mask.sum() - h_kept / kept.sum()))
    no_bonus = policy_loss(logp, old, adv, mask, "grpo", beta=0.0, aggregation="token_mean", entropy_BT=entropy,
                           top_entropy_quantile=0.5).loss  # the policy terms alone agree, gradient included
    _both(_trl_loss(logp, entropy, old, adv, mask, loss_type="dapo", top_q=0.5)[0], no_bonus, logp)


def test_the_entropy_bonus_differs_by_convention_under_the_sequence_mean():
    """Difference 1: TRL's bonus is the token mean whatever the loss type; groupo's the policy term's
    own aggregation (here the sequence mean of token means), so the two differ by exactly that."""
    logp, entropy, old, adv, mask = _batch(4)
    ours = policy_loss(logp, old, adv, mask, "grpo", beta=0.0, entropy_BT=entropy, entropy_coef=0.05).loss
    theirs, _ = _trl_loss(logp, entropy, old, adv, mask, loss_type="grpo", entropy_coef=0.05)
    h = entropy.detach()
    token_mean = (h * mask).sum() / mask.sum()
    seq_mean = ((h * mask).sum(-1) / mask.sum(-1)).mean()
    torch.testing.assert_close(ours - theirs, -0.05 * (seq_mean - token_mean))


def test_adaptive_entropy_control_moves_the_coefficient_alike_step_after_step():
    logp, entropy, old, adv, mask = _batch(5)
    target, delta, lo, hi = 1.4, 0.01, 0.0, 0.025
    coef, last = torch.tensor(0.0), torch.tensor(math.inf)
    trl_coef, trl_last = 0.0, math.inf
    for scale in (0.5, 0.5, 0.5, 2.0, 0.4):  # entropy below, below, below, above, below the target
        h = (entropy * scale).detach().requires_grad_()
        theirs, stub = _trl_loss(logp, h, old, adv, mask, loss_type="dapo", entropy_coef=trl_coef,
                                 adaptive=(target, delta, lo, hi, trl_last))
        applied = applied_entropy_coef(coef, last, target)
        ours = policy_loss(logp, old, adv, mask, "grpo", beta=0.0, aggregation="token_mean", entropy_BT=h,
                           entropy_coef=applied).loss
        _both(theirs, ours, logp, h)
        measured = (h.detach() * mask).sum() / mask.sum()
        coef, last = adapt_entropy_coef(coef, measured, target=target, delta=delta, low=lo, high=hi), measured
        trl_coef, trl_last = stub.entropy_coef, stub._last_world_entropy
        assert coef.item() == pytest.approx(trl_coef) and last.item() == pytest.approx(trl_last)
        assert stub._metrics["train"]["entropy_coef"] == [pytest.approx(trl_coef)]


def _trl_block(method, first: str, last: str) -> str:
    """The lines of TRL's `method` from the one holding `first` up to (without) the one holding `last`."""
    lines = inspect.getsource(method).splitlines()
    i = next(k for k, line in enumerate(lines) if first in line)
    j = next(k for k in range(i + 1, len(lines)) if last in lines[k])
    return textwrap.dedent("\n".join(lines[i:j]))


IS_BLOCK = ("# Compute the importance sampling ratio when using vLLM", "# Compute the per-token log probabilities for "
            "the reference model")


def _trl_is_ratio(trainer_old, engine, mask, mode, lower, upper):
    ns = {"torch": torch, "math": math, "old_per_token_logps": trainer_old, "sampling_per_token_logps": engine,
          "completion_mask": mask, "tool_mask": None,
          "self": SimpleNamespace(use_vllm=True, vllm_importance_sampling_correction=True,
                                  vllm_importance_sampling_mode=mode, vllm_importance_sampling_clip_min=lower,
                                  vllm_importance_sampling_clip_max=upper)}
    exec(_trl_block(GRPOTrainer._generate_and_score_completions, *IS_BLOCK), ns)
    return ns["vllm_importance_sampling_ratio"]


@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
@pytest.mark.parametrize("lower,upper", [(None, 3.0), (0.8, 1.25), (0.5, None)])
def test_the_importance_sampling_modes_and_their_effect_on_the_loss(mode, lower, upper):
    logp, entropy, old, adv, mask = _batch(6)
    engine = old + 0.15 * torch.randn(old.shape, generator=torch.Generator().manual_seed(7))
    theirs = _trl_is_ratio(old, engine, mask, mode, lower, upper)
    ours, _ = is_weights(old, engine, mask, mode, lower=lower, upper=upper)
    torch.testing.assert_close(ours, theirs.expand_as(mask) * mask)  # difference 3: padding weighs 0 here, 1 there
    loss_theirs, _ = _trl_loss(logp, entropy, old, adv, mask, is_ratio=theirs)
    _both(loss_theirs, policy_loss(logp, old, adv, mask, "grpo", beta=0.0, is_weight_BT=ours).loss, logp)


def test_deepseek_v32_off_policy_sequence_mask_alone_and_in_the_loss():
    logp, entropy, old, adv, mask = _batch(8)
    # mean log(pi_sampler / pi) per row: 0.5, 0.05, 0.5, 0.3; rows 1 and 3 have negative advantages
    sampling = logp.detach() + torch.tensor([[0.5], [0.05], [0.5], [0.3]])
    theirs = GRPOTrainer.get_off_policy_mask(adv[:, None], logp, sampling, mask, 0.2)
    ours, _ = off_policy_sequence_mask(logp, sampling, adv, mask, 0.2)
    torch.testing.assert_close(ours * mask, theirs.expand_as(mask) * mask)  # on padding: 1 here, 0 there
    assert theirs.flatten().tolist() == [1.0, 1.0, 1.0, 0.0]  # only row 3: A < 0 and 0.3 > 0.2
    loss_theirs, _ = _trl_loss(logp, entropy, old, adv, mask, sampling=sampling, off_policy=0.2)
    _both(loss_theirs, policy_loss(logp, old, adv, mask, "grpo", beta=0.0, is_weight_BT=ours).loss, logp)


ADV_BLOCK = ('if self.multi_objective_aggregation == "sum_then_normalize":', "# Unscorable completions")


@pytest.mark.parametrize("aggregation", ["sum_then_normalize", "normalize_then_sum"])
def test_gdpo_and_grpo_advantages(aggregation):
    g = torch.Generator().manual_seed(9)
    P, G, K = 3, 4, 2
    r_PGK = torch.rand(P, G, K, generator=g).round()
    r_PGK[..., 1] *= 0.3  # a reward of narrow spread beside one of wide spread
    w = torch.tensor([1.0, 0.5])
    ns = {"torch": torch, "nanstd": nanstd, "rewards_per_func": r_PGK.reshape(P * G, K), "num_generations": G,
          "device": "cpu", "unscorable_mask": torch.zeros(P * G, dtype=torch.bool),
          "self": SimpleNamespace(multi_objective_aggregation=aggregation, reward_weights=w, scale_rewards="group",
                                  reward_funcs=[None] * K)}
    exec(_trl_block(GRPOTrainer._generate_and_score_completions, *ADV_BLOCK), ns)
    theirs = ns["advantages"].reshape(P, G)
    ours = (group_advantages((r_PGK * w).sum(-1)) if aggregation == "sum_then_normalize"
            else decoupled_advantages(r_PGK, w))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
