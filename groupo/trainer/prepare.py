"""Stage 2 of a step, prepare: a scored global batch -> what the optimizer steps need.

Pure apart from the no-grad forward passes: the advantages (over the global batch), the per-token
loss mask (decided in `loss_mask`, nowhere else), the global loss denominator (`algorithms.
loss_denominator` of the global mask), this rank's rows packed, the engine's log-probs as a
tensor, and the old / reference log-probs. Testable without an optimizer.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import torch

from groupo.algorithms import group_advantages, loss_denominator
from groupo.algorithms.presets import get_preset
from groupo.config import Config
from groupo.distributed import Dist
from groupo.models.attention import attention_kernel
from groupo.models.logprobs import Packed, pack, token_logprobs, trim
from groupo.models.precision import AUTOCAST_DTYPES
from groupo.types import Completion, LossSettings


@dataclass(frozen=True)
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


def loss_settings(cfg: Config) -> LossSettings:
    """The preset's settings with every `algorithm.*` key the user set (None = the preset's)."""
    names = [f.name for f in dataclasses.fields(LossSettings)]
    return get_preset(cfg.algorithm.preset).with_overrides(**{n: getattr(cfg.algorithm, n) for n in names})


def update_settings(cfg: Config, *, amp: str, device_type: str, share_prompts: bool) -> UpdateSettings:
    R, A, T = cfg.rollout, cfg.algorithm, cfg.train
    return UpdateSettings(loss_settings(cfg), R.temperature, T.micro_batch_size, R.max_new_tokens,
                          A.num_iterations, T.max_grad_norm, amp, device_type, share_prompts=share_prompts,
                          tis_cap=A.tis_cap, engine_old_logprobs=A.engine_old_logprobs,
                          micro_batch_tokens=T.micro_batch_tokens, attention=cfg.model.update_attention)


@dataclass(frozen=True)
class PreparedBatch:
    """This rank's rows of a step's batch, ready for the loss (B rows, T completion columns)."""

    packed: Packed                        # prompts and completions as token ids
    adv_B: torch.Tensor                   # (B,) one advantage per completion, or (B, T) per token
    mask_BT: torch.Tensor                 # (B, T) 1.0 for the tokens that count in the loss
    old_logp_BT: torch.Tensor | None = None     # None when mu == 1: the current log-probs, detached
    ref_logp_BT: torch.Tensor | None = None     # None when beta == 0
    denominator: torch.Tensor | None = None     # the global batch's loss_denominator; None = this batch's
    n_tokens: torch.Tensor | None = None        # the global batch's counted tokens; None = this batch's
    loss_scale: float = 1.0               # world size: DDP / FSDP2 average gradients over the ranks
    engine_logp_BT: torch.Tensor | None = None  # the engine's log-probs of the sampled tokens


def loss_mask(completions: list[Completion], width: int, mask_truncated: bool) -> torch.Tensor:
    """(B, width) float: the tokens that count in the loss, the only place this is decided.

    A completion's tokens count where the policy sampled them: in an episode with tools, the tool
    and environment tokens between turns (`Completion.sampled_mask` 0) are context, not actions.
    With `mask_truncated`, no token of a completion cut by the length limit counts (DAPO).
    """
    mask_BT = torch.zeros(len(completions), width)
    for b, c in enumerate(completions):
        if mask_truncated and c.finish_reason == "length":
            continue
        row = c.sampled_mask if c.sampled_mask is not None else [1] * len(c.token_ids)
        mask_BT[b, :len(row)] = torch.tensor(row, dtype=torch.float32)
    return mask_BT


def rows(packed: Packed, sl: slice) -> Packed:
    """The rows `sl` of a Packed batch, without the columns that are padding in all of them
    (so a micro-batch of short sequences is not charged for the batch's longest one)."""
    return trim(dataclasses.replace(packed, **{
        f.name: getattr(packed, f.name)[sl] for f in dataclasses.fields(packed)
        if isinstance(getattr(packed, f.name), torch.Tensor)}))


def micro_batches(packed: Packed, size: int, tokens: int = 0) -> list[slice]:
    """The rows of each forward/backward pass, consecutive (a group's rows stay together where they
    fit, so its prompt is encoded once). `tokens` 0: `size` rows each. Otherwise as many rows as fit
    in `tokens` padded positions, a micro-batch of r rows costing r x (its longest prompt + its
    longest completion), as `rows` trims it; at least one row each. Short completions then share a
    pass (fewer, larger matmuls) and long ones are split (bounded activations)."""
    B = packed.completion_ids_BT.shape[0]
    if not tokens:
        return [slice(i, i + size) for i in range(0, B, size)]
    P = packed.prompt_len
    prompt_B = packed.attention_mask_BL[:, :P].sum(-1).tolist()
    completion_B = packed.completion_mask_BT.sum(-1).long().tolist()
    out, start, p, c = [], 0, 0, 0
    for b in range(B):
        p2, c2 = max(p, prompt_B[b]), max(c, completion_B[b])
        if b > start and (b - start + 1) * (p2 + c2) > tokens:
            out.append(slice(start, b))
            start, p2, c2 = b, prompt_B[b], completion_B[b]
        p, c = p2, c2
    return [*out, slice(start, B)] if B else out


def autocast(kind: str, device_type: str = "cpu"):
    """Mixed-precision context for forward passes ("none", "bf16", "fp16"; see models.precision)."""
    dtype = AUTOCAST_DTYPES[kind]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


@torch.no_grad()
def batched_logprobs(model, packed: Packed, s: UpdateSettings) -> torch.Tensor:
    """(B, T) log-probs under `model` without gradients, in micro-batches (old / reference policy)."""
    out = []
    T = packed.completion_mask_BT.shape[1]
    for sl in micro_batches(packed, s.micro_batch_size, s.micro_batch_tokens):
        with autocast(s.amp, s.device_type), attention_kernel(model, s.attention):
            logp, _ = token_logprobs(model, rows(packed, sl), s.temperature, share_prompts=s.share_prompts)
        out.append(torch.nn.functional.pad(logp.float(), (0, T - logp.shape[1])))  # back to width T
    return torch.cat(out) if out else packed.completion_mask_BT.new_zeros((0, T))


def prepare(module: torch.nn.Module, policy, rollout, s: UpdateSettings, world: Dist, *, pad_id: int,
            device: torch.device) -> PreparedBatch:
    """This rank's share of `rollout` (a trainer.collect.RolloutBatch, the whole global batch on
    every rank) with its advantages and masks, and the no-grad passes the loss needs.

    The advantages (so adv_scale=batch's std) and the loss denominator (token_mean's token count,
    the sequence count of the others) are those of the global batch, so W ranks compute the
    gradient of one global loss, not an average of per-rank losses. `module` runs the old-policy
    pass (DDP / FSDP2, see trainer.parallel); `policy` gives the reference.
    """
    L = s.loss
    adv_PG = group_advantages(rollout.rewards_PG, baseline=L.adv_baseline, scale=L.adv_scale, std=L.adv_std,
                              eps=L.adv_eps)
    everyone = loss_mask(rollout.completions, max((len(c.token_ids) for c in rollout.completions), default=0),
                         L.mask_truncated)
    n_tokens = everyone.sum().clamp(min=1).to(device)
    mine = rollout.share(world)
    packed = pack(mine.prompt_ids, mine.completion_ids, pad_id).to(device)
    mask_BT = loss_mask(mine.completions, packed.completion_mask_BT.shape[1], L.mask_truncated).to(device)
    engine_BT = torch.zeros_like(mask_BT)
    for b, lp in enumerate(mine.engine_logprobs):
        engine_BT[b, :len(lp)] = torch.tensor(lp, dtype=torch.float32)
    old = ref = None
    if s.num_iterations > 1:  # mu > 1: the sampling policy's log-probs, fixed for all updates
        old = batched_logprobs(module, packed, s)
    elif s.engine_old_logprobs:  # GSPO, mu = 1: the engine's log-probs are the old policy
        old = engine_BT
    if L.beta > 0:
        with policy.reference() as ref_model:
            ref = batched_logprobs(ref_model, packed, s)
    return PreparedBatch(packed=packed, adv_B=adv_PG[world.rank::world.world_size].flatten().to(device),
                         mask_BT=mask_BT, old_logp_BT=old, ref_logp_BT=ref,
                         denominator=loss_denominator(everyone, L.aggregation).to(device), n_tokens=n_tokens,
                         loss_scale=float(world.world_size), engine_logp_BT=engine_BT)
