"""Stage 2 of a step, prepare: a scored global batch -> what the optimizer steps need.

Pure apart from the no-grad forward passes: the advantages (over the global batch), the per-token
loss mask (decided in `loss_mask`, nowhere else), the global loss denominator (`algorithms.
loss_denominator` of the global mask), this rank's rows packed, the engine's log-probs as a
tensor, and the old / reference log-probs. Testable without an optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from groupo.algorithms import group_advantages, loss_denominator
from groupo.distributed import Dist
from groupo.models.logprobs import Packed, pack
from groupo.trainer.passes import batched_logprobs
from groupo.trainer.settings import UpdateSettings
from groupo.types import Completion


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
