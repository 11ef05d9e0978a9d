"""Stage 3 of a step, update: mu passes over a prepared batch's mini-batches (one, unless
train.steps_per_generation), an optimizer step each, with exact gradient accumulation over micro-batches.

The loss of a batch depends neither on the micro-batch size nor on the number of ranks: every
micro-batch on every rank divides by the global batch's denominator (`PreparedBatch.denominator`),
so the accumulated (and, across ranks, all-reduced) gradient is the full-batch one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from groupo.algorithms import loss_denominator, masked_mean, policy_loss
from groupo.algorithms.entropy import adapt_entropy_coef, applied_entropy_coef
from groupo.algorithms.offpolicy import is_weights, off_policy_sequence_mask, sampler_mismatch
from groupo.distributed import Dist, all_reduce
from groupo.models.attention import attention_kernel
from groupo.models.logprobs import token_logprobs
from groupo.models.precision import autocast
from groupo.trainer.parallel import grad_norm_value, grad_sync
from groupo.trainer.passes import micro_batches, rows
from groupo.trainer.prepare import PreparedBatch, minibatches
from groupo.trainer.settings import UpdateSettings

SUMMED = ("loss", "kl", "clip_low_frac", "clip_high_frac", "ratio_mean", "entropy")
MISMATCH = ("rollout/logprob_mismatch", "rollout/mismatch_kl")  # engine vs trainer, see algorithms.offpolicy
LOSS_PARTS = ("loss", "entropy_bonus")  # summed over micro-batches as they are: each divides by the batch's count
KEPT = ("entropy_kept_sum", "entropy_kept_n")  # entropy over the tokens the policy term keeps: sum, count


@dataclass
class EntropyControl:
    """Adaptive entropy control's state between optimizer steps (algorithms.entropy); checkpointed."""

    coef: float                          # the coefficient of the next step (before the gate)
    last_entropy: float = math.inf       # the last step's entropy over the kept tokens (inf: none yet)


def _corrections(logp, old, eng, adv, mask, s: UpdateSettings) -> tuple[torch.Tensor | None, dict]:
    """The weight of each token's policy term against the sampler (algorithm.is_correction, and
    DeepSeek-V3.2's off-policy sequence mask against the engine's log-probs), and its metrics."""
    if eng is None:
        return None, {}
    w, metrics = is_weights(old, eng, mask, s.is_correction, upper=s.is_upper, lower=s.is_lower)
    if s.off_policy_mask is not None:
        keep, dropped = off_policy_sequence_mask(logp, eng, adv, mask, s.off_policy_mask)
        w, metrics = (keep if w is None else w * keep), metrics | dropped
    return w, metrics


