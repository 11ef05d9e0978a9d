"""Entropy control: which tokens the policy term keeps, and the adaptive bonus coefficient.

`high_entropy_mask` is the rule of "Beyond the 80/20 Rule" (Wang et al. 2025, arXiv 2506.01939):
only the highest-entropy share rho of tokens ("forking tokens") gets a policy gradient; rho = 0.2
matched or beat training on every token there. `adapt_entropy_coef` and `applied_entropy_coef`
are adaptive entropy control as Skywork-OR1 (He et al. 2025, arXiv 2505.22312) introduced it and
TRL 1.16 implements it: the bonus acts only while the entropy is at or below a target, and its
coefficient moves by a fixed delta after every optimizer step, within [min, max].
"""

from __future__ import annotations

import torch


def high_entropy_mask(entropy_BT: torch.Tensor, mask_BT: torch.Tensor, quantile: float) -> torch.Tensor:
    """(B, T) bool: the counted tokens whose entropy is at least the (1 - quantile) quantile of the
    counted tokens' entropies (linear interpolation, torch.quantile's default, as TRL computes it).

    quantile 1 keeps every counted token, 0 only those of the highest entropy; ties at the threshold
    are kept, so a little more than `quantile` of the tokens may be."""
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"top_entropy_quantile must be in [0, 1], got {quantile}")
    counted_BT = mask_BT.bool()
    entropy_BT = entropy_BT.detach()
    values = entropy_BT[counted_BT].float()
    if values.numel() == 0:
        return counted_BT
    threshold = torch.quantile(values, 1.0 - quantile)
    return (entropy_BT >= threshold) & counted_BT


def applied_entropy_coef(coef: torch.Tensor, last_entropy: torch.Tensor, target: float) -> torch.Tensor:
    """The coefficient an optimizer step uses: `coef` if the previous step's entropy was at or below
    `target`, else 0 (the first step, with last_entropy = inf, has no bonus)."""
    return torch.where(last_entropy <= target, coef, torch.zeros_like(coef))


def adapt_entropy_coef(coef: torch.Tensor, entropy: torch.Tensor, *, target: float, delta: float, low: float,
                       high: float) -> torch.Tensor:
    """The next step's coefficient: coef + delta (at most `high`) if this step's mean entropy is at
    or below `target`, else coef - delta (at least `low`). 0-d tensors in and out: no host sync."""
    up, down = (coef + delta).clamp(max=high), (coef - delta).clamp(min=low)
    return torch.where(entropy <= target, up, down)
