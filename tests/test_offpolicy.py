"""Engine/trainer mismatch and its corrections (importance-sampling modes, the off-policy sequence
mask): values worked out by hand."""

import math

import pytest
import torch

from groupo.algorithms import policy_loss
from groupo.algorithms.offpolicy import is_weights, off_policy_sequence_mask, sampler_mismatch


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


def test_token_truncate_is_the_capped_ratio_and_carries_no_gradient():
    trainer = torch.tensor([[0.0, -1.0, -3.0]], requires_grad=True)
    engine = torch.tensor([[-1.0, -1.0, -1.0]])
    w, m = is_weights(trainer, engine, torch.ones(1, 3), "token_truncate", upper=2.0)
    torch.testing.assert_close(w, torch.tensor([[2.0, 1.0, math.exp(-2.0)]]))  # e^1 = 2.72 capped at 2
    assert not w.requires_grad
    assert m["is_truncated_frac"].item() == pytest.approx(1 / 3) and m["is_truncated_seq_frac"].item() == 1.0
    assert m["is_weight_mean"].item() == pytest.approx((3.0 + math.exp(-2.0)) / 3)


# ratios r = pi_trainer / pi_engine of three tokens: e, 1, e^-2 (the fourth column is padding); the
# sequence ratio is their product e^(1 + 0 - 2) = e^-1 = 0.368
TRAINER = torch.tensor([[0.0, -1.0, -3.0, 5.0], [-1.0, -1.0, -1.0, 0.0]])
ENGINE = torch.tensor([[-1.0, -1.0, -1.0, -9.0], [-1.0, -1.0, -1.0, 0.0]])
MASK = torch.tensor([[1.0, 1, 1, 0], [1, 1, 1, 0]])
E, E2, E1 = math.e, math.exp(-2.0), math.exp(-1.0)


@pytest.mark.parametrize("mode,lower,upper,row0,changed", [
    ("token_truncate", 0.5, 2.0, [2.0, 1.0, 0.5], 2 / 6),        # clipped into [0.5, 2] from both sides
    ("token_truncate", None, 3.0, [E, 1.0, E2], 0.0),             # nothing beyond the bounds
    ("token_mask", 0.5, 2.0, [0.0, 1.0, 0.0], 2 / 6),             # outside [0.5, 2]: weight 0, inside: r itself
    ("token_mask", None, 2.0, [0.0, 1.0, E2], 1 / 6),
    ("sequence_truncate", 0.5, 2.0, [0.5] * 3, 3 / 6),            # e^-1 < 0.5: every token of row 0 gets 0.5
    ("sequence_truncate", 0.2, 2.0, [E1] * 3, 0.0),
    ("sequence_mask", 0.5, 2.0, [0.0] * 3, 3 / 6),                # the whole sequence drops out
    ("sequence_mask", 0.2, None, [E1] * 3, 0.0),
])
def test_every_importance_sampling_mode_by_hand(mode, lower, upper, row0, changed):
    w, m = is_weights(TRAINER, ENGINE, MASK, mode, lower=lower, upper=upper)
    # row 1: the engine agrees with the trainer, r = 1 everywhere; padding always weighs 0
    torch.testing.assert_close(w, torch.tensor([[*row0, 0.0], [1.0, 1.0, 1.0, 0.0]]))
    kind = "truncated" if mode.endswith("truncate") else "masked"
    assert m[f"is_{kind}_frac"].item() == pytest.approx(changed)
    assert m[f"is_{kind}_seq_frac"].item() == (0.5 if changed else 0.0)
    assert m["is_weight_mean"].item() == pytest.approx((sum(row0) + 3) / 6)


def test_truncation_without_bounds_is_plain_importance_sampling():
    w, m = is_weights(TRAINER, ENGINE, MASK, "token_truncate", upper=None)
    torch.testing.assert_close(w[0, :3], torch.tensor([E, 1.0, E2]))
    assert m["is_truncated_frac"].item() == 0.0


def test_no_correction_and_an_unknown_mode():
    assert is_weights(TRAINER, ENGINE, MASK, "none") == (None, {})
    with pytest.raises(ValueError, match="sequence_mask"):
        is_weights(TRAINER, ENGINE, MASK, "seq_mask")


def test_off_policy_sequence_mask_drops_negative_sequences_the_policy_drifted_from():
    logp = torch.tensor([[-1.0, -1.0], [-1.0, -1.0], [-1.0, -1.0], [-1.0, 0.0]])
    # mean log(pi_sampler / pi): 0.6, 0.6, 0.2, and 0.6 over row 3's one counted token
    sampler = torch.tensor([[-0.2, -0.6], [-0.2, -0.6], [-0.8, -0.8], [-0.4, 7.0]])
    adv = torch.tensor([-1.0, 1.0, -1.0, -0.5])
    mask = torch.tensor([[1.0, 1], [1, 1], [1, 1], [1, 0]])
    keep, m = off_policy_sequence_mask(logp, sampler, adv, mask, threshold=0.5)
    # row 0: A < 0 and 0.6 > 0.5: dropped; row 1: A > 0, kept whatever its KL; row 2: 0.2 <= 0.5, kept; row 3: dropped
    torch.testing.assert_close(keep, torch.tensor([[0.0, 0.0], [1, 1], [1, 1], [0, 1]]))
    assert m["off_policy_masked_frac"].item() == pytest.approx(3 / 7)
    assert m["off_policy_masked_seq_frac"].item() == pytest.approx(2 / 4)
    keep_all, _ = off_policy_sequence_mask(logp, sampler, adv, mask, threshold=0.7)  # a looser delta keeps all
    assert keep_all.min() == 1.0


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
