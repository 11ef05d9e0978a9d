"""Per-token KL estimators of KL(pi || pi_ref) from log-probs of sampled tokens (Schulman, 2020).

With log r = log pi_ref(o_t) - log pi(o_t) and tokens sampled from pi:
    k1 = -log r                 unbiased, can be negative
    k2 = (log r)^2 / 2          biased, low variance, >= 0
    k3 = (r - 1) - log r        unbiased, >= 0 (DeepSeekMath eq. (4))
"""

from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """(B, T) per-token KL estimate; differentiable w.r.t. `logp_BT`."""
    log_r = ref_logp_BT - logp_BT  # (B, T)
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r.square()
    if estimator == "k3":
        return torch.expm1(log_r) - log_r
    raise ValueError(f"unknown KL estimator {estimator!r}; valid: {', '.join(KL_ESTIMATORS)}")
