"""Stage 2 of a step, prepare: a scored global batch -> what the optimizer steps need.

Pure apart from the no-grad forward passes: the advantages (over the global batch), the per-token
loss mask (decided in `loss_mask`, nowhere else), the global loss denominator (`algorithms.
loss_denominator` of the global mask), this rank's rows packed, the engine's log-probs as a
tensor, and the old / reference log-probs. Testable without an optimizer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from groupo.algorithms import decoupled_advantages, group_advantages, loss_denominator
from groupo.distributed import Dist
from groupo.models.logprobs import Packed, pack
from groupo.trainer.passes import batched_logprobs, rows
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
    n_seqs: torch.Tensor | None = None          # the global batch's sequences with a counted token
    # train.steps_per_generation > 1: (this rank's rows, the global mini-batch's denominator) per optimizer step
    minibatches: tuple[tuple[slice, torch.Tensor], ...] = ()


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
    adv_PG = advantages(rollout, L)
    everyone = loss_mask(rollout.completions, max((len(c.token_ids) for c in rollout.completions), default=0),
                         L.mask_truncated)
    n_tokens = everyone.sum().clamp(min=1).to(device)
    n_seqs = everyone.bool().any(-1).sum().clamp(min=1).to(device)
    mine = rollout.share(world)
    packed = pack(mine.prompt_ids, mine.completion_ids, pad_id).to(device)
    mask_BT = loss_mask(mine.completions, packed.completion_mask_BT.shape[1], L.mask_truncated).to(device)
    engine_BT = torch.zeros_like(mask_BT)
    for b, lp in enumerate(mine.engine_logprobs):
        engine_BT[b, :len(lp)] = torch.tensor(lp, dtype=torch.float32)
    old = ref = None
    if s.engine_old_logprobs:  # GSPO's suggestion, mu = 1: the engine's log-probs are the old policy
        old = engine_BT
    elif s.old_logprobs_needed:  # several optimizer steps: the sampling policy's log-probs, fixed for all
        old = batched_logprobs(module, packed, s)
    if L.beta > 0:
        with policy.reference() as ref_model:
            ref = batched_logprobs(ref_model, packed, s)
    return PreparedBatch(packed=packed, adv_B=adv_PG[world.rank::world.world_size].flatten().to(device),
                         mask_BT=mask_BT, old_logp_BT=old, ref_logp_BT=ref,
                         denominator=loss_denominator(everyone, L.aggregation).to(device), n_tokens=n_tokens,
                         loss_scale=float(world.world_size), engine_logp_BT=engine_BT, n_seqs=n_seqs,
                         minibatches=_minibatches(everyone, len(mine.problems), rollout.group_size,
                                                  s.steps_per_generation, L.aggregation, world, device))


def advantages(rollout, L) -> torch.Tensor:
    """(P, G) advantages of the global batch, of the weighted reward sum or (reward_norm =
    normalize_then_sum) of each reward function's scores, GDPO's way; a missing score (None) is 0, as
    in the sum."""
    kw = dict(baseline=L.adv_baseline, scale=L.adv_scale, std=L.adv_std, eps=L.adv_eps)
    if L.reward_norm == "sum_then_normalize" or not rollout.per_fn:
        return group_advantages(rollout.rewards_PG, **kw)
    P, G = rollout.rewards_PG.shape
    names = list(rollout.per_fn)
    scores_KB = torch.tensor([[0.0 if v is None else float(v) for v in rollout.per_fn[n]] for n in names])
    weights_K = torch.tensor([rollout.reward_weights.get(n, 1.0) for n in names])
    return decoupled_advantages(scores_KB.T.reshape(P, G, len(names)), weights_K, **kw)


def _minibatches(everyone_BT: torch.Tensor, groups: int, G: int, n: int, aggregation: str, world: Dist,
                 device: torch.device) -> tuple[tuple[slice, torch.Tensor], ...]:
    """train.steps_per_generation: this rank's rows of each mini-batch and that global mini-batch's loss
    denominator; () for one. Rank r holds global groups r, r + W, ... (RolloutBatch.share), so its
    local groups [a, b) and every other rank's form global mini-batch m; split as torch.tensor_split
    splits (the first ones a group larger where n does not divide), empty ones left out."""
    if n == 1:
        return ()
    out, start = [], 0
    for m in range(n):
        size = groups // n + (1 if m < groups % n else 0)
        if size:
            global_rows = [(r + k * world.world_size) * G + j
                           for k in range(start, start + size) for r in range(world.world_size) for j in range(G)]
            denominator = loss_denominator(everyone_BT[global_rows], aggregation).to(device)
            out.append((slice(start * G, (start + size) * G), denominator))
        start += size
    return tuple(out)


def minibatches(batch: PreparedBatch) -> list[PreparedBatch]:
    """The optimizer steps' shares of `batch` (train.steps_per_generation): the rows of each mini-batch
    with its own global denominator, so each step minimises its mini-batch's loss. `n_tokens` and
    `n_seqs` stay the whole batch's: metrics summed over the parts are the whole batch's means."""
    if not batch.minibatches:
        return [batch]
    out = []
    for sl, denominator in batch.minibatches:
        cut = {f.name: getattr(batch, f.name)[sl] for f in dataclasses.fields(batch)
               if isinstance(getattr(batch, f.name), torch.Tensor) and f.name not in ("denominator", "n_tokens",
                                                                                      "n_seqs")}
        out.append(dataclasses.replace(batch, **cut, packed=rows(batch.packed, sl), denominator=denominator,
                                       minibatches=()))
    return out
