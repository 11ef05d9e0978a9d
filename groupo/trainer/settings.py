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
    is_correction: str = "none"          # importance weights against the engine (algorithms.offpolicy.IS_MODES)
    is_upper: float | None = None        # their bounds (None = none)
    is_lower: float | None = None
    off_policy_mask: float | None = None  # DeepSeek-V3.2's off-policy sequence mask threshold (None = off)
    engine_old_logprobs: bool = False    # the engine's log-probs are the old policy (mu = 1)
    micro_batch_tokens: int = 0          # > 0: micro-batches by token budget (`micro_batches`)
    attention: str = "sdpa"              # the passes' attention kernel (models.attention)
    steps_per_generation: int = 1        # mini-batches of the batch, one optimizer step each
    entropy_target: float | None = None  # adaptive entropy control (None = a constant loss.entropy_coef)
    entropy_coef_delta: float = 0.005
    entropy_coef_min: float = 0.0
    entropy_coef_max: float = 1.0
    packing: bool = False                # padding-free passes: rows end to end (models.packing)

    @property
    def old_logprobs_needed(self) -> bool:
        """Whether the update needs the sampling policy's log-probs from a pass before it: the batch is
        trained on by more than one optimizer step (later steps' weights are not the sampling ones)."""
        return self.num_iterations > 1 or self.steps_per_generation > 1


def resolve_is_correction(cfg: Config) -> tuple[str, float | None]:
    """(mode, upper bound) of algorithm.is_correction after tis_cap (its older name) and `auto`.

    auto: token_truncate on the vLLM engines, none on the transformers engine (which samples from the
    trained module itself: what differs is float rounding of the KV cache, not kernels or precision).
    Token-level truncation, because it drops no sample and its weights stay near 1 at the mismatch
    measured here (KL 0.002 per token, vLLM against the trainer, docs/benchmarks.md), where a product over
    a long completion's tokens drifts with the completion's length (docs/algorithms.md)."""
    A = cfg.algorithm
    if A.tis_cap is not None:
        return "token_truncate", A.tis_cap
    if A.is_correction == "auto":
        on_vllm = cfg.rollout.engine == "vllm" and not A.engine_old_logprobs
        return ("token_truncate" if on_vllm else "none"), A.is_upper
    return A.is_correction, A.is_upper


def update_settings(cfg: Config, *, amp: str, device_type: str, share_prompts: bool) -> UpdateSettings:
    R, A, T = cfg.rollout, cfg.algorithm, cfg.train
    mode, upper = resolve_is_correction(cfg)
    return UpdateSettings(loss=loss_settings(A), temperature=R.temperature, micro_batch_size=T.micro_batch_size,
                          max_len=R.max_new_tokens, num_iterations=A.num_iterations, max_grad_norm=T.max_grad_norm,
                          amp=amp, device_type=device_type, share_prompts=share_prompts, is_correction=mode,
                          is_upper=upper, is_lower=A.is_lower, off_policy_mask=A.off_policy_mask_threshold,
                          engine_old_logprobs=A.engine_old_logprobs, micro_batch_tokens=T.micro_batch_tokens,
                          attention=cfg.model.update_attention, steps_per_generation=T.steps_per_generation,
                          entropy_target=A.entropy_target, entropy_coef_delta=A.entropy_coef_delta,
                          entropy_coef_min=A.entropy_coef_min, entropy_coef_max=A.entropy_coef_max,
                          packing=T.packing)
