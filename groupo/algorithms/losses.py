"""The GRPO-family policy loss: one parameterised function, variants are presets.

Notation (docs/algorithms.md): B sequences, T completion tokens each (right-padded, `mask_BT` marks
real tokens), rho_it = pi(o_it) / pi_old(o_it).

    clip  (GRPO, DAPO)  l_it = -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A) + beta KL_it
          dual clip      for A < 0: l_it = min(l_it, -c A)                    (Ye et al. 2020)
    GSPO  rho replaced by s_i = exp(1/|o_i| sum_t log rho_it)                  (arXiv:2507.18071)
    GSPO-token           s_it = sg[s_i] pi(o_it) / sg[pi(o_it)]: s_i's value, per-token gradient
    CISPO l_it = -sg[clip(rho, 1-eps_low, 1+eps_high)] A log pi(o_it) + beta KL_it (arXiv:2506.13585)
    SAPO  l_it = -f(rho) A with the soft gate f(r) = sigmoid(tau (r - 1)) 4 / tau, tau = tau_pos for
          A > 0, tau_neg otherwise: f'(1) = 1, so on-policy its gradient is the plain policy
          gradient (its value, 2/tau A, differs from GRPO's by a constant), and the gradient fades
          smoothly as rho leaves 1 instead of stopping at a clip bound (Soft Adaptive Policy
          Optimization, arXiv:2511.20347)

Around the policy term l_it, in this order:
    is_weight_BT      multiplies it (the sampler/trainer correction, algorithms.offpolicy)
    top_entropy_quantile   keeps it only on the highest-entropy share of the tokens passed in (in the
                      trainer: a micro-batch's; algorithms.entropy)
    + beta KL_it      the KL to the reference; kl_is_corrected multiplies KL_it by the token ratio
                      rho_it (DeepSeek-V3.2's "unbiased KL estimate", arXiv:2512.02556: the samples
                      come from pi_old, so E_pi_old[rho k3] is unbiased for KL(pi || pi_ref))
    - c H_it          the entropy bonus (entropy_coef c), on the tokens the policy term keeps
all aggregated together, so the returned loss is the whole objective the optimizer minimises.

Aggregation of the per-token losses l_it into one scalar:
    seq_mean_token_mean  1/B sum_i 1/|o_i| sum_t l_it        (GRPO)
    token_mean           1/sum_i |o_i| sum_i sum_t l_it      (DAPO, CISPO)
    seq_sum_norm         1/B sum_i 1/max_len sum_t l_it      (Dr.GRPO)

`aggregate` owns both halves of that normalisation (what is summed, what it is divided by). For
gradient accumulation pass `denominator` = `loss_denominator(full batch mask)` to every micro-batch
call: the summed micro-batch losses then equal the full-batch loss exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from groupo.algorithms.entropy import high_entropy_mask
from groupo.algorithms.kl import kl_penalty
from groupo.algorithms.presets import LossSettings, get_preset


@dataclass
class LossOutput:
    loss: torch.Tensor                   # scalar, differentiable w.r.t. logp_BT
    metrics: dict[str, torch.Tensor]     # detached scalars


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `x` where `mask` is true; 0 where nothing is masked in."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "seq_sum_norm")

# exp() of a log-ratio above ~88 is inf in float32, and one wild token (a log-prob gone to -1e4 in
# the old policy) would make the loss inf and every gradient NaN. Clamped at 20 (a ratio of 4.9e8,
# far outside any clip range) the clipped objectives are unchanged wherever they have a gradient.
LOG_RATIO_BOUND = 20.0


def loss_denominator(mask_BT: torch.Tensor, aggregation: str) -> torch.Tensor:
    """The count the aggregation divides by: counted tokens for token_mean, sequences otherwise."""
    if aggregation == "token_mean":
        return mask_BT.sum().clamp(min=1).float()
    return torch.tensor(float(mask_BT.shape[0]), device=mask_BT.device)


def aggregate(loss_BT: torch.Tensor, mask_BT: torch.Tensor, aggregation: str, *, max_len: int | None = None,
              denominator: torch.Tensor | float | None = None) -> torch.Tensor:
    """Per-token losses -> the batch loss: the numerator of `aggregation` over the counted tokens
    (`mask_BT`), divided by `denominator` (default: this batch's `loss_denominator`).

        seq_mean_token_mean  sum_i 1/|o_i| sum_t l_it   / B
        token_mean           sum_i sum_t l_it           / sum_i |o_i|
        seq_sum_norm         sum_i 1/max_len sum_t l_it / B     (max_len default: T)
    """
    mask = mask_BT.to(loss_BT.dtype)
    summed_B = (loss_BT * mask).sum(-1)  # (B,)
    if aggregation == "seq_mean_token_mean":
        total = (summed_B / mask.sum(-1).clamp(min=1)).sum()
    elif aggregation == "token_mean":
        total = summed_B.sum()
    elif aggregation == "seq_sum_norm":
        total = summed_B.sum() / float(max_len if max_len is not None else loss_BT.shape[-1])
    else:
        raise ValueError(f"unknown aggregation {aggregation!r}; valid: {', '.join(AGGREGATIONS)}")
    return total / (loss_denominator(mask, aggregation) if denominator is None else denominator)


def _log_ratio(logp_BT, old_logp_BT, mask_BT, level: str) -> torch.Tensor:
    """(B, T) log of the importance ratio each token uses."""
    log_rho_BT = logp_BT - old_logp_BT
    if level == "token":
        return log_rho_BT
    n_B1 = mask_BT.sum(-1, keepdim=True).clamp(min=1)
    log_s_B1 = (log_rho_BT * mask_BT).sum(-1, keepdim=True) / n_B1
    if level == "sequence":
        return log_s_B1.expand_as(log_rho_BT)
    if level == "sequence_token":
        return log_s_B1.detach() + logp_BT - logp_BT.detach()
    raise ValueError(f"unknown ratio level {level!r}; valid: token, sequence, sequence_token")


def policy_loss(logp_BT: torch.Tensor, old_logp_BT: torch.Tensor, adv: torch.Tensor,
                mask_BT: torch.Tensor, preset: str | LossSettings = "grpo", *, ref_logp_BT: torch.Tensor | None = None,
                beta: float | None = None, max_len: int | None = None,
                denominator: torch.Tensor | float | None = None, is_weight_BT: torch.Tensor | None = None,
                entropy_BT: torch.Tensor | None = None, entropy_coef: float | torch.Tensor | None = None,
                **overrides) -> LossOutput:
    """Loss of one batch (or micro-batch) of completions.

    logp_BT, old_logp_BT, ref_logp_BT: (B, T) log-probs of the sampled tokens under the current,
    sampling and reference policies; adv: (B,) per sequence or (B, T) per token; mask_BT: (B, T)
    1 for tokens that count. `preset` is a preset's name or a `LossSettings` (e.g. one built once per
    run from a config); `beta=None` takes the preset's value; `max_len` is Dr.GRPO's constant
    (default: T); `is_weight_BT`: per-token importance weights (e.g. TIS, see
    algorithms.offpolicy) multiplying the policy term, not the KL term; `entropy_BT`: (B, T) the
    current policy's per-token entropy in nats, differentiable for the entropy bonus, needed when
    entropy_coef != 0 or top_entropy_quantile < 1; `entropy_coef`: the bonus coefficient, a float
    or a 0-d tensor (adaptive control moves it without a host sync), None = the settings' value;
    `overrides` are `LossSettings` field names (eps_low, aggregation, ...).

    Metrics (detached): clip_low_frac, clip_high_frac, ratio_mean/min/max; kl with ref_logp_BT;
    entropy_bonus (the bonus's share of the loss, -c x aggregated entropy) with a bonus;
    entropy_kept_frac and entropy_kept (share of counted tokens the policy term keeps, their mean
    entropy) with entropy_BT.
    """
    s = (preset if isinstance(preset, LossSettings) else get_preset(preset)).with_overrides(beta=beta, **overrides)
    coef = s.entropy_coef if entropy_coef is None else entropy_coef
    bonus = isinstance(coef, torch.Tensor) or coef != 0.0
    if entropy_BT is None and (bonus or s.top_entropy_quantile < 1.0):
        raise ValueError("entropy_coef != 0 or top_entropy_quantile < 1 needs entropy_BT, the per-token entropy")
    mask = mask_BT.to(logp_BT.dtype)
    # Positions outside the mask (padding; tool and environment tokens of an episode) take no part,
    # not even as inf * 0 = NaN: a tool token the model finds very unlikely (log-prob below -88)
    # would make exp() in the ratio or the KL inf there, and the NaN would reach every gradient.
    counted = mask.bool()
    logp_BT = torch.where(counted, logp_BT, torch.zeros_like(logp_BT))
    old_logp_BT = torch.where(counted, old_logp_BT.detach(), 0.0)
    if ref_logp_BT is not None:
        ref_logp_BT = torch.where(counted, ref_logp_BT, 0.0)
    if is_weight_BT is not None:
        is_weight_BT = torch.where(counted, is_weight_BT, 0.0)
    if entropy_BT is not None:
        entropy_BT = torch.where(counted, entropy_BT.to(logp_BT.dtype), 0.0)
    adv_BT = (adv[:, None] if adv.ndim == 1 else adv).to(logp_BT.dtype).expand_as(logp_BT).detach()
    lo, hi = 1.0 - s.eps_low, 1.0 + s.eps_high

    ratio_BT = torch.exp(_log_ratio(logp_BT, old_logp_BT, mask, s.ratio_level).clamp(max=LOG_RATIO_BOUND))
    clipped_BT = ratio_BT.clamp(lo, hi)
    if s.loss_type == "clip":
        loss_BT = -torch.minimum(ratio_BT * adv_BT, clipped_BT * adv_BT)
        if s.dual_clip is not None:
            loss_BT = torch.where(adv_BT < 0, torch.minimum(loss_BT, -s.dual_clip * adv_BT), loss_BT)
        low_BT, high_BT = (ratio_BT < lo) & (adv_BT < 0), (ratio_BT > hi) & (adv_BT > 0)
    elif s.loss_type == "cispo":
        loss_BT = -clipped_BT.detach() * adv_BT * logp_BT
        low_BT, high_BT = ratio_BT < lo, ratio_BT > hi
    elif s.loss_type == "sapo":
        tau_BT = torch.where(adv_BT > 0, s.sapo_tau_pos, s.sapo_tau_neg)
        loss_BT = -torch.sigmoid(tau_BT * (ratio_BT - 1.0)) * (4.0 / tau_BT) * adv_BT
        low_BT = high_BT = torch.zeros_like(counted)  # no clip bound: the gate fades, nothing is cut
    else:
        raise ValueError(f"unknown loss type {s.loss_type!r}; valid: clip, cispo, sapo")

    if is_weight_BT is not None:
        loss_BT = loss_BT * is_weight_BT.detach()
    metrics: dict[str, torch.Tensor] = {}
    keep_BT = mask
    if entropy_BT is not None:
        if s.top_entropy_quantile < 1.0:
            keep_BT = high_entropy_mask(entropy_BT, mask, s.top_entropy_quantile).to(mask.dtype)
            loss_BT = loss_BT * keep_BT
        metrics["entropy_kept_frac"] = masked_mean(keep_BT, mask)
        metrics["entropy_kept"] = masked_mean(entropy_BT.detach(), keep_BT)

    if ref_logp_BT is not None:
        kl_BT = kl_penalty(logp_BT, ref_logp_BT.detach(), s.kl_estimator)
        if s.kl_is_corrected:  # the token ratio, whatever ratio_level the policy term uses
            kl_BT = kl_BT * torch.exp((logp_BT - old_logp_BT).clamp(max=LOG_RATIO_BOUND))
        metrics["kl"] = masked_mean(kl_BT.detach(), mask)
        if s.beta > 0:
            loss_BT = loss_BT + s.beta * kl_BT
    elif s.beta > 0:
        raise ValueError(f"beta = {s.beta} > 0 needs ref_logp_BT (pass beta=0 to train without KL)")

    if bonus:
        # Aggregated with the policy term's own normalisation (verl's convention; TRL's bonus is always a
        # token mean), so entropy_coef weighs entropy against the policy term alike under every aggregation.
        bonus_BT = -coef * entropy_BT * keep_BT
        loss_BT = loss_BT + bonus_BT
        with torch.no_grad():
            metrics["entropy_bonus"] = aggregate(bonus_BT.detach(), mask, s.aggregation, max_len=max_len,
                                                 denominator=denominator)

    loss = aggregate(loss_BT, mask, s.aggregation, max_len=max_len, denominator=denominator)

    with torch.no_grad():
        m = mask.bool()
        has = m.any()
        r = ratio_BT.detach()
        metrics["clip_low_frac"] = masked_mean(low_BT.to(r.dtype), mask)
        metrics["clip_high_frac"] = masked_mean(high_BT.to(r.dtype), mask)
        metrics["ratio_mean"] = masked_mean(r, mask)
        metrics["ratio_min"] = torch.where(has, r.masked_fill(~m, float("inf")).min(), r.new_ones(()))
        metrics["ratio_max"] = torch.where(has, r.masked_fill(~m, float("-inf")).max(), r.new_ones(()))
    return LossOutput(loss=loss, metrics=metrics)
