"""Group-relative advantages (DeepSeekMath sec. 4.1.2; Dr.GRPO; RLOO)."""

from __future__ import annotations

import torch


def group_advantages(rewards_PG: torch.Tensor, *, baseline: str = "mean", scale: str = "group",
                     std: str = "unbiased", eps: float = 1e-4) -> torch.Tensor:
    """(P, G) rewards of G completions for each of P prompts -> (P, G) advantages.

    baseline: "mean"  A = r_i - mean_j r_j                            (GRPO)
              "loo"   A = r_i - mean_{j != i} r_j = G/(G-1) (r_i - mean)   (RLOO)
    scale:    "group" divide by the std of the prompt's G rewards     (GRPO)
              "batch" divide by the std of all P*G rewards
              "none"  no division                                     (Dr.GRPO)
    std:      "unbiased" (divide by n-1, torch's default) or "population" (divide by n)
    eps:      added to the std before dividing.

    A group whose rewards are all equal gets advantage exactly 0 (never NaN), whatever eps is.
    """
    if rewards_PG.ndim != 2:
        raise ValueError(f"rewards must be (P, G), got shape {tuple(rewards_PG.shape)}")
    if std not in ("unbiased", "population"):
        raise ValueError(f"unknown std estimator {std!r}; valid: unbiased, population")
    r = rewards_PG.float()
    G = r.shape[1]
    mean_P1 = r.mean(dim=1, keepdim=True)
    centred = r - mean_P1
    # Equal rewards are found by comparing the rewards themselves: their float32 mean can be one
    # rounding step off (eight rewards of 0.1 average to 0.1 + 7.45e-9), so r - mean is ~1e-8, not 0.
    equal_P1 = zero_variance_groups(r)[:, None]
    if baseline == "loo":
        if G < 2:
            raise ValueError("the leave-one-out baseline needs at least 2 completions per prompt")
        centred = centred * (G / (G - 1))
    elif baseline != "mean":
        raise ValueError(f"unknown baseline {baseline!r}; valid: mean, loo")
    correction = 1 if std == "unbiased" else 0
    if scale == "group":
        sd = r.std(dim=1, keepdim=True, correction=correction) if correction < G else torch.zeros_like(mean_P1)
    elif scale == "batch":
        sd = r.std(correction=correction) if r.numel() > correction else r.new_zeros(())
    elif scale == "none":
        return torch.where(equal_P1, torch.zeros_like(centred), centred)
    else:
        raise ValueError(f"unknown advantage scale {scale!r}; valid: group, batch, none")
    # A member equal to a varied group's mean is exactly 0 already (0 / sd); the where also
    # keeps an equal group's 0 / 0 (eps == 0) out of the result.
    return torch.where(equal_P1, torch.zeros_like(centred), centred / (sd + eps))


def zero_variance_groups(rewards_PG: torch.Tensor) -> torch.Tensor:
    """(P,) bool: groups whose rewards are all equal (they carry no signal; DAPO drops them)."""
    return (rewards_PG == rewards_PG[:, :1]).all(dim=1)


def decoupled_advantages(rewards_PGK: torch.Tensor, weights_K: torch.Tensor, *, baseline: str = "mean",
                         scale: str = "group", std: str = "unbiased", eps: float = 1e-4) -> torch.Tensor:
    """(P, G, K) rewards of K reward functions -> (P, G) advantages, GDPO's way (Group reward-Decoupled
    normalization Policy Optimization, arXiv 2601.05242):

        A_k  = group_advantages(r_k)          each reward function normalised on its own
        S    = sum_k w_k A_k                  weighted sum
        A    = (S - mean(S)) / (std(S) + eps) normalised over the whole batch (no std division with
                                              scale="none", which then equals centring the weighted sum)

    Why: summing first, distinct combinations of the rewards collapse to one advantage (a group of
    two scoring (1, 1) and (0, 0) on two rewards gets +-0.71, exactly as one scoring (1, 0) and
    (0, 0), though the first pair differs in both; GDPO gives +-1.41 and +-0.71 before the batch
    step) and a reward with a wide spread drowns one with a narrow spread. A group
    whose every reward is constant gets exactly 0. `baseline`, `scale`, `std`, `eps` as in
    group_advantages; the batch step uses `std` and `eps` too.
    """
    if rewards_PGK.ndim != 3 or weights_K.shape != rewards_PGK.shape[2:]:
        raise ValueError(f"rewards must be (P, G, K) and weights (K,), got {tuple(rewards_PGK.shape)} and "
                         f"{tuple(weights_K.shape)}")
    per_PGK = torch.stack([group_advantages(rewards_PGK[..., k], baseline=baseline, scale=scale, std=std, eps=eps)
                           for k in range(rewards_PGK.shape[2])], dim=-1)
    summed_PG = (per_PGK * weights_K.to(per_PGK.dtype)).sum(-1)
    out_PG = summed_PG - summed_PG.mean()  # ~0 already: every group's centred advantages sum to 0
    if scale != "none":
        correction = 1 if std == "unbiased" else 0
        sd = summed_PG.std(correction=correction) if summed_PG.numel() > correction else summed_PG.new_zeros(())
        out_PG = torch.where(sd + eps > 0, out_PG / (sd + eps), out_PG)  # all sums equal: nothing to scale
    constant_PG1 = torch.stack([zero_variance_groups(rewards_PGK[..., k].float())
                                for k in range(rewards_PGK.shape[2])], dim=-1).all(-1)[:, None]
    return torch.where(constant_PG1, torch.zeros_like(out_PG), out_PG)
