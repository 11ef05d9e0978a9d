"""Named presets: each row is one paper's setting of every choice the GRPO family varies.

`groupo presets` prints this table. A preset only fills the settings a caller leaves unset;
every field here can be overridden by name (`policy_loss(..., eps_high=0.3)` or
`algorithm.eps_high=0.3` in a config). The settings themselves are declared once, with their
help, in groupo.types.LossSettings.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from groupo.types import LossSettings

PRESETS: dict[str, LossSettings] = {
    # DeepSeekMath, eq. (3) and (4): token ratio, symmetric clip, k3 KL to the reference,
    # 1/G sum_i 1/|o_i| sum_t, advantages normalised by the group std.
    "grpo": LossSettings(beta=0.04),
    # Dr.GRPO: no std division, no 1/|o_i|: per-sequence sums over a constant (max length).
    "dr_grpo": LossSettings(adv_scale="none", aggregation="seq_sum_norm", beta=0.0),
    # DAPO: clip-higher, token-level mean over the batch, no KL, dynamic sampling.
    "dapo": LossSettings(eps_low=0.2, eps_high=0.28, aggregation="token_mean", beta=0.0,
                         dynamic_sampling=True),
    # GSPO: length-normalised sequence ratio, very tight clip range, no KL.
    "gspo": LossSettings(ratio_level="sequence", eps_low=3e-4, eps_high=4e-4, beta=0.0),
    # GSPO-token: GSPO's value, per-token gradient (for per-token advantages).
    "gspo_token": LossSettings(ratio_level="sequence_token", eps_low=3e-4, eps_high=4e-4, beta=0.0),
    # CISPO: stop-gradient clipped IS weight times A log pi, token-level mean, no KL. The paper
    # sets no lower bound (eps_low = 1 makes the bound 0, which a ratio never crosses) and tunes
    # only eps_high without publishing it; 4.0 is this project's default, not the paper's.
    "cispo": LossSettings(loss_type="cispo", eps_low=1.0, eps_high=4.0, aggregation="token_mean",
                          beta=0.0),
    # SAPO: the clip replaced by a soft gate sigmoid(tau (rho - 1)) 4 / tau per token, tau 1.0 for positive
    # and 1.05 for negative advantages (the paper's and TRL's and verl's defaults), the sequence mean of
    # token means, no KL.
    "sapo": LossSettings(loss_type="sapo", sapo_tau_pos=1.0, sapo_tau_neg=1.05, beta=0.0),
}


PAPERS: dict[str, str] = {
    "grpo": "DeepSeekMath, Shao et al. 2024, arXiv:2402.03300",
    "dr_grpo": "Understanding R1-Zero-Like Training, Liu et al. 2025, arXiv:2503.20783",
    "dapo": "DAPO, Yu et al. 2025, arXiv:2503.14476",
    "gspo": "Group Sequence Policy Optimization, Zheng et al. 2025, arXiv:2507.18071",
    "gspo_token": "Group Sequence Policy Optimization, Zheng et al. 2025, arXiv:2507.18071",
    "cispo": "MiniMax-M1, MiniMax 2025, arXiv:2506.13585",
    "sapo": "Soft Adaptive Policy Optimization, Qwen team 2025, arXiv:2511.20347",
}


def get_preset(name: str) -> LossSettings:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}") from None


def loss_settings(algorithm: Any) -> LossSettings:
    """The preset `algorithm.preset` names with every LossSettings field that `algorithm` (a config's
    algorithm section) sets (None = the preset's value)."""
    names = [f.name for f in dataclasses.fields(LossSettings)]
    return get_preset(algorithm.preset).with_overrides(**{n: getattr(algorithm, n) for n in names})
