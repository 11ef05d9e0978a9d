"""Seconds and bytes from traced op counts (groupo.plan.trace) and this machine's rates
(groupo.plan.machine). Pure arithmetic: every formula is here and nowhere else.

A pass takes, op by op summed: its fixed cost per op (no-grad, forward with autograd, or
backward), matmul FLOPs at the rate measured for that shape, other FLOPs (attention) at the
pass's mean matmul rate, the bytes other ops move at the measured bandwidth, and under
model.quantization each dequantization of a layer's weight at the time measured for its shape.
Nothing overlaps on a CPU, so the sum is the estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from groupo.plan.machine import Machine
from groupo.plan.trace import Counts

# Sampling reads each decoding step's (rows, vocab) logits about ten times in 4-byte words
# (float cast, log-softmax, exp, float64 cumsum, the one-hot scores generate takes the argmax of).
SAMPLING_BYTES_PER_LOGIT = 40


def seconds(c: Counts, m: Machine, grad: bool) -> float:
    """Time of a pass with counts `c`; `grad`: its forward records autograd."""
    fixed = c.ops_forward * (m.op_forward_s if grad else m.op_nograd_s) + c.ops_backward * m.op_backward_s
    mm = sum(2 * key[0] * key[1] * key[2] * n / m.matmul_rate[key] for key, n in c.matmuls.items())
    mean_rate = c.matmul_flops / mm if mm else max(m.matmul_rate.values(), default=1e11)
    dequant = sum(n * m.dequant_s.get(shape, 0.0) for shape, n in c.dequantized.items())
    return fixed + mm + c.other_flops / mean_rate + c.bytes_moved / m.bandwidth + dequant


def generation_seconds(prefill: Counts, step: Counts, steps: int, rows: int, vocab: int, m: Machine) -> float:
    """One generate call: the prefill, then `steps` decoding steps, each a forward pass, generate's
    own loop and sampling over (rows, vocab) logits."""
    per_step = seconds(step, m, grad=False) + m.generate_step_s + rows * vocab * SAMPLING_BYTES_PER_LOGIT / m.bandwidth
    return seconds(prefill, m, grad=False) + steps * per_step


@dataclass
class Memory:
    """Peak memory of a run, in bytes, by part."""

    baseline: int       # the process before the model (CPU: torch and libraries; GPU: 0)
    weights: int        # every parameter (and a reference copy for full fine-tuning with beta > 0)
    training_state: int  # AdamW's two moments of the trainable parameters (held all along)
    generation: int     # generation's peak beyond the weights: casts, merged LoRA, KV cache, a step
    update: int         # the update's peak beyond the weights: a micro-batch's activations and head chunks,
                        # the gradients (and, with several micro-batches, the ones already accumulated)
    engine: int = 0     # a vLLM engine's own weights and KV cache

    @property
    def peak(self) -> int:
        return self.baseline + self.weights + self.training_state + self.engine + max(self.generation, self.update)


def training_state_bytes(trainable: int, param_bytes: int) -> int:
    """AdamW's exp_avg and exp_avg_sq per trainable parameter, in its dtype. (Gradients are part of
    the traced update: they exist only from its backward pass on.)"""
    return 2 * trainable * param_bytes


def micro_batches(rows: int, size: int) -> list[int]:
    """Rows of each micro-batch the update splits `rows` into."""
    return [min(size, rows - i) for i in range(0, rows, size)]


def chunks(prompts: int, n: int, batch_size: int) -> list[int]:
    """Prompts in each generate call of groupo.engines.hf: whole groups, batch_size // n prompts."""
    per = max(1, batch_size // n)
    return [min(per, prompts - i) for i in range(0, prompts, per)]


def gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def fmt_s(s: float | None) -> str:
    if s is None or math.isnan(s):
        return "-"
    return f"{s:.1f} s" if s < 600 else f"{s / 60:.1f} min"
