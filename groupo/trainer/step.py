"""One policy update on a scored batch: micro-batches with exact gradient accumulation.

The loss of a batch depends neither on the micro-batch size nor on the number of ranks: every
micro-batch on every rank divides by the global batch's denominator (`loss_denominator`), so the
accumulated (and, across ranks, all-reduced) gradient is the full-batch one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass

import torch

from groupo.algorithms import group_advantages, loss_denominator, masked_mean, policy_loss
from groupo.algorithms.offpolicy import sampler_mismatch, tis_weights
from groupo.algorithms.presets import LossSettings, get_preset
from groupo.config import AlgorithmConfig, Config
from groupo.distributed import Dist, all_reduce
from groupo.models.logprobs import pack, token_logprobs, trim
from groupo.models.precision import AUTOCAST_DTYPES
from groupo.trainer.parallel import grad_norm_value, grad_sync


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


def loss_settings(cfg: Config) -> LossSettings:
    """The preset's settings with every `algorithm.*` key the user set (None = the preset's)."""
    names = {f.name for f in dataclasses.fields(LossSettings)} & {f.name for f in dataclasses.fields(AlgorithmConfig)}
    return get_preset(cfg.algorithm.preset).with_overrides(**{n: getattr(cfg.algorithm, n) for n in names})


@dataclass
class UpdateBatch:
    packed: object                        # groupo.models.logprobs.Packed: B rows (this rank's)
    adv_B: torch.Tensor                   # (B,) one advantage per completion, or (B, T) per token
    mask_BT: torch.Tensor                 # (B, T) tokens that count in the loss
    old_logp_BT: torch.Tensor | None      # None when mu == 1: the current log-probs, detached
    ref_logp_BT: torch.Tensor | None      # None when beta == 0
    denominator: torch.Tensor | None = None  # the global batch's loss_denominator; None = this batch's
    n_tokens: torch.Tensor | None = None     # the global batch's counted tokens; None = this batch's
    loss_scale: float = 1.0               # world size: DDP / FSDP2 average gradients over the ranks
    engine_logp_BT: torch.Tensor | None = None  # the engine's log-probs of the sampled tokens


def rows(packed, sl: slice):
    """The rows `sl` of a Packed batch, without the columns that are padding in all of them
    (so a micro-batch of short sequences is not charged for the batch's longest one)."""
    return trim(dataclasses.replace(packed, **{
        f.name: getattr(packed, f.name)[sl] for f in dataclasses.fields(packed)
        if isinstance(getattr(packed, f.name), torch.Tensor)}))


def autocast(kind: str, device_type: str = "cpu"):
    """Mixed-precision context for forward passes ("none", "bf16", "fp16"; see models.precision)."""
    dtype = AUTOCAST_DTYPES[kind]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


@torch.no_grad()
def batched_logprobs(model, packed, s: UpdateSettings) -> torch.Tensor:
    """(B, T) log-probs under `model` without gradients, in micro-batches (old / reference policy)."""
    out = []
    B, T = packed.completion_mask_BT.shape
    for i in range(0, B, s.micro_batch_size):
        with autocast(s.amp, s.device_type):
            logp, _ = token_logprobs(model, rows(packed, slice(i, i + s.micro_batch_size)), s.temperature,
                                     share_prompts=s.share_prompts)
        out.append(torch.nn.functional.pad(logp.float(), (0, T - logp.shape[1])))  # back to width T
    return torch.cat(out) if out else packed.completion_mask_BT.new_zeros((0, T))


SUMMED = ("loss", "kl", "clip_low_frac", "clip_high_frac", "ratio_mean", "entropy")
MISMATCH = ("rollout/logprob_mismatch", "rollout/mismatch_kl")  # engine vs trainer, see algorithms.offpolicy


def accumulate_gradients(model, batch: UpdateBatch, s: UpdateSettings) -> dict[str, torch.Tensor]:
    """Forward/backward every micro-batch of `batch`; gradients accumulate in `.grad`.

    Returns this rank's share of the batch's metrics as 0-d tensors (no host sync): the loss and
    token-weighted KL, clip fractions, ratio mean and entropy, each weighted by tokens / the global
    token count so that summing over ranks gives the global value (`reduce_metrics`); and the
    ratio's min and max. Only the last micro-batch all-reduces gradients (DDP no_sync, FSDP2
    set_requires_gradient_sync).
    """
    B = batch.mask_BT.shape[0]
    denom = batch.denominator if batch.denominator is not None else loss_denominator(batch.mask_BT,
                                                                                      s.loss.aggregation)
    n_tokens = batch.n_tokens if batch.n_tokens is not None else batch.mask_BT.sum()
    n_tokens = n_tokens.clamp(min=1)
    zero = batch.mask_BT.new_zeros(())
    engine = batch.engine_logp_BT
    keys = [k for k in SUMMED if k != "kl" or batch.ref_logp_BT is not None]
    keys += [*MISMATCH, *(["rollout/tis_weight_mean"] if s.tis_cap else [])] if engine is not None else []
    sums = {k: zero.clone() for k in keys}
    ratio_min, ratio_max = zero + math.inf, zero - math.inf
    starts = range(0, B, s.micro_batch_size)
    for i in starts:
        sl = slice(i, i + s.micro_batch_size)
        with grad_sync(model, enabled=i == starts[-1]):
            with autocast(s.amp, s.device_type):
                logp, entropy = token_logprobs(model, rows(batch.packed, sl), s.temperature, with_entropy=True,
                                               share_prompts=s.share_prompts)
            logp = logp.float()
            t = logp.shape[1]  # trimmed width; the columns past it are padding in every row
            mask = batch.mask_BT[sl, :t]
            old = batch.old_logp_BT[sl, :t] if batch.old_logp_BT is not None else logp.detach()
            ref = batch.ref_logp_BT[sl, :t] if batch.ref_logp_BT is not None else None
            adv = batch.adv_B[sl] if batch.adv_B.ndim == 1 else batch.adv_B[sl, :t]
            eng = engine[sl, :t] if engine is not None else None
            is_w = tis_weights(old, eng, s.tis_cap) if s.tis_cap and eng is not None else None
            out = policy_loss(logp, old, adv, mask, s.loss, ref_logp_BT=ref, max_len=s.max_len,
                              denominator=denom, is_weight_BT=is_w)
            (out.loss * batch.loss_scale).backward()
        m = {**out.metrics, "loss": out.loss.detach(), "entropy": masked_mean(entropy.float(), mask)}
        if eng is not None:  # the trainer's view of the sampling weights: its current log-probs
            mis = sampler_mismatch(logp.detach(), eng, mask)
            m |= {MISMATCH[0]: mis["abs_diff"], MISMATCH[1]: mis["kl"]}
            if is_w is not None:
                m["rollout/tis_weight_mean"] = masked_mean(is_w, mask)
        w = mask.sum() / n_tokens  # token-weighted means across micro-batches (and ranks)
        for k in sums:
            sums[k] += m[k] if k == "loss" else w * m[k]
        if mask.any():
            ratio_min, ratio_max = torch.minimum(ratio_min, m["ratio_min"]), torch.maximum(ratio_max, m["ratio_max"])
    return {**sums, "ratio_min": ratio_min, "ratio_max": ratio_max}


def reduce_metrics(metrics: dict[str, torch.Tensor], world: Dist) -> dict[str, float]:
    """One host sync per step: sums over ranks for the summed metrics, min / max for the ratio's."""
    summed = [k for k in metrics if k not in ("ratio_min", "ratio_max", "grad_norm")]
    out = dict(zip(summed, all_reduce(torch.stack([metrics[k] for k in summed]), "sum", world).tolist(),
                   strict=True))
    for k, op in (("ratio_min", "min"), ("ratio_max", "max")):
        if k in metrics:
            v = all_reduce(metrics[k].clone(), op, world).item()
            out[k] = v if math.isfinite(v) else 1.0
    if "grad_norm" in metrics:  # already global: clip_grad_norm_ after the all-reduce
        out["grad_norm"] = metrics["grad_norm"].item()
    return out


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas: list[float],
                    warmup_steps: int, total_steps: int, schedule: str):
    """AdamW over the trainable parameters; linear warm-up, then constant or cosine to 0."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "cosine":
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def learn(module: torch.nn.Module, policy, optimizer, scheduler, rollout, s: UpdateSettings, world: Dist, *,
          pad_id: int, seed: int, device: torch.device) -> dict[str, float]:
    """Advantages over the global batch, then mu optimizer updates on this rank's groups.

    `rollout` (a trainer.rollout.RolloutBatch) is the whole global batch on every rank. The
    advantages (so adv_scale=batch's std) and the loss denominators (token_mean's token count,
    the sequence count of the others) are those of the global batch, so W ranks compute the
    gradient of one global loss, not an average of per-rank losses. `module` is what the forward
    passes go through (DDP / FSDP2, see trainer.parallel); `policy` gives the reference.
    Returns the step's metrics, reduced over the ranks.
    """
    L = s.loss
    adv_PG = group_advantages(rollout.rewards_PG, baseline=L.adv_baseline, scale=L.adv_scale, std=L.adv_std,
                              eps=L.adv_eps)
    counted = [0 if L.mask_truncated and c.finish_reason == "length" else len(c.token_ids)
               for c in rollout.completions]
    n_tokens = torch.tensor(float(max(1, sum(counted))), device=device)
    denominator = n_tokens if L.aggregation == "token_mean" else torch.tensor(float(len(counted)), device=device)
    mine = rollout.share(world)
    packed = pack(mine.prompt_ids, mine.completion_ids, pad_id).to(device)
    mask_BT = packed.completion_mask_BT.float()
    if L.mask_truncated:
        truncated_B = torch.tensor([r == "length" for r in mine.finish_reasons], device=device)
        mask_BT = mask_BT * (~truncated_B).float()[:, None]
    old = ref = None
    if s.num_iterations > 1:  # mu > 1: the sampling policy's log-probs, fixed for all updates
        old = batched_logprobs(module, packed, s)
    if L.beta > 0:
        with policy.reference() as ref_model:
            ref = batched_logprobs(ref_model, packed, s)
    adv_B = adv_PG[world.rank::world.world_size].flatten().to(device)
    engine_BT = torch.zeros_like(mask_BT)
    for b, lp in enumerate(mine.engine_logprobs):
        engine_BT[b, :len(lp)] = torch.tensor(lp, dtype=torch.float32)
    if s.engine_old_logprobs:  # GSPO, mu = 1: the engine's log-probs are the old policy
        old = engine_BT
    batch = UpdateBatch(packed, adv_B, mask_BT, old, ref, denominator, n_tokens, float(world.world_size),
                        engine_BT)

    module.train()
    # The optimizer's own parameters, not model.parameters(): under FSDP2 the latter yields, for a
    # unit left gathered after a forward (the root, after the no-grad passes above), its unsharded
    # tensors, whose gradients are not the ones the optimizer steps on (measured: a grad norm of
    # 0.475 for 0.767, on the second update of a batch).
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    for it in range(s.num_iterations):
        torch.manual_seed(seed)  # dropout masks depend on the step (and rank) only: exact resume
        optimizer.zero_grad(set_to_none=True)
        metrics = accumulate_gradients(module, batch, s)
        if it == 0:  # measured before any update of this batch: the weights that sampled it
            mismatch = {k: metrics[k] for k in MISMATCH if k in metrics}
        metrics |= mismatch
        norm = torch.nn.utils.clip_grad_norm_(trainable, s.max_grad_norm or float("inf"))
        metrics["grad_norm"] = grad_norm_value(norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
    return {**reduce_metrics(metrics, world), "lr": lr}
