"""The sampler is not the trainer: mismatch between the engine's and the trainer's log-probs.

The rollout engine (transformers generate, vLLM) samples with its own kernels, precision and
batching, so its log-prob of a sampled token differs a little from the trainer's log-prob of the
same token under the same weights. These functions measure that gap and correct for it.

engine_logp_BT: the engine's log-probs of the sampled tokens, under the distribution it sampled
from (after temperature / top-k / top-p); trainer_logp_BT: the trainer's, under softmax(z / T),
for the same weights (the "old" policy). With top-k or top-p the two distributions differ by
design, and the mismatch measures that too.
"""

from __future__ import annotations

import torch

from groupo.algorithms.kl import kl_penalty
from groupo.algorithms.losses import masked_mean


def sampler_mismatch(trainer_logp_BT: torch.Tensor, engine_logp_BT: torch.Tensor,
                     mask_BT: torch.Tensor) -> dict[str, torch.Tensor]:
    """Masked means over the sampled tokens: |trainer - engine| and KL(engine || trainer).

    The KL is the k3 estimator with tokens drawn from the engine: r = pi_trainer / pi_engine,
    k3 = r - 1 - log r (unbiased, >= 0; 0 exactly when the two agree).
    """
    diff = (trainer_logp_BT - engine_logp_BT).detach()
    return {"abs_diff": masked_mean(diff.abs(), mask_BT),
            "kl": masked_mean(kl_penalty(engine_logp_BT.detach(), trainer_logp_BT.detach(), "k3"), mask_BT)}


def tis_weights(trainer_logp_BT: torch.Tensor, engine_logp_BT: torch.Tensor, cap: float) -> torch.Tensor:
    """(B, T) truncated importance weights min(pi_trainer_old / pi_engine, cap), detached.

    Truncated importance sampling (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings
    You Off-Policy RL Training"): the samples come from the engine's distribution, the objective
    is the trainer's, so each token's policy-gradient term is weighted by their ratio, capped at
    `cap` to bound the variance.
    """
    return torch.exp(trainer_logp_BT.detach() - engine_logp_BT.detach()).clamp(max=cap)
