"""One policy update on a scored batch: micro-batches with exact gradient accumulation.

The loss of a batch does not depend on the micro-batch size: every micro-batch divides by the
full batch's denominator (`loss_denominator`), so the accumulated gradient is the full-batch one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass

import torch

from groupo.algorithms import loss_denominator, masked_mean, policy_loss
from groupo.algorithms.presets import LossSettings
from groupo.models.logprobs import token_logprobs, trim
from groupo.models.precision import AUTOCAST_DTYPES


@dataclass
class UpdateBatch:
    packed: object                        # groupo.models.logprobs.Packed: B rows
    adv_B: torch.Tensor                   # (B,) one advantage per completion, or (B, T) per token
    mask_BT: torch.Tensor                 # (B, T) tokens that count in the loss
    old_logp_BT: torch.Tensor | None      # None when mu == 1: the current log-probs, detached
    ref_logp_BT: torch.Tensor | None      # None when beta == 0


def rows(packed, sl: slice):
    """The rows `sl` of a Packed batch, without the columns that are padding in all of them
    (so a micro-batch of short sequences is not charged for the batch's longest one)."""
    return trim(dataclasses.replace(packed, **{
        f.name: getattr(packed, f.name)[sl] for f in dataclasses.fields(packed)
        if isinstance(getattr(packed, f.name), torch.Tensor)}))


def autocast(kind: str):
    """Mixed-precision context for forward passes ("none", "bf16", "fp16"; see models.precision)."""
    dtype = AUTOCAST_DTYPES[kind]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=dtype)


@torch.no_grad()
def batched_logprobs(model, packed, temperature: float, micro_batch_size: int, amp: str) -> torch.Tensor:
    """(B, T) log-probs under `model` without gradients, in micro-batches (old / reference policy)."""
    out = []
    B, T = packed.completion_mask_BT.shape
    for i in range(0, B, micro_batch_size):
        with autocast(amp):
            logp, _ = token_logprobs(model, rows(packed, slice(i, i + micro_batch_size)), temperature)
        out.append(torch.nn.functional.pad(logp.float(), (0, T - logp.shape[1])))  # back to width T
    return torch.cat(out)


def accumulate_gradients(model, batch: UpdateBatch, settings: LossSettings, *, preset: str, beta: float,
                         temperature: float, micro_batch_size: int, max_len: int,
                         amp: str = "none") -> dict[str, float]:
    """Forward/backward every micro-batch of `batch`; gradients accumulate in `.grad`.

    Returns the batch's metrics: loss, KL, clip fractions, ratio stats, entropy.
    """
    overrides = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
                 if f.name not in ("beta", "paper")}
    B = batch.mask_BT.shape[0]
    denom = loss_denominator(batch.mask_BT, settings.aggregation)
    n_tokens = batch.mask_BT.sum().clamp(min=1)
    sums: dict[str, float] = {}
    ratio_min, ratio_max = math.inf, -math.inf
    loss_total = 0.0
    for i in range(0, B, micro_batch_size):
        sl = slice(i, i + micro_batch_size)
        with autocast(amp):
            logp, entropy = token_logprobs(model, rows(batch.packed, sl), temperature, with_entropy=True)
        logp = logp.float()
        t = logp.shape[1]  # trimmed width; the columns past it are padding in every row
        mask = batch.mask_BT[sl, :t]
        old = batch.old_logp_BT[sl, :t] if batch.old_logp_BT is not None else logp.detach()
        ref = batch.ref_logp_BT[sl, :t] if batch.ref_logp_BT is not None else None
        adv = batch.adv_B[sl] if batch.adv_B.ndim == 1 else batch.adv_B[sl, :t]
        out = policy_loss(logp, old, adv, mask, preset, ref_logp_BT=ref, beta=beta,
                          max_len=max_len, denominator=denom, **overrides)
        out.loss.backward()
        loss_total += out.loss.item()
        # token-weighted means across micro-batches
        w = (mask.sum() / n_tokens).item()
        for k in ("kl", "clip_low_frac", "clip_high_frac", "ratio_mean"):
            if k in out.metrics:
                sums[k] = sums.get(k, 0.0) + w * out.metrics[k].item()
        sums["entropy"] = sums.get("entropy", 0.0) + w * masked_mean(entropy.float(), mask).item()
        if mask.any():
            ratio_min = min(ratio_min, out.metrics["ratio_min"].item())
            ratio_max = max(ratio_max, out.metrics["ratio_max"].item())
    return {"loss": loss_total, **sums,
            "ratio_min": ratio_min if math.isfinite(ratio_min) else 1.0,
            "ratio_max": ratio_max if math.isfinite(ratio_max) else 1.0}


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
