"""Pure GRPO-family math: tensors in, loss and metrics (tensors) out."""

from groupo.algorithms.advantages import decoupled_advantages, group_advantages, zero_variance_groups
from groupo.algorithms.kl import kl_penalty
from groupo.algorithms.losses import LossOutput, aggregate, loss_denominator, masked_mean, policy_loss
from groupo.algorithms.presets import PRESETS, LossSettings, get_preset

__all__ = ["PRESETS", "LossOutput", "LossSettings", "get_preset", "decoupled_advantages", "group_advantages",
           "aggregate", "kl_penalty", "loss_denominator", "masked_mean", "policy_loss", "zero_variance_groups"]
