"""The algorithm core against hand-worked values and against the papers' formulas written as loops."""

import math

import pytest
import torch

from groupo.algorithms import (
    PRESETS,
    decoupled_advantages,
    group_advantages,
    kl_penalty,
    loss_denominator,
    policy_loss,
    zero_variance_groups,
)

LN = math.log


# ----------------------------------------------------------------------------- advantages


def test_group_std_unbiased_by_hand():
    # rewards 1,0,0,1: mean 0.5; unbiased var = 4 * 0.25 / 3 = 1/3; std = 0.57735
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), scale="group", std="unbiased", eps=0.0)
    s = math.sqrt(1 / 3)
    torch.testing.assert_close(adv, torch.tensor([[0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s]]))


def test_group_std_population_and_eps_by_hand():
    # population var = 0.25, std 0.5; with eps 0.5: 0.5 / (0.5 + 0.5) = 0.5
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    torch.testing.assert_close(group_advantages(r, std="population", eps=0.0), torch.tensor([[1.0, -1, -1, 1]]))
    torch.testing.assert_close(group_advantages(r, std="population", eps=0.5),
                               torch.tensor([[0.5, -0.5, -0.5, 0.5]]))


def test_no_scale_is_dr_grpo_centering():
    r = torch.tensor([[3.0, 1.0, 2.0], [0.0, 0.0, 6.0]])
    # means 2 and 2
    torch.testing.assert_close(group_advantages(r, scale="none"), torch.tensor([[1.0, -1, 0], [-2, -2, 4]]))


def test_leave_one_out_baseline_by_hand():
    # A_0 = 1 - mean(0, 0) = 1;  A_1 = 0 - mean(1, 0) = -0.5
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0]]), baseline="loo", scale="none")
    torch.testing.assert_close(adv, torch.tensor([[1.0, -0.5, -0.5]]))


def test_batch_std_uses_all_rewards():
    r = torch.tensor([[1.0, 0.0], [4.0, 2.0]])
    # group means 0.5, 3 -> centred [.5, -.5], [1, -1]; batch std (unbiased) of {1,0,4,2}:
    # mean 1.75, sq dev .5625+3.0625+5.0625+.0625 = 8.75, /3 = 2.91667
    sd = math.sqrt(8.75 / 3)
    expect = torch.tensor([[0.5, -0.5], [1.0, -1.0]]) / sd
    torch.testing.assert_close(group_advantages(r, scale="batch", eps=0.0), expect)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("eps", [0.0, 1e-4])
def test_identical_rewards_give_zero_never_nan(scale, eps):
    r = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    adv = group_advantages(r, scale=scale, eps=eps)
    assert torch.equal(adv, torch.zeros_like(r))
    assert zero_variance_groups(r).tolist() == [True, True]


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("baseline", ["mean", "loo"])
@pytest.mark.parametrize("eps", [0.0, 1e-4])
def test_equal_rewards_whose_float32_mean_is_inexact_still_give_exactly_zero(scale, baseline, eps):
    """Eight float32 rewards of 0.1 (accuracy 0 + format 0.1): their float32 mean is one rounding
    step off 0.1, so r - mean is ~1e-8, not 0; dividing by (0 + eps) gave -7.45e-5 (eps 1e-4)
    or -inf (eps 0). The group has no signal: every advantage must be exactly 0."""
    r = torch.full((2, 8), 0.1, dtype=torch.float32)
    r[1] = torch.tensor([1.1, 0.1, 0.1, 1.1, 0.1, 0.1, 0.1, 0.1])  # a group with signal beside it
    assert (r[0] - r[0].mean()).abs().max() > 0  # the premise: the residue is not zero
    adv = group_advantages(r, baseline=baseline, scale=scale, eps=eps)
    assert torch.equal(adv[0], torch.zeros(8))
    assert torch.isfinite(adv).all() and (adv[1] != 0).all()


def test_group_advantages_matches_loop():
    torch.manual_seed(0)
    r = torch.randint(0, 3, (5, 6)).float()
    adv = group_advantages(r, scale="group", std="unbiased", eps=1e-4)
    for p in range(5):
        row = r[p].tolist()
        mean = sum(row) / len(row)
        sd = math.sqrt(sum((x - mean) ** 2 for x in row) / (len(row) - 1))
        for g in range(6):
            want = 0.0 if row[g] == mean else (row[g] - mean) / (sd + 1e-4)
            assert adv[p, g].item() == pytest.approx(want, abs=1e-6)


