"""Entropy control against hand-worked values: the high-entropy token mask ("Beyond the 80/20 Rule"),
the entropy bonus aggregated like the policy term, and adaptive entropy control (TRL / Skywork-OR1)."""

import math

import pytest
import torch

from groupo.algorithms import policy_loss
from groupo.algorithms.entropy import adapt_entropy_coef, applied_entropy_coef, high_entropy_mask


def test_high_entropy_mask_keeps_the_tokens_at_or_above_the_quantile():
    entropy = torch.tensor([[0.1, 0.5, 0.9, 0.3], [0.7, 5.0, 5.0, 5.0]])
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 0, 0, 0]])  # the 5.0s are padding: never counted, never kept
    # counted values sorted 0.1 0.3 0.5 0.7 0.9; the 0.6 quantile sits at position 0.6 * 4 = 2.4:
    # 0.5 + 0.4 * (0.7 - 0.5) = 0.58, so 0.9 and 0.7 stay: the top 40 %
    keep = high_entropy_mask(entropy, mask, 0.4)
    assert keep.tolist() == [[False, False, True, False], [True, False, False, False]]
    assert high_entropy_mask(entropy, mask, 1.0).tolist() == mask.bool().tolist()  # 1 keeps every counted token
    assert high_entropy_mask(entropy, mask, 0.0).sum() == 1  # 0 keeps only the highest
    assert not high_entropy_mask(entropy, torch.zeros_like(mask), 0.2).any()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        high_entropy_mask(entropy, mask, 1.5)


def _batch():
    torch.manual_seed(3)
    old = -torch.rand(2, 3) - 0.5
    logp = (old + 0.1 * torch.randn(2, 3)).requires_grad_()
    adv, mask = torch.tensor([1.0, -2.0]), torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    entropy = torch.tensor([[0.2, 1.0, 0.4], [2.0, 0.6, 9.0]], requires_grad=True)
    return logp, old, adv, mask, entropy


@pytest.mark.parametrize("aggregation", ["seq_mean_token_mean", "token_mean", "seq_sum_norm"])
def test_entropy_bonus_is_minus_coef_times_the_entropy_aggregated_like_the_policy_term(aggregation):
    logp, old, adv, mask, entropy = _batch()
    kw = dict(preset="grpo", beta=0.0, aggregation=aggregation, max_len=4)
    plain = policy_loss(logp, old, adv, mask, entropy_BT=entropy, **kw)
    out = policy_loss(logp, old, adv, mask, entropy_BT=entropy, entropy_coef=0.1, **kw)
    # by hand: row 0 has entropies .2 1 .4 (3 tokens), row 1 has 2 .6 (2 tokens; the 9.0 is padding)
    expect_h = {"seq_mean_token_mean": (1.6 / 3 + 2.6 / 2) / 2, "token_mean": 4.2 / 5,
                "seq_sum_norm": (1.6 / 4 + 2.6 / 4) / 2}[aggregation]
    assert out.loss.item() == pytest.approx(plain.loss.item() - 0.1 * expect_h, abs=1e-6)
    assert out.metrics["entropy_bonus"].item() == pytest.approx(-0.1 * expect_h, rel=1e-6)
    out.loss.backward()
    # the bonus's gradient reaches the entropy: -c / (its aggregation's weight of each token)
    w = {"seq_mean_token_mean": [[1 / 6] * 3, [1 / 4, 1 / 4, 0]], "token_mean": [[0.2] * 3, [0.2, 0.2, 0]],
         "seq_sum_norm": [[1 / 8] * 3, [1 / 8, 1 / 8, 0]]}[aggregation]
    torch.testing.assert_close(entropy.grad, -0.1 * torch.tensor(w))


def test_a_tensor_coefficient_is_the_same_as_a_float_and_zero_is_off():
    logp, old, adv, mask, entropy = _batch()
    a = policy_loss(logp, old, adv, mask, entropy_BT=entropy, entropy_coef=0.05, beta=0.0).loss
    b = policy_loss(logp, old, adv, mask, entropy_BT=entropy, entropy_coef=torch.tensor(0.05), beta=0.0).loss
    torch.testing.assert_close(a, b)
    off = policy_loss(logp, old, adv, mask, entropy_BT=entropy, beta=0.0)
    assert "entropy_bonus" not in off.metrics
    with pytest.raises(ValueError, match="needs entropy_BT"):
        policy_loss(logp, old, adv, mask, entropy_coef=0.1, beta=0.0)


