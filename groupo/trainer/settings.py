"""What the prepare and update stages need besides the batch and the model, built once per run from
the configuration (`update_settings`), by keyword, so that a field cannot land in another's place."""

from __future__ import annotations

from dataclasses import dataclass

from groupo.algorithms.presets import loss_settings
from groupo.config import Config
from groupo.types import LossSettings


@dataclass(frozen=True, kw_only=True)
class UpdateSettings:
    """Everything an update needs besides the batch and the model, built once per run."""

    loss: LossSettings          # the preset with the user's algorithm.* overrides
    temperature: float          # the sampling temperature: log-probs are of softmax(z / T)
    micro_batch_size: int
    max_len: int                # Dr.GRPO's constant (rollout.max_new_tokens)
    num_iterations: int = 1     # mu
    max_grad_norm: float = 0.0  # 0 = no clipping
    amp: str = "none"           # autocast kind for forward passes (models.precision)
    device_type: str = "cpu"
    share_prompts: bool = True  # encode each prompt once per group (models.logprobs)
    tis_cap: float | None = None         # truncated importance sampling against the engine (None = off)
    engine_old_logprobs: bool = False    # the engine's log-probs are the old policy (mu = 1)
    micro_batch_tokens: int = 0          # > 0: micro-batches by token budget (`micro_batches`)
    attention: str = "sdpa"              # the passes' attention kernel (models.attention)


def update_settings(cfg: Config, *, amp: str, device_type: str, share_prompts: bool) -> UpdateSettings:
    R, A, T = cfg.rollout, cfg.algorithm, cfg.train
    return UpdateSettings(loss=loss_settings(A), temperature=R.temperature, micro_batch_size=T.micro_batch_size,
                          max_len=R.max_new_tokens, num_iterations=A.num_iterations, max_grad_norm=T.max_grad_norm,
                          amp=amp, device_type=device_type, share_prompts=share_prompts, tis_cap=A.tis_cap,
                          engine_old_logprobs=A.engine_old_logprobs, micro_batch_tokens=T.micro_batch_tokens,
                          attention=cfg.model.update_attention)