# ----------------------------------------------------------------------------- KL


def test_kl_estimators_by_hand():
    # pi = 0.5, pi_ref = 0.25: log r = log 0.5 = -0.6931
    logp, ref = torch.tensor([[LN(0.5)]]), torch.tensor([[LN(0.25)]])
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(0.693147, abs=1e-5)
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * 0.693147**2, abs=1e-5)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 + 0.693147 - 1, abs=1e-5)
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(logp, ref, "k4")


def test_k3_is_nonnegative_and_zero_at_equality():
    torch.manual_seed(1)
    a, b = torch.randn(4, 7), torch.randn(4, 7)
    assert (kl_penalty(a, b, "k3") >= 0).all()
    assert torch.equal(kl_penalty(a, a, "k3"), torch.zeros_like(a))


# ----------------------------------------------------------------------------- losses by hand


def _one_seq(r1, r2, adv):
    """One sequence of two tokens whose ratios are r1, r2 (old log-prob 0)."""
    logp = torch.tensor([[LN(r1), LN(r2)]], requires_grad=True)
    return logp, torch.zeros(1, 2), torch.tensor([adv]), torch.ones(1, 2)


def test_grpo_clip_positive_advantage_by_hand():
    # ratios 1.5, 0.5, A = 1, eps 0.2: min(1.5, 1.2) = 1.2; min(0.5, 0.8) = 0.5 -> loss -(1.2+0.5)/2
    logp, old, adv, mask = _one_seq(1.5, 0.5, 1.0)
    out = policy_loss(logp, old, adv, mask, preset="grpo", beta=0.0)
    assert out.loss.item() == pytest.approx(-0.85, abs=1e-6)
    assert out.metrics["clip_high_frac"].item() == pytest.approx(0.5)
    assert out.metrics["clip_low_frac"].item() == 0.0
    assert out.metrics["ratio_min"].item() == pytest.approx(0.5)
    assert out.metrics["ratio_max"].item() == pytest.approx(1.5)
    assert out.metrics["ratio_mean"].item() == pytest.approx(1.0)
    out.loss.backward()
    # clipped token has no gradient; unclipped: d/dlogp of -(rho * A)/2 = -rho/2 = -0.25
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.25]]))


def test_grpo_clip_negative_advantage_and_dual_clip_by_hand():
    # A = -1: token 1 min(-1.5, -1.2) = -1.5 -> 1.5; token 2 min(-0.5, -0.8) = -0.8 -> 0.8
    logp, old, adv, mask = _one_seq(1.5, 0.5, -1.0)
    out = policy_loss(logp, old, adv, mask, preset="grpo", beta=0.0)
    assert out.loss.item() == pytest.approx((1.5 + 0.8) / 2, abs=1e-6)
    assert out.metrics["clip_low_frac"].item() == pytest.approx(0.5)
    # dual clip c = 3 caps a ratio of 5 at 3|A|: token 1 -> 3, token 2 (0.5) -> 0.8
    logp, old, adv, mask = _one_seq(5.0, 0.5, -1.0)
    out = policy_loss(logp, old, adv, mask, preset="grpo", beta=0.0, dual_clip=3.0)
    assert out.loss.item() == pytest.approx((3.0 + 0.8) / 2, abs=1e-6)


def test_kl_term_adds_beta_times_k3():
    # ratio 1 everywhere, A = 0: loss is beta * mean k3; pi_ref/pi = 0.5 -> k3 = 0.5 + ln 2 - 1
    logp = torch.zeros(1, 2, requires_grad=True)
    ref = torch.full((1, 2), LN(0.5))
    out = policy_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, 2), preset="grpo", ref_logp_BT=ref)
    k3 = 0.5 + LN(2) - 1
    assert out.loss.item() == pytest.approx(0.04 * k3, abs=1e-7)
    assert out.metrics["kl"].item() == pytest.approx(k3, abs=1e-6)
    with pytest.raises(ValueError, match="ref_logp_BT"):
        policy_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, 2), preset="grpo")