def test_top_entropy_quantile_keeps_the_policy_term_and_the_bonus_on_the_high_entropy_tokens_only():
    logp, old, adv, mask, entropy = _batch()
    # counted entropies .2 1 .4 2 .6; the 0.6 quantile: sorted .2 .4 .6 1 2, position 2.4 -> .6 + .4 * .4 = .76;
    # kept: 1.0 (row 0, t 1) and 2.0 (row 1, t 0)
    out = policy_loss(logp, old, adv, mask, entropy_BT=entropy, top_entropy_quantile=0.4, entropy_coef=0.1,
                      beta=0.0, aggregation="token_mean")
    keep = torch.tensor([[0.0, 1, 0], [1, 0, 0]])
    one = lambda b, t: policy_loss(logp[b:b + 1, t:t + 1], old[b:b + 1, t:t + 1], adv[b:b + 1],
                                   torch.ones(1, 1), beta=0.0).loss
    expect = (one(0, 1) + one(1, 0) - 0.1 * (1.0 + 2.0)) / 5  # the token mean still divides by all 5 tokens
    torch.testing.assert_close(out.loss, expect)
    assert out.metrics["entropy_kept_frac"].item() == pytest.approx(0.4)
    assert out.metrics["entropy_kept"].item() == pytest.approx(1.5)
    out.loss.backward()
    assert (logp.grad * (1 - keep)).abs().max() == 0  # dropped tokens get no policy gradient
    assert logp.grad[keep.bool()].abs().min() > 0


def test_adaptive_coefficient_moves_by_delta_within_its_bounds_and_applies_below_the_target():
    t = torch.tensor
    step = lambda c, h: adapt_entropy_coef(t(c), t(h), target=0.2, delta=0.005, low=0.0, high=0.012).item()
    assert step(0.01, 0.1) == pytest.approx(0.012)   # below target: up by delta, capped at high
    assert step(0.004, 0.2) == pytest.approx(0.009)  # at the target counts as below (TRL: <=)
    assert step(0.01, 0.3) == pytest.approx(0.005)   # above: down by delta
    assert step(0.002, 0.3) == 0.0                   # ... not below low
    assert applied_entropy_coef(t(0.01), t(math.inf), 0.2).item() == 0.0  # the first step: no bonus
    assert applied_entropy_coef(t(0.01), t(0.15), 0.2).item() == pytest.approx(0.01)
    assert applied_entropy_coef(t(0.01), t(0.25), 0.2).item() == 0.0


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_the_written_out_entropy_gradient_matches_autograd(temperature):
    """The update's own entropy (groupo.models.token_logp) carries the bonus's gradient, -p (log p + H) / T
    per logit; one row has a logit so low that its probability underflows to 0 (no NaN from 0 log 0)."""
    from groupo.models.token_logp import token_logp

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 40, generator=g) * 3
    logits[2, 7] = -1e4
    ids = torch.randint(0, 40, (5,), generator=g)
    w_logp, w_ent = torch.randn(5, generator=g), torch.randn(5, generator=g)
    grads = []
    for written_out in (True, False):
        x = logits.clone().requires_grad_(True)
        if written_out:
            logp, ent = token_logp(x, ids, temperature, with_entropy=True)
        else:
            full = torch.log_softmax(x / temperature, dim=-1)
            logp, ent = full.gather(-1, ids[:, None])[:, 0], -(full.exp() * full).sum(-1)
        ((w_logp * logp).sum() + (w_ent * ent).sum()).backward()
        grads.append(x.grad)
    assert grads[0].isfinite().all()
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)
    x = logits.clone().requires_grad_(True)  # the entropy alone
    _, ent = token_logp(x, ids, temperature, with_entropy=True)
    ent.sum().backward()
    p = torch.softmax(logits / temperature, -1)
    h = -(torch.xlogy(p, p)).sum(-1, keepdim=True)
    torch.testing.assert_close(x.grad, -p * (torch.log(p.clamp(min=1e-30)) + h) / temperature, atol=1e-5, rtol=1e-4)
