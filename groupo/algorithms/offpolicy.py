"""The sampler is not the trainer: mismatch between the engine's and the trainer's log-probs.

The rollout engine (transformers generate, vLLM) samples with its own kernels, precision and
batching, so its log-prob of a sampled token differs a little from the trainer's log-prob of the
same token under the same weights. These functions measure that gap and correct for it.

engine_logp_BT: the engine's log-probs of the sampled tokens, under the distribution it sampled
from (after temperature / top-k / top-p / min-p / repetition penalty); trainer_logp_BT: the
trainer's, under softmax(z / T), for the same weights (the "old" policy). With top-k, top-p, min-p
or a repetition penalty the two distributions differ by design, and the mismatch measures that too.

Corrections (`is_weights`, mode `algorithm.is_correction`), each a detached weight on every
token's policy term, with r = pi_trainer_old / pi_engine:

    token_truncate     w_it = clip(r_it, lower, upper)          TIS (Yao et al. 2025)
    token_mask         w_it = r_it, or 0 where r_it is outside [lower, upper]        (MIS)
    sequence_truncate  w_i  = clip(prod_t r_it, lower, upper), on every token of o_i
    sequence_mask      w_i  = prod_t r_it, or 0 for the whole sequence outside [lower, upper]

as TRL 1.16 defines them (vllm_importance_sampling_mode); a missing bound is no bound. And
DeepSeek-V3.2's off-policy sequence mask (`off_policy_sequence_mask`, arXiv 2512.02556): a
sequence with a negative advantage whose mean log(pi_sampler / pi) exceeds a threshold drops out.
"""

from __future__ import annotations

import math

import torch

from groupo.algorithms.kl import kl_penalty
from groupo.algorithms.losses import LOG_RATIO_BOUND, masked_mean

IS_MODES = ("none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def sampler_mismatch(trainer_logp_BT: torch.Tensor, engine_logp_BT: torch.Tensor,
                     mask_BT: torch.Tensor) -> dict[str, torch.Tensor]:
    """Masked means over the sampled tokens: |trainer - engine| and KL(engine || trainer).

    The KL is the k3 estimator with tokens drawn from the engine: r = pi_trainer / pi_engine,
    k3 = r - 1 - log r (unbiased, >= 0; 0 exactly when the two agree).
    """
    diff = (trainer_logp_BT - engine_logp_BT).detach()
    return {"abs_diff": masked_mean(diff.abs(), mask_BT),
            "kl": masked_mean(kl_penalty(engine_logp_BT.detach(), trainer_logp_BT.detach(), "k3"), mask_BT)}


def sequence_frac(flag_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """Share of the sequences with a counted token that have a flagged counted token."""
    counted_B = mask_BT.bool().any(-1)
    hit_B = (flag_BT.bool() & mask_BT.bool()).any(-1)
    return hit_B.sum() / counted_B.sum().clamp(min=1)


def is_weights(trainer_logp_BT: torch.Tensor, engine_logp_BT: torch.Tensor, mask_BT: torch.Tensor, mode: str, *,
               upper: float | None = None, lower: float | None = None) -> tuple[torch.Tensor | None,
                                                                                 dict[str, torch.Tensor]]:
    """(B, T) detached importance weights of `mode` (module docstring; None for "none") and their
    metrics: is_weight_mean, and is_truncated_frac / is_masked_frac (share of counted tokens whose
    weight the bound changed) with the matching *_seq_frac (share of sequences with such a token).

    The log-ratios are clamped to +-LOG_RATIO_BOUND before exp, so one wild token cannot make a
    weight inf (beyond the bound every weight is truncated or masked anyway)."""
    if mode == "none":
        return None, {}
    if mode not in IS_MODES:
        raise ValueError(f"unknown importance-sampling correction {mode!r}; valid: {', '.join(IS_MODES)}")
    level, kind = mode.split("_")
    mask = mask_BT.to(torch.float32)
    log_r_BT = (trainer_logp_BT.detach().float() - engine_logp_BT.detach().float()) * mask
    if level == "sequence":  # log prod_t r_it, one value per sequence
        log_r_BT = log_r_BT.sum(-1, keepdim=True).expand_as(log_r_BT)
    r_BT = torch.exp(log_r_BT.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND))
    lo = -math.inf if lower is None else lower
    hi = math.inf if upper is None else upper
    outside_BT = ((r_BT < lo) | (r_BT > hi)) & mask.bool()
    if kind == "mask":
        w_BT = r_BT.masked_fill(outside_BT, 0.0)
    else:  # no bound at all: plain importance sampling
        w_BT = r_BT.clamp(min=lower, max=upper) if lower is not None or upper is not None else r_BT
    w_BT = w_BT * mask
    name = "truncated" if kind == "truncate" else "masked"
    return w_BT, {"is_weight_mean": masked_mean(w_BT, mask), f"is_{name}_frac": masked_mean(outside_BT.float(), mask),
                  f"is_{name}_seq_frac": sequence_frac(outside_BT, mask)}


def off_policy_sequence_mask(logp_BT: torch.Tensor, sampler_logp_BT: torch.Tensor, adv: torch.Tensor,
                             mask_BT: torch.Tensor, threshold: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(B, T) float keep-mask of DeepSeek-V3.2's off-policy sequence masking and its metrics
    off_policy_masked_frac (tokens) and off_policy_masked_seq_frac (sequences).

    A token is dropped where its advantage is negative and its sequence's mean
    log(pi_sampler / pi), the k1 estimate of KL(pi_sampler || pi) over the sequence, exceeds
    `threshold` (delta): a bad sample the current policy has drifted far from teaches little and
    destabilises. `logp_BT`: the current policy's log-probs (detached here); `sampler_logp_BT`: the
    log-probs under the policy that sampled (the engine's); adv: (B,) or (B, T).
    """
    mask = mask_BT.to(torch.float32)
    kl_B1 = (((sampler_logp_BT.detach() - logp_BT.detach()) * mask).sum(-1, keepdim=True)
             / mask.sum(-1, keepdim=True).clamp(min=1))
    adv_BT = (adv[:, None] if adv.ndim == 1 else adv).expand_as(mask)
    drop_BT = (adv_BT < 0) & (kl_B1 > threshold) & mask.bool()
    return (~drop_BT).float(), {"off_policy_masked_frac": masked_mean(drop_BT.float(), mask),
                                "off_policy_masked_seq_frac": sequence_frac(drop_BT, mask)}