def test_aggregations_by_hand():
    # two sequences, lengths 1 and 3, every token loss = -A*1 (ratio 1): A = 1 and 2
    logp = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 0, 0], [1, 1, 1]])
    adv = torch.tensor([1.0, 2.0])
    seq = policy_loss(logp, logp, adv, mask, beta=0.0, aggregation="seq_mean_token_mean").loss
    tok = policy_loss(logp, logp, adv, mask, beta=0.0, aggregation="token_mean").loss
    drg = policy_loss(logp, logp, adv, mask, beta=0.0, aggregation="seq_sum_norm", max_len=4).loss
    assert seq.item() == pytest.approx(-(1 + 2) / 2)                # mean of token means
    assert tok.item() == pytest.approx(-(1 + 2 * 3) / 4)            # 4 tokens in all
    assert drg.item() == pytest.approx(-((1 / 4) + (6 / 4)) / 2)    # sums over 4, mean over 2


def test_gspo_sequence_ratio_by_hand():
    # token ratios 1.5, 0.5: s = exp((ln 1.5 + ln 0.5)/2) = sqrt(0.75) = 0.8660; eps 3e-4/4e-4
    # A = 1: min(0.866, clip(0.866, 0.9997, 1.0004) = 0.9997) = 0.866 -> loss -0.866
    logp, old, adv, mask = _one_seq(1.5, 0.5, 1.0)
    out = policy_loss(logp, old, adv, mask, preset="gspo")
    assert out.loss.item() == pytest.approx(-math.sqrt(0.75), abs=1e-6)
    # A = -1: min(-0.866, -0.9997) = -0.9997 -> clipped low
    out = policy_loss(logp, old, -adv, mask, preset="gspo")
    assert out.loss.item() == pytest.approx(1 - 3e-4, abs=1e-6)
    assert out.metrics["clip_low_frac"].item() == 1.0


def test_cispo_by_hand():
    # ratios 1.5 and 6 with eps_high 4 -> weights 1.5, 5 (stop-gradient); A = 1; token mean
    # loss = -(1.5 * ln 1.5 + 5 * ln 6) / 2; gradient w.r.t. logp = -[1.5, 5] / 2
    logp, old, adv, mask = _one_seq(1.5, 6.0, 1.0)
    out = policy_loss(logp, old, adv, mask, preset="cispo")
    assert out.loss.item() == pytest.approx(-(1.5 * LN(1.5) + 5 * LN(6)) / 2, abs=1e-6)
    out.loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.75, -2.5]]))
    assert out.metrics["clip_high_frac"].item() == 0.5


def test_unknown_override_and_preset_are_clear():
    x = torch.zeros(1, 1)
    with pytest.raises(TypeError, match="eps_hgh"):
        policy_loss(x, x, torch.zeros(1), torch.ones(1, 1), eps_hgh=0.3)
    with pytest.raises(ValueError, match="valid presets"):
        policy_loss(x, x, torch.zeros(1), torch.ones(1, 1), preset="ppo")


# ----------------------------------------------------------------------------- the formulas as loops


def _loop_loss(logp, old, adv, mask, s, beta, ref=None, max_len=None):
    """The papers' objectives, negated, one token at a time (independent of the library)."""
    B, T = logp.shape
    lo, hi = 1 - s.eps_low, 1 + s.eps_high
    seq_terms, all_tokens, n_tokens = [], 0.0, 0
    for i in range(B):
        toks = [t for t in range(T) if mask[i, t] > 0]
        log_s = sum(logp[i, t] - old[i, t] for t in toks) / max(len(toks), 1)
        seq_sum = 0.0
        for t in toks:
            a = adv[i] if adv.ndim == 1 else adv[i, t]
            rho = math.exp(logp[i, t] - old[i, t]) if s.ratio_level == "token" else math.exp(log_s)
            if s.loss_type == "cispo":
                term = -min(max(rho, lo), hi) * a * logp[i, t]
            elif s.loss_type == "sapo":  # SAPO eq.: f(r) = sigmoid(tau (r - 1)) * 4 / tau
                tau = s.sapo_tau_pos if a > 0 else s.sapo_tau_neg
                term = -4 / tau / (1 + math.exp(-tau * (rho - 1))) * a
            else:
                term = -min(rho * a, min(max(rho, lo), hi) * a)
                if s.dual_clip is not None and a < 0:
                    term = min(term, -s.dual_clip * a)
            if beta:
                lr = ref[i, t] - logp[i, t]
                term += beta * (math.exp(lr) - lr - 1)
            seq_sum += term
        all_tokens += seq_sum
        n_tokens += len(toks)
        seq_terms.append(seq_sum / max(len(toks), 1) if s.aggregation == "seq_mean_token_mean"
                         else seq_sum / (max_len or T))
    if s.aggregation == "token_mean":
        return all_tokens / max(n_tokens, 1)
    return sum(seq_terms) / B


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_every_preset_matches_the_loop(preset, dual_clip):
    torch.manual_seed(7)
    B, T = 4, 5
    old = torch.randn(B, T) * 0.3 - 1.5
    logp = old + torch.randn(B, T) * (0.3 if preset not in ("gspo", "gspo_token") else 3e-4)
    ref = old + torch.randn(B, T) * 0.2
    adv = torch.randn(B)
    mask = torch.ones(B, T)
    mask[0, 3:] = 0
    mask[2, 1:] = 0
    s = PRESETS[preset].with_overrides(dual_clip=dual_clip)
    beta = 0.1
    got = policy_loss(logp, old, adv, mask, preset=preset, ref_logp_BT=ref, beta=beta, max_len=6,
                      dual_clip=dual_clip).loss
    want = _loop_loss(logp.double(), old.double(), adv.double(), mask, s, beta, ref.double(), max_len=6)
    assert got.item() == pytest.approx(float(want), rel=1e-5, abs=1e-6)


