"""Peer check against verl 0.9.1: where verl implements the same rule, its own functions and groupo's
get the same tensors, and their values and gradients are compared.

verl's loss functions are pure torch, but `verl.trainer.ppo.core_algos` imports its data protocol
(ray, tensordict) and configuration (omegaconf), so the check needs them installed beside verl,
without verl's own pins (`.ci/run` says how); without verl it skips. verl's actor adds the entropy
bonus and the KL term to the policy term in `verl/workers/utils/losses.py` (`ppo_loss`), whose
three lines are restated in `_verl_total` (their `agg_loss`, `kl_penalty` and policy-loss functions
are verl's own).

Differences of convention found (each also in docs/algorithms.md, "Beside TRL and verl"):
1. Dual clip: verl's "vanilla" policy loss always has it (clip_ratio_c = 3); groupo's presets do
   not, and `algorithm.dual_clip: 3.0` gives verl's rule (tested both ways).
2. GRPO's advantage: verl adds epsilon 1e-6 to the group std, groupo 1e-4 (`algorithm.adv_eps`);
   a group of one gets verl's mean 0 / std 1 (its reward as advantage), groupo's 0. Equal with
   adv_eps=1e-6 and groups of two or more.
3. GDPO's batch step: verl whitens the weighted sum over tokens (each sequence counted once per
   token, Bessel's correction over tokens, 1e-8 under the square root); groupo over sequences
   (sample std, adv_eps added to it). Equal up to that scale factor (tested exactly).
4. The k3 KL: verl clamps the log-ratio to [-20, 20] and the estimate to [-10, 10]; groupo does
   neither (its k3 is expm1(log r) - log r, never clamped, so its gradient never vanishes). Equal
   wherever verl's clamps are inactive.
5. GSPO: verl's "gspo" is the sequence-token form (groupo's `gspo_token`) with the log-ratio capped
   at 10; its value is groupo's `gspo`'s too.
6. Log-ratio clamps: verl clamps log(ratio) to [-20, 20] in vanilla, SAPO and CISPO, groupo only
   from above, at 20 (LOG_RATIO_BOUND); in GSPO verl caps it at 10. Equal for ratios in between.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

verl = pytest.importorskip("verl", reason="verl is compared in .ci/run only (it brings ray and tensordict)")
from verl.trainer.ppo import core_algos  # noqa: E402
from verl.utils import torch_functional as verl_F  # noqa: E402
from verl.workers.config import ActorConfig  # noqa: E402

from groupo.algorithms import decoupled_advantages, group_advantages, policy_loss  # noqa: E402
from groupo.algorithms.kl import kl_penalty  # noqa: E402
from groupo.algorithms.presets import get_preset  # noqa: E402
from groupo.models.token_logp import token_logp  # noqa: E402

VERL_MODE = {"seq_mean_token_mean": "seq-mean-token-mean", "token_mean": "token-mean",
             "seq_sum_norm": "seq-mean-token-sum-norm"}


def test_this_is_the_verl_release_compared():
    assert verl.__version__ == "0.9.1"


def _config(preset: str, **over) -> ActorConfig:
    """verl's actor configuration with the preset's clip range and SAPO temperatures."""
    s = get_preset(preset)
    return ActorConfig(strategy="fsdp", rollout_n=4, ppo_micro_batch_size_per_gpu=4, clip_ratio=s.eps_low,
                       clip_ratio_low=s.eps_low, clip_ratio_high=s.eps_high, tau_pos=s.sapo_tau_pos,
                       tau_neg=s.sapo_tau_neg, **over)


def _batch(seed=0, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    B, T = 4, 6
    old = -torch.rand(B, T, generator=g) * 2 - 0.1
    logp = (old + spread * torch.randn(B, T, generator=g)).requires_grad_()
    entropy = (torch.rand(B, T, generator=g) * 3).requires_grad_()
    adv = torch.tensor([1.0, -0.7, 0.4, -1.2])
    mask = torch.ones(B, T)
    mask[1, 4:] = 0
    mask[3, 2:] = 0
    return logp, entropy, old, adv, mask


def _verl_total(name, logp, old, adv, mask, config, mode, *, entropy=None, ref=None):
    """verl's ppo_loss (workers/utils/losses.py): its policy loss, minus entropy_coeff x the entropy
    aggregated like it, plus kl_loss_coef x the aggregated KL; on one process (dp_size 1)."""
    loss, _ = core_algos.get_policy_loss_fn(name)(old, logp, adv[:, None].expand_as(logp), mask, mode, config)
    if entropy is not None:
        loss = loss - config.entropy_coeff * core_algos.agg_loss(entropy, mask, mode)
    if ref is not None:
        kld = core_algos.kl_penalty(logprob=logp, ref_logprob=ref, kl_penalty=config.kl_loss_type)
        loss = loss + core_algos.agg_loss(kld, mask, mode) * config.kl_loss_coef
    return loss


def _both(theirs, ours, *wrt):
    """Values and gradients (w.r.t. `wrt`) of the two losses, compared."""
    g_theirs = torch.autograd.grad(theirs, wrt, retain_graph=True)
    g_ours = torch.autograd.grad(ours, wrt, retain_graph=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_ours, g_theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,preset,aggregation", [
    ("vanilla", "grpo", "seq_mean_token_mean"), ("vanilla", "dapo", "token_mean"),
    ("vanilla", "dr_grpo", "seq_sum_norm"), ("sapo", "sapo", "seq_mean_token_mean"),
    ("cispo", "cispo", "token_mean"), ("gspo", "gspo_token", "seq_mean_token_mean"),
    ("gspo", "gspo", "seq_mean_token_mean")])
def test_the_policy_terms(name, preset, aggregation):
    """Ratios within 3 (verl's dual clip idle): the policy term of each preset, value and gradient.
    verl's gspo is the sequence-token form; groupo's gspo (the sequence form) has the same value and,
    under the sequence mean, the same gradient."""
    logp, _, old, adv, mask = _batch(seed=1, spread=0.001 if preset.startswith("gspo") else 0.3)
    theirs = _verl_total(name, logp, old, adv, mask, _config(preset), VERL_MODE[aggregation])
    ours = policy_loss(logp, old, adv, mask, preset, beta=0.0, aggregation=aggregation).loss
    _both(theirs, ours, logp)


def test_verls_dual_clip_is_groupos_algorithm_dual_clip():
    """Difference 1: a negative advantage on a token whose ratio is far above 1 + eps."""
    logp, _, old, adv, mask = _batch(seed=2)
    logp = (old + torch.where(adv[:, None] < 0, 1.6, 0.0)).requires_grad_()  # ratio e^1.6 = 4.95 > 3
    theirs = _verl_total("vanilla", logp, old, adv, mask, _config("grpo"), "seq-mean-token-mean")
    with_dual = policy_loss(logp, old, adv, mask, "grpo", beta=0.0, dual_clip=3.0).loss
    _both(theirs, with_dual, logp)
    without = policy_loss(logp, old, adv, mask, "grpo", beta=0.0).loss
    # the rows with A < 0 and every ratio above 3: -A * 4.95 without, -A * 3 with (token means, over B)
    gap = sum(-float(adv[i]) * (np.exp(1.6) - 3.0) for i in range(4) if adv[i] < 0) / 4
    torch.testing.assert_close(without - theirs, torch.tensor(gap, dtype=torch.float32), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("aggregation", ["seq_mean_token_mean", "token_mean"])
def test_the_entropy_bonus_is_aggregated_like_the_policy_term_in_both(aggregation):
    logp, entropy, old, adv, mask = _batch(seed=3)
    cfg = _config("grpo", entropy_coeff=0.05)
    theirs = _verl_total("vanilla", logp, old, adv, mask, cfg, VERL_MODE[aggregation], entropy=entropy)
    ours = policy_loss(logp, old, adv, mask, "grpo", beta=0.0, aggregation=aggregation, entropy_BT=entropy,
                       entropy_coef=0.05).loss
    _both(theirs, ours, logp, entropy)


def test_the_token_entropy_from_logits_and_its_gradient():
    g = torch.Generator().manual_seed(4)
    logits = (torch.randn(6, 50, generator=g) * 3).requires_grad_()
    ids = torch.randint(0, 50, (6,), generator=g)
    theirs = verl_F.entropy_from_logits(logits)
    _, ours = token_logp(logits, ids, with_entropy=True)
    w = torch.rand(6, generator=g)
    _both((theirs * w).sum(), (ours * w).sum(), logits)


def test_the_k3_kl_term_where_verls_clamps_are_idle():
    """Difference 4 aside: verl's low_var_kl loss (use_kl_loss) and groupo's beta x k3, aggregated alike."""
    logp, _, old, adv, mask = _batch(seed=5)
    ref = (old + 0.4 * torch.randn(old.shape, generator=torch.Generator().manual_seed(6))).detach()
    cfg = _config("grpo", use_kl_loss=True, kl_loss_coef=0.04, kl_loss_type="low_var_kl")
    theirs = _verl_total("vanilla", logp, old, adv, mask, cfg, "seq-mean-token-mean", ref=ref)
    ours = policy_loss(logp, old, adv, mask, "grpo", beta=0.04, ref_logp_BT=ref).loss
    _both(theirs, ours, logp)
    far = torch.tensor([[0.0, -15.0]])  # log r = 15: verl clamps the estimate at 10, groupo does not
    verl_k3 = core_algos.kl_penalty(logprob=far, ref_logprob=torch.zeros_like(far), kl_penalty="low_var_kl")
    assert verl_k3[0, 1] == 10.0 and kl_penalty(far, torch.zeros_like(far))[0, 1] == pytest.approx(np.expm1(15) - 15)


def _index(P, G):
    return np.repeat(np.arange(P), G)


def test_grpo_and_dr_grpo_advantages():
    """Difference 2: with verl's epsilon the group-normalised advantages agree, with std or without."""
    g = torch.Generator().manual_seed(7)
    P, G, T = 3, 4, 5
    r_PG = torch.rand(P, G, generator=g).round(decimals=1)
    r_PG[1] = 0.5  # a zero-variance group: 0 in both
    mask = torch.ones(P * G, T)
    scores = torch.zeros(P * G, T)
    scores[:, -1] = r_PG.reshape(-1)  # an outcome reward sits on the last token
    for std in (True, False):
        theirs, _ = core_algos.compute_grpo_outcome_advantage(scores.clone(), mask, _index(P, G),
                                                              norm_adv_by_std_in_grpo=std)
        ours = group_advantages(r_PG, scale="group" if std else "none", eps=1e-6)
        torch.testing.assert_close(theirs[:, 0].reshape(P, G), ours, rtol=1e-5, atol=1e-6)


def test_gdpo_advantages_differ_by_the_batch_steps_scale():
    """Difference 3: the per-reward group normalisation and the weighted sum agree; verl then whitens
    over tokens (n = B x T with Bessel's correction, sqrt(var + 1e-8)), groupo over sequences (sample
    std + eps). With equal lengths each side's scale is known, so the two agree once it is undone."""
    g = torch.Generator().manual_seed(8)
    P, G, K, T = 3, 4, 2, 5
    r_PGK = torch.rand(P, G, K, generator=g).round()
    r_PGK[..., 1] *= 0.3
    w = torch.tensor([1.0, 0.5])

    class Algo(dict):  # verl reads its keys with .get
        pass

    mask = torch.ones(P * G, T, dtype=torch.long)
    batch = {"prompts": torch.zeros(P * G, 1),
             "attention_mask": torch.cat([torch.ones(P * G, 1, dtype=torch.long), mask], 1)}
    extra = {f"r{k}": r_PGK[..., k].reshape(-1).numpy() for k in range(K)}
    theirs, _ = core_algos.compute_gdpo_outcome_advantage(
        torch.zeros(P * G, T), mask.float(), _index(P, G), config=Algo(gdpo_reward_keys=list(extra),
                                                                     gdpo_reward_weights=w.tolist()),
        non_tensor_batch=extra, batch=batch)
    eps = 1e-6
    ours = decoupled_advantages(r_PGK, w, eps=eps).reshape(-1)
    per = torch.stack([group_advantages(r_PGK[..., k], eps=eps) for k in range(K)], -1)
    summed = (per * w).sum(-1).reshape(-1)
    n = summed.numel() * T
    verl_sd = torch.sqrt(summed.var(correction=0) * n / (n - 1) + 1e-8)
    torch.testing.assert_close(theirs[:, 0] * verl_sd, ours * (summed.std() + eps), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(theirs[:, 0], ours)  # the scales do differ
