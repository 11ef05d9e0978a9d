"""Named presets: each row is one paper's setting of every choice the GRPO family varies.

`groupo presets` prints this table. A preset only fills the settings a caller leaves unset;
every field here can be overridden by name (`policy_loss(..., eps_high=0.3)` or
`algorithm.eps_high=0.3` in a config).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

RatioLevel = Literal["token", "sequence", "sequence_token"]
Aggregation = Literal["seq_mean_token_mean", "token_mean", "seq_sum_norm"]


@dataclass(frozen=True)
class LossSettings:
    """Every knob of the loss and the advantages (docs/algorithms.md)."""

    ratio_level: RatioLevel = "token"      # token rho_it, GSPO sequence s_i, or GSPO-token s_it
    loss_type: Literal["clip", "cispo"] = "clip"
    eps_low: float = 0.2                   # ratio clipped below at 1 - eps_low
    eps_high: float = 0.2                  # ratio clipped above at 1 + eps_high
    dual_clip: float | None = None         # c > 1: loss of negative-advantage tokens capped at c|A|
    aggregation: Aggregation = "seq_mean_token_mean"
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    beta: float = 0.0                      # KL coefficient (0 = no reference forward pass)
    adv_baseline: Literal["mean", "loo"] = "mean"
    adv_scale: Literal["group", "batch", "none"] = "group"
    adv_std: Literal["unbiased", "population"] = "unbiased"
    adv_eps: float = 1e-4
    mask_truncated: bool = False           # truncated completions contribute no loss
    dynamic_sampling: bool = False         # drop groups with zero reward variance
    paper: str = ""

    def with_overrides(self, **overrides) -> LossSettings:
        valid = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise TypeError(f"unknown loss setting(s) {unknown}; valid: {sorted(valid - {'paper'})}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


PRESETS: dict[str, LossSettings] = {
    # DeepSeekMath, eq. (3) and (4): token ratio, symmetric clip, k3 KL to the reference,
    # 1/G sum_i 1/|o_i| sum_t, advantages normalised by the group std.
    "grpo": LossSettings(beta=0.04, paper="DeepSeekMath, Shao et al. 2024, arXiv:2402.03300"),
    # Dr.GRPO: no std division, no 1/|o_i|: per-sequence sums over a constant (max length).
    "dr_grpo": LossSettings(adv_scale="none", aggregation="seq_sum_norm", beta=0.0,
                            paper="Understanding R1-Zero-Like Training, Liu et al. 2025, arXiv:2503.20783"),
    # DAPO: clip-higher, token-level mean over the batch, no KL, dynamic sampling.
    "dapo": LossSettings(eps_low=0.2, eps_high=0.28, aggregation="token_mean", beta=0.0,
                         dynamic_sampling=True,
                         paper="DAPO, Yu et al. 2025, arXiv:2503.14476"),
    # GSPO: length-normalised sequence ratio, very tight clip range, no KL.
    "gspo": LossSettings(ratio_level="sequence", eps_low=3e-4, eps_high=4e-4, beta=0.0,
                         paper="Group Sequence Policy Optimization, Zheng et al. 2025, arXiv:2507.18071"),
    # GSPO-token: GSPO's value, per-token gradient (for per-token advantages).
    "gspo_token": LossSettings(ratio_level="sequence_token", eps_low=3e-4, eps_high=4e-4, beta=0.0,
                               paper="Group Sequence Policy Optimization, Zheng et al. 2025, arXiv:2507.18071"),
    # CISPO: stop-gradient clipped IS weight times A log pi, token-level mean, no KL. The paper
    # sets no lower bound (eps_low = 1 makes the bound 0, which a ratio never crosses) and tunes
    # only eps_high without publishing it; 4.0 is this project's default, not the paper's.
    "cispo": LossSettings(loss_type="cispo", eps_low=1.0, eps_high=4.0, aggregation="token_mean",
                          beta=0.0, paper="MiniMax-M1, MiniMax 2025, arXiv:2506.13585"),
}


def get_preset(name: str) -> LossSettings:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}") from None


def preset_rows() -> list[dict[str, object]]:
    """The table as rows of {setting: value}, for printing."""
    return [{"preset": name, **{f.name: getattr(s, f.name) for f in fields(s)}}
            for name, s in PRESETS.items()]