# ----------------------------------------------------------------------------- reductions


def test_dapo_with_equal_bounds_equals_grpo_token_surrogate():
    torch.manual_seed(3)
    old = torch.randn(3, 4)
    logp = old + 0.4 * torch.randn(3, 4)
    adv, mask = torch.randn(3), torch.ones(3, 4)
    # same aggregation so that only the clip bounds could differ
    dapo = policy_loss(logp, old, adv, mask, preset="dapo", eps_high=0.2, aggregation="seq_mean_token_mean")
    grpo = policy_loss(logp, old, adv, mask, preset="grpo", beta=0.0)
    torch.testing.assert_close(dapo.loss, grpo.loss)
    # and the per-token surrogate itself: with all-ones masks token_mean is also the same total
    dapo_tok = policy_loss(logp, old, adv, mask, preset="dapo", eps_high=0.2)
    grpo_tok = policy_loss(logp, old, adv, mask, preset="grpo", beta=0.0, aggregation="token_mean")
    torch.testing.assert_close(dapo_tok.loss, grpo_tok.loss)


def test_gspo_on_length_one_sequences_equals_token_level():
    torch.manual_seed(4)
    old = torch.randn(6, 1)
    logp = (old + 5e-4 * torch.randn(6, 1)).requires_grad_()
    adv, mask = torch.randn(6), torch.ones(6, 1)
    g = policy_loss(logp, old, adv, mask, preset="gspo")
    t = policy_loss(logp, old, adv, mask, preset="gspo", ratio_level="token")
    torch.testing.assert_close(g.loss, t.loss)
    (gg,) = torch.autograd.grad(g.loss, logp)
    (tg,) = torch.autograd.grad(t.loss, logp)
    torch.testing.assert_close(gg, tg)


def _grads(preset, logp, old, adv, mask):
    x = logp.clone().requires_grad_()
    out = policy_loss(x, old, adv, mask, preset=preset)
    (g,) = torch.autograd.grad(out.loss, x)
    return out.loss.detach(), g


def test_gspo_token_equals_gspo_with_sequence_advantages():
    torch.manual_seed(5)
    old = torch.randn(3, 4)
    logp = old + 1e-4 * torch.randn(3, 4)
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    adv = torch.randn(3)
    v1, g1 = _grads("gspo", logp, old, adv, mask)
    v2, g2 = _grads("gspo_token", logp, old, adv, mask)
    torch.testing.assert_close(v1, v2)
    torch.testing.assert_close(g1, g2)


