"""Engine/trainer mismatch and truncated importance sampling: values worked out by hand."""

import math

import torch

from groupo.algorithms import policy_loss
from groupo.algorithms.offpolicy import sampler_mismatch, tis_weights


def test_mismatch_is_the_mean_abs_difference_and_the_k3_kl_over_real_tokens():
    trainer = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]])
    engine = torch.tensor([[-1.5, -2.0, -2.0], [-0.5, -1.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the 9.0 is padding
    m = sampler_mismatch(trainer, engine, mask)
    # |diffs| over real tokens: 0.5, 0, 1, 0, 0.5 -> mean 0.4
    assert math.isclose(m["abs_diff"].item(), 2.0 / 5, rel_tol=1e-6)
    # k3 with r = pi_trainer / pi_engine = exp(trainer - engine): r - 1 - log r per token
    d = [0.5, 0.0, -1.0, 0.0, 0.5]
    expect = sum(math.exp(x) - 1 - x for x in d) / 5
    assert math.isclose(m["kl"].item(), expect, rel_tol=1e-6)
    same = sampler_mismatch(trainer, trainer, mask)
    assert same["abs_diff"].item() == 0.0 and same["kl"].item() == 0.0


def test_tis_weights_are_the_capped_ratio_and_carry_no_gradient():
    trainer = torch.tensor([[0.0, -1.0, -3.0]], requires_grad=True)
    engine = torch.tensor([[-1.0, -1.0, -1.0]])
    w = tis_weights(trainer, engine, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[2.0, 1.0, math.exp(-2.0)]]))  # e^1 = 2.72 capped at 2
    assert not w.requires_grad


def test_tis_weights_scale_each_tokens_policy_term_but_not_the_kl():
    torch.manual_seed(0)
    logp = (-torch.rand(2, 3)).requires_grad_()
    old, ref = logp.detach() - 0.1, logp.detach() + 0.2
    adv, mask = torch.tensor([1.0, -0.5]), torch.ones(2, 3)
    w = torch.tensor([[1.0, 0.5, 2.0], [0.25, 1.0, 1.0]])
    kw = dict(preset="grpo", beta=0.0, aggregation="token_mean")
    weighted = policy_loss(logp, old, adv, mask, is_weight_BT=w, **kw)
    plain_BT = [policy_loss(logp[b:b + 1, t:t + 1], old[b:b + 1, t:t + 1], adv[b:b + 1], mask[b:b + 1, t:t + 1],
                            **kw).loss for b in range(2) for t in range(3)]
    expect = sum(w.flatten()[i] * plain_BT[i] for i in range(6)) / 6  # token mean of w * l_t
    torch.testing.assert_close(weighted.loss, expect)
    # beta > 0: the KL term is added unweighted
    with_kl = policy_loss(logp, old, adv, mask, is_weight_BT=w, ref_logp_BT=ref, preset="grpo", beta=0.1,
                          aggregation="token_mean")
    kl = torch.expm1(ref - logp) - (ref - logp)
    torch.testing.assert_close(with_kl.loss, expect + 0.1 * kl.mean())
