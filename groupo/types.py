"""Small shared types that cross layer boundaries."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}


@dataclass(frozen=True)
class Problem:
    """One prompt of a task.

    messages: the chat to send (system prompt, few-shot turns, the user's question), before the
        model's chat template is applied.
    answer: the reference answer as text (normalised by the task's parser).
    columns: dataset columns handed to reward functions as keyword arguments (TRL convention);
        always includes "answer".
    """

    messages: list[Message]
    answer: str
    columns: dict[str, Any] = field(default_factory=dict)
    id: str = ""

    @property
    def question(self) -> str:
        return self.messages[-1]["content"]


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1                       # completions per prompt
    temperature: float = 1.0         # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0                   # 0 = off
    min_p: float = 0.0               # 0 = off: tokens below min_p x the likeliest token's probability are dropped
    repetition_penalty: float = 1.0  # 1 = off: logits of tokens already in prompt or completion are penalised
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()       # extra stop strings; EOS always stops
    seed: int | None = None


# How a completion ended, the one status every engine and the episode driver report:
#   stop       the model ended it (EOS or a stop string; in an episode, a turn that called no tool)
#   length     the token budget ran out (rollout.max_new_tokens): truncated
#   max_turns  an episode's last allowed turn still called tools (episodes.max_turns)
#   done       the episode's environment said it was over
FinishReason = Literal["stop", "length", "max_turns", "done"]


@dataclass
class Completion:
    """One sampled completion of one prompt."""

    prompt_ids: list[int]
    token_ids: list[int]             # generated tokens, up to and including EOS/stop if any
    logprobs: list[float]            # log-prob of each generated token under the sampling policy
    text: str                        # decoded completion (special tokens skipped)
    finish_reason: FinishReason
    # Episodes with tools (groupo.rollout.episodes); None in single-turn rollouts, where every token is sampled.
    sampled_mask: list[int] | None = None   # per token of token_ids: 1 sampled by the policy, 0 tool/environment
    messages: list[dict] | None = None      # the assistant and tool turns, as TRL passes completions to rewards
    tool_stats: dict | None = None          # turns, calls, errors, calls per tool, seconds (groupo.rollout.episodes)
    environment: Any = None                 # the episode's environment instance (rewards get `environments=`)


def _knob(default: Any, help: str, **bounds: Any) -> Any:
    """A LossSettings field: its default (the defaults preset's) and, in `metadata`, the help text
    and range that `algorithm.<name>` shows and checks (groupo.config builds that section from it)."""
    return field(default=default, metadata={"help": help, **bounds})


@dataclass(frozen=True)
class LossSettings:
    """Every choice the GRPO family varies: the loss, the advantages, the batch (docs/algorithms.md).

    Declared once, here: the presets (groupo.algorithms.presets) are rows of it, and the config's
    `algorithm` section has one optional key per field (None = the preset's value).
    """

    ratio_level: Literal["token", "sequence", "sequence_token"] = _knob(
        "token", "importance ratio: token rho_it, GSPO's sequence s_i, or GSPO-token's s_it")
    loss_type: Literal["clip", "cispo", "sapo"] = _knob("clip", "clipped surrogate, CISPO, or SAPO's soft gate")
    eps_low: float = _knob(0.2, "lower clip bound: ratio >= 1 - eps_low", min=0)
    eps_high: float = _knob(0.2, "upper clip bound: ratio <= 1 + eps_high", min=0)
    dual_clip: float | None = _knob(None, "dual-clip bound c > 1: the loss of negative-advantage tokens is "
                                    "capped at c|A|", min=1, min_exclusive=True)
    aggregation: Literal["seq_mean_token_mean", "token_mean", "seq_sum_norm"] = _knob(
        "seq_mean_token_mean", "how token losses reduce to the batch loss")
    sapo_tau_pos: float = _knob(1.0, "SAPO: temperature of the soft gate for tokens with A > 0",
                                min=0, min_exclusive=True)
    sapo_tau_neg: float = _knob(1.05, "SAPO: temperature of the soft gate for tokens with A <= 0 (larger: "
                                "off-policy negative tokens fade faster)", min=0, min_exclusive=True)
    kl_estimator: Literal["k1", "k2", "k3"] = _knob("k3", "per-token KL estimator")
    beta: float = _knob(0.0, "KL penalty coefficient (0 = no reference forward pass)", min=0)
    kl_is_corrected: bool = _knob(False, "multiply each token's KL term by its ratio pi / pi_old, so that its gradient "
                                  "is the unbiased one of KL(pi || pi_ref) when pi_old sampled (DeepSeek-V3.2)")
    entropy_coef: float = _knob(0.0, "entropy bonus: the loss subtracts entropy_coef x the policy's per-token "
                                "entropy, aggregated like the policy term (0 = off)", min=0)
    top_entropy_quantile: float = _knob(1.0, "the policy term counts only this share of each micro-batch's tokens, "
                                        "those of highest entropy (Beyond the 80/20 Rule: 0.2); 1 = all", min=0, max=1)
    adv_baseline: Literal["mean", "loo"] = _knob("mean", "group mean or leave-one-out baseline")
    adv_scale: Literal["group", "batch", "none"] = _knob("group", "divide advantages by this std")
    adv_std: Literal["unbiased", "population"] = _knob("unbiased", "std estimator")
    adv_eps: float = _knob(1e-4, "added to the std before dividing", min=0)
    reward_norm: Literal["sum_then_normalize", "normalize_then_sum"] = _knob(
        "sum_then_normalize", "advantages of the weighted reward sum, or GDPO's: each reward function's own "
        "advantages, weighted and summed, then normalised over the batch")
    mask_truncated: bool = _knob(False, "truncated completions contribute no loss")
    dynamic_sampling: bool = _knob(False, "drop groups whose rewards are all equal and draw more (DAPO)")

    def with_overrides(self, **overrides: Any) -> LossSettings:
        """A copy with the given fields changed; None leaves a field as it is."""
        valid = {f.name for f in fields(self)}
        if unknown := sorted(set(overrides) - valid):
            raise TypeError(f"unknown loss setting(s) {unknown}; valid: {sorted(valid)}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})