def test_gspo_token_differs_in_gradient_with_per_token_advantages():
    torch.manual_seed(6)
    old = torch.randn(2, 3)
    logp = old + 1e-4 * torch.randn(2, 3)
    mask = torch.ones(2, 3)
    adv_BT = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.3, -1.0]])
    v1, g1 = _grads("gspo", logp, old, adv_BT, mask)
    v2, g2 = _grads("gspo_token", logp, old, adv_BT, mask)
    torch.testing.assert_close(v1, v2)  # same value ...
    assert not torch.allclose(g1, g2)  # ... different gradient
    # GSPO-token's gradient is token t's own advantage: d/dlogp_t = -s A_t / |o| (unclipped, s ~ 1)
    s = torch.exp(((logp - old) * mask).sum(-1, keepdim=True) / 3)
    torch.testing.assert_close(g2, -s * adv_BT / 3 / 2)
    # GSPO's spreads the mean advantage over all tokens: -s mean_t(A) / |o|
    torch.testing.assert_close(g1, (-s * adv_BT.mean(-1, keepdim=True) / 3 / 2).expand(2, 3))


# ----------------------------------------------------------------------------- micro-batching


@pytest.mark.parametrize("preset", list(PRESETS))
def test_micro_batches_sum_to_the_full_batch_loss(preset):
    torch.manual_seed(8)
    B, T = 6, 5
    old = torch.randn(B, T)
    logp = old + 0.1 * torch.randn(B, T)
    mask = (torch.rand(B, T) > 0.3).float()
    mask[:, 0] = 1
    adv = torch.randn(B)
    full = policy_loss(logp, old, adv, mask, preset=preset, beta=0.0, max_len=T).loss
    agg = PRESETS[preset].aggregation
    denom = loss_denominator(mask, agg)
    parts = [policy_loss(logp[i:i + 2], old[i:i + 2], adv[i:i + 2], mask[i:i + 2], preset=preset,
                         beta=0.0, max_len=T, denominator=denom).loss for i in range(0, B, 2)]
    torch.testing.assert_close(sum(parts), full)


def test_masked_tokens_never_contribute():
    torch.manual_seed(9)
    old = torch.randn(2, 4)
    logp = (old + 0.1 * torch.randn(2, 4)).requires_grad_()
    mask = torch.tensor([[1.0, 1, 0, 0], [1, 1, 1, 0]])
    adv = torch.tensor([1.0, -1.0])
    a = policy_loss(logp, old, adv, mask, beta=0.0)
    garbage = logp.detach().clone()
    garbage[mask == 0] = 50.0
    b = policy_loss(garbage, old, adv, mask, beta=0.0)
    torch.testing.assert_close(a.loss, b.loss)
    a.loss.backward()
    assert torch.equal(logp.grad[mask == 0], torch.zeros(3))


def test_first_step_ratio_is_one():
    logp = torch.randn(3, 4)
    out = policy_loss(logp, logp.detach(), torch.randn(3), torch.ones(3, 4), beta=0.0)
    for k in ("ratio_mean", "ratio_min", "ratio_max"):
        assert out.metrics[k].item() == 1.0
    assert out.metrics["clip_low_frac"].item() == out.metrics["clip_high_frac"].item() == 0.0


# ----------------------------------------------------------------------------- SAPO, corrected KL, GDPO


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("a,tau", [(1.0, 1.0), (-2.0, 1.05)])
def test_sapo_soft_gate_value_and_gradient_by_hand(a, tau):
    old = torch.tensor([[-1.5]])
    logp = (old + 0.5).requires_grad_()  # ratio e^0.5 = 1.6487: far outside any clip range
    out = policy_loss(logp, old, torch.tensor([a]), torch.ones(1, 1), preset="sapo")
    r = math.exp(0.5)
    g = _sigmoid(tau * (r - 1))
    assert out.loss.item() == pytest.approx(-4 / tau * g * a, rel=1e-6)  # f(r) = 4 / tau sigmoid(tau (r - 1))
    out.loss.backward()
    # d/dlogp -f(r) A = -A f'(r) r, f'(r) = 4 sigmoid (1 - sigmoid): small but never 0, unlike the clip
    assert logp.grad.item() == pytest.approx(-a * 4 * g * (1 - g) * r, rel=1e-5)
    assert out.metrics["clip_low_frac"].item() == 0 and out.metrics["clip_high_frac"].item() == 0


