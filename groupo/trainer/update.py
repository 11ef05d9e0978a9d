"""Stage 3 of a step, update: mu optimizer steps on a prepared batch, with exact gradient
accumulation over micro-batches.

The loss of a batch depends neither on the micro-batch size nor on the number of ranks: every
micro-batch on every rank divides by the global batch's denominator (`PreparedBatch.denominator`),
so the accumulated (and, across ranks, all-reduced) gradient is the full-batch one.
"""

from __future__ import annotations

import math

import torch

from groupo.algorithms import loss_denominator, masked_mean, policy_loss
from groupo.algorithms.offpolicy import sampler_mismatch, tis_weights
from groupo.distributed import Dist, all_reduce
from groupo.models.attention import attention_kernel
from groupo.models.logprobs import token_logprobs
from groupo.models.precision import autocast
from groupo.trainer.parallel import grad_norm_value, grad_sync
from groupo.trainer.passes import micro_batches, rows
from groupo.trainer.prepare import PreparedBatch
from groupo.trainer.settings import UpdateSettings

SUMMED = ("loss", "kl", "clip_low_frac", "clip_high_frac", "ratio_mean", "entropy")
MISMATCH = ("rollout/logprob_mismatch", "rollout/mismatch_kl")  # engine vs trainer, see algorithms.offpolicy


def accumulate_gradients(model, batch: PreparedBatch, s: UpdateSettings) -> dict[str, torch.Tensor]:
    """Forward/backward every micro-batch of `batch`; gradients accumulate in `.grad`.

    Returns this rank's share of the batch's metrics as 0-d tensors (no host sync): the loss and
    token-weighted KL, clip fractions, ratio mean and entropy, each weighted by tokens / the global
    token count so that summing over ranks gives the global value (`reduce_metrics`); and the
    ratio's min and max. Only the last micro-batch all-reduces gradients (DDP no_sync, FSDP2
    set_requires_gradient_sync).
    """
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
    slices = micro_batches(batch.packed, s.micro_batch_size, s.micro_batch_tokens)
    for sl in slices:
        # the kernel holds through the backward: checkpointed layers recompute their forward there
        with grad_sync(model, enabled=sl is slices[-1]), attention_kernel(model, s.attention):
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


def update(module: torch.nn.Module, optimizer, scheduler, batch: PreparedBatch, s: UpdateSettings, world: Dist, *,
           seed: int) -> dict[str, float]:
    """mu optimizer steps on this rank's `batch`; returns the step's metrics, reduced over the ranks.
    `module` is what the forward passes go through (DDP / FSDP2, see trainer.parallel)."""
    module.train()
    # The optimizer's own parameters, not model.parameters(): under FSDP2 the latter yields, for a
    # unit left gathered after a forward (the root, after the no-grad passes of prepare), its
    # unsharded tensors, whose gradients are not the ones the optimizer steps on (measured: a grad
    # norm of 0.475 for 0.767, on the second update of a batch).
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