def accumulate_gradients(model, batch: PreparedBatch, s: UpdateSettings, *,
                         entropy_coef: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Forward/backward every micro-batch of `batch`; gradients accumulate in `.grad`.

    Returns this rank's share of the batch's metrics as 0-d tensors (no host sync): the loss (and
    the entropy bonus in it), and token-weighted KL, clip fractions, ratio mean, entropy and the
    correction's fractions, each weighted by tokens (its *_seq_frac by sequences) / the global count
    so that summing over ranks gives the global value (`reduce_metrics`); the ratio's min and max;
    the kept tokens' entropy sum and count (KEPT). Only the last micro-batch all-reduces gradients
    (DDP no_sync, FSDP2 set_requires_gradient_sync). `entropy_coef`: adaptive control's
    coefficient, None = the settings' constant.
    """
    denom = batch.denominator if batch.denominator is not None else loss_denominator(batch.mask_BT,
                                                                                      s.loss.aggregation)
    n_tokens = batch.n_tokens if batch.n_tokens is not None else batch.mask_BT.sum()
    n_tokens = n_tokens.clamp(min=1)
    n_seqs = (batch.n_seqs if batch.n_seqs is not None else batch.mask_BT.bool().any(-1).sum()).clamp(min=1)
    zero = batch.mask_BT.new_zeros(())
    engine = batch.engine_logp_BT
    # old_logp_BT is the trainer's own sampling-time pass unless the engine's log-probs stand in for it
    trainer_old = batch.old_logp_BT if not s.engine_old_logprobs else None
    keys = [k for k in SUMMED if k != "kl" or batch.ref_logp_BT is not None]
    keys += [*MISMATCH] if engine is not None else []
    sums = {k: zero.clone() for k in [*keys, *KEPT]}
    ratio_min, ratio_max = zero + math.inf, zero - math.inf
    slices = micro_batches(batch.packed, s.micro_batch_size, s.micro_batch_tokens, s.packing)
    for sl in slices:
        # the kernel holds through the backward: checkpointed layers recompute their forward there
        with grad_sync(model, enabled=sl is slices[-1]), attention_kernel(model, s.attention, packing=s.packing):
            with autocast(s.amp, s.device_type):
                logp, entropy = token_logprobs(model, rows(batch.packed, sl), s.temperature, with_entropy=True,
                                               share_prompts=s.share_prompts, packing=s.packing)
            logp = logp.float()
            t = logp.shape[1]  # trimmed width; the columns past it are padding in every row
            mask = batch.mask_BT[sl, :t]
            old = batch.old_logp_BT[sl, :t] if batch.old_logp_BT is not None else logp.detach()
            ref = batch.ref_logp_BT[sl, :t] if batch.ref_logp_BT is not None else None
            adv = batch.adv_B[sl] if batch.adv_B.ndim == 1 else batch.adv_B[sl, :t]
            eng = engine[sl, :t] if engine is not None else None
            is_w, corrected = _corrections(logp, old, eng, adv, mask, s)
            entropy = entropy.float()  # differentiable: the entropy bonus's gradient goes through it
            out = policy_loss(logp, old, adv, mask, s.loss, ref_logp_BT=ref, max_len=s.max_len,
                              denominator=denom, is_weight_BT=is_w, entropy_BT=entropy, entropy_coef=entropy_coef)
            (out.loss * batch.loss_scale).backward()
        m = {**out.metrics, **corrected, "loss": out.loss.detach(), "entropy": masked_mean(entropy.detach(), mask)}
        if eng is not None:  # the trainer's view of the sampling weights: its sampling-time or current log-probs
            view = trainer_old[sl, :t] if trainer_old is not None else logp.detach()
            mis = sampler_mismatch(view, eng, mask)
            m |= {MISMATCH[0]: mis["abs_diff"], MISMATCH[1]: mis["kl"]}
        kept_n = m.pop("entropy_kept_frac") * mask.sum()
        m |= {KEPT[0]: m.pop("entropy_kept") * kept_n, KEPT[1]: kept_n}
        if s.loss.top_entropy_quantile < 1.0:
            m["entropy_kept_frac"] = kept_n / mask.sum().clamp(min=1)
        # token-weighted means across micro-batches (and ranks); sequence-weighted for *_seq_frac
        w, w_seq = mask.sum() / n_tokens, mask.bool().any(-1).sum() / n_seqs
        for k, v in m.items():
            if k not in ("ratio_min", "ratio_max"):
                weight = 1.0 if k in LOSS_PARTS or k in KEPT else w_seq if k.endswith("_seq_frac") else w
                sums[k] = sums.get(k, zero) + weight * v
        if mask.any():
            ratio_min, ratio_max = torch.minimum(ratio_min, m["ratio_min"]), torch.maximum(ratio_max, m["ratio_max"])
    return {**sums, "ratio_min": ratio_min, "ratio_max": ratio_max}


def reduce_metrics(metrics: dict[str, torch.Tensor], world: Dist) -> dict[str, float]:
    """One host sync per step: sums over ranks for the summed metrics, min / max for the ratio's."""
    summed = [k for k in metrics if k not in ("ratio_min", "ratio_max", "grad_norm", "entropy_coef")]
    out = dict(zip(summed, all_reduce(torch.stack([metrics[k] for k in summed]), "sum", world).tolist(),
                   strict=True))
    for k, op in (("ratio_min", "min"), ("ratio_max", "max")):
        if k in metrics:
            v = all_reduce(metrics[k].clone(), op, world).item()
            out[k] = v if math.isfinite(v) else 1.0
    for k in ("grad_norm", "entropy_coef"):  # already global: clip_grad_norm_ after the all-reduce
        if k in metrics:
            out[k] = metrics[k].item()
    kept_sum, kept_n = out.pop(KEPT[0], 0.0), out.pop(KEPT[1], 0.0)
    if "entropy_kept_frac" in out:  # top_entropy_quantile < 1: the entropy of the tokens trained on
        out["entropy_kept"] = kept_sum / max(kept_n, 1e-12)
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
           seed: int, entropy_control: EntropyControl | None = None) -> dict[str, float]:
    """The optimizer steps of this rank's `batch`: mu passes (algorithm.num_iterations) over its
    mini-batches (train.steps_per_generation), one step each, as TRL and verl order them; returns
    the metrics of the last pass, reduced over the ranks. `module` is what the forward passes go
    through (DDP / FSDP2, see trainer.parallel). `entropy_control` (adaptive entropy control) is
    moved on after every step."""
    module.train()
    # The optimizer's own parameters, not model.parameters(): under FSDP2 the latter yields, for a
    # unit left gathered after a forward (the root, after the no-grad passes of prepare), its
    # unsharded tensors, whose gradients are not the ones the optimizer steps on (measured: a grad
    # norm of 0.475 for 0.767, on the second update of a batch).
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    parts = minibatches(batch)
    control = None
    if entropy_control is not None:  # kept as tensors between steps: no host sync per step
        control = [batch.mask_BT.new_tensor(v) for v in (entropy_control.coef, entropy_control.last_entropy)]
    for it in range(s.num_iterations):
        steps = []
        for part in parts:
            torch.manual_seed(seed)  # dropout masks depend on the step (and rank) only: exact resume
            optimizer.zero_grad(set_to_none=True)
            coef = applied_entropy_coef(*control, s.entropy_target) if control is not None else None
            metrics = accumulate_gradients(module, part, s, entropy_coef=coef)
            if control is not None:  # this step's entropy over the kept tokens, all ranks: the next coefficient
                kept = all_reduce(torch.stack([metrics[k] for k in KEPT]), "sum", world)
                entropy = kept[0] / kept[1].clamp(min=1e-12)
                control = [adapt_entropy_coef(control[0], entropy, target=s.entropy_target, delta=s.entropy_coef_delta,
                                              low=s.entropy_coef_min, high=s.entropy_coef_max), entropy]
            norm = torch.nn.utils.clip_grad_norm_(trainable, s.max_grad_norm or float("inf"))
            metrics["grad_norm"] = grad_norm_value(norm)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            steps.append(metrics)
        if it == 0:  # measured before any update of this batch: the weights that sampled it
            mismatch = {k: sum(m[k] for m in steps) for k in MISMATCH if k in steps[0]}
    metrics = _over_steps(steps) | mismatch
    if control is not None:
        metrics["entropy_coef"] = control[0]
        entropy_control.coef, entropy_control.last_entropy = control[0].item(), control[1].item()
    return {**reduce_metrics(metrics, world), "lr": lr}


def _over_steps(steps: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One pass's metrics from its optimizer steps' (one per mini-batch, each weighted by the whole
    batch's counts): summed, except the losses and gradient norms, each its own step's (mean), and
    the ratio's min and max."""
    out = {}
    for k in steps[0]:
        v = torch.stack([m[k] for m in steps])
        out[k] = (v.min() if k == "ratio_min" else v.max() if k == "ratio_max"
                  else v.mean() if k in (*LOSS_PARTS, "grad_norm") else v.sum())
    return out