def test_sapo_on_policy_is_the_plain_policy_gradient():
    """f'(1) = 1: at ratio 1 SAPO's gradient is GRPO's (where neither clip acts); its value is f(1) = 2 / tau
    times the advantage, not GRPO's 1 times it (a constant: no gradient)."""
    torch.manual_seed(0)
    logp = (-torch.rand(3, 4)).requires_grad_()
    adv, mask = torch.tensor([1.0, -0.5, 2.0]), torch.ones(3, 4)
    sapo = policy_loss(logp, logp.detach(), adv, mask, preset="sapo")
    (g_sapo,) = torch.autograd.grad(sapo.loss, logp)
    grpo = policy_loss(logp, logp.detach(), adv, mask, preset="grpo", beta=0.0)
    (g_grpo,) = torch.autograd.grad(grpo.loss, logp)
    torch.testing.assert_close(g_sapo, g_grpo)
    tau = torch.tensor([1.0, 1.05, 1.0])  # tau_pos for A > 0, tau_neg otherwise
    torch.testing.assert_close(sapo.loss, -(2 / tau * adv).mean())


def test_importance_corrected_kl_value_and_gradient_by_hand():
    """DeepSeek-V3.2: rho k3, whose gradient is rho (log pi - log pi_ref), the unbiased gradient of
    KL(pi || pi_ref) from samples of pi_old; k3's own gradient is 1 - pi_ref / pi."""
    old, ref = torch.tensor([[-1.2]]), torch.tensor([[-0.8]])
    kw = dict(preset="grpo", beta=1.0, ref_logp_BT=ref)
    rho, log_r = math.exp(0.2), 0.2  # log pi - log pi_old = 0.2; log pi_ref - log pi = 0.2
    k3 = math.exp(log_r) - log_r - 1
    zero = torch.zeros(1)  # no policy term: only the KL moves the loss
    logp = torch.tensor([[-1.0]], requires_grad=True)
    out = policy_loss(logp, old, zero, torch.ones(1, 1), kl_is_corrected=True, **kw)
    assert out.loss.item() == pytest.approx(rho * k3, rel=1e-5)
    assert out.metrics["kl"].item() == pytest.approx(rho * k3, rel=1e-5)
    out.loss.backward()
    assert logp.grad.item() == pytest.approx(rho * (-1.0 - -0.8), rel=1e-5)
    plain = torch.tensor([[-1.0]], requires_grad=True)
    policy_loss(plain, old, zero, torch.ones(1, 1), **kw).loss.backward()
    assert plain.grad.item() == pytest.approx(1 - math.exp(log_r), rel=1e-5)


def test_gdpo_normalises_each_reward_then_the_batch_by_hand():
    # group 0 scores (1, 1) and (0, 0) on two rewards, group 1 (1, 0) and (0, 0)
    r = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]])
    w = torch.tensor([1.0, 1.0])
    # GRPO sums first: sums (2, 0) and (1, 0) both become +-1/sqrt(2) (unbiased std of two values)
    grpo = group_advantages((r * w).sum(-1), eps=0.0)
    torch.testing.assert_close(grpo, torch.tensor([[1.0, -1.0], [1.0, -1.0]]) / math.sqrt(2))
    # GDPO: per reward +-1/sqrt(2) (reward 2 of group 1 is constant: 0), summed: +-sqrt(2), +-1/sqrt(2);
    # batch std (unbiased) of the four sums: sqrt((2 + 2 + .5 + .5) / 3) = sqrt(5/3)
    gdpo = decoupled_advantages(r, w, eps=0.0)
    torch.testing.assert_close(gdpo, torch.tensor([[math.sqrt(6 / 5), -math.sqrt(6 / 5)],
                                                   [math.sqrt(3 / 10), -math.sqrt(3 / 10)]]))


def test_gdpo_reductions_and_constant_groups():
    torch.manual_seed(1)
    r = torch.rand(3, 4, 2).round()
    r[2] = torch.tensor([1.0, 0.5])  # every reward constant in group 2: exactly 0, never NaN
    w = torch.tensor([1.0, 0.5])
    # without std division, normalising each reward first is centring the weighted sum
    torch.testing.assert_close(decoupled_advantages(r, w, scale="none"), group_advantages((r * w).sum(-1),
                                                                                          scale="none"))
    one = r[..., :1]  # one reward: GRPO's advantages, then normalised over the batch
    a = group_advantages(one[..., 0])
    torch.testing.assert_close(decoupled_advantages(one, torch.ones(1)), (a - a.mean()) / (a.std() + 1e-4))
    out = decoupled_advantages(r, w, eps=0.0)
    assert out[2].eq(0).all() and out.isfinite().all()
    with pytest.raises(ValueError, match=r"\(P, G, K\)"):
        decoupled_advantages(r[0], w)
