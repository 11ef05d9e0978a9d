"""Predict a run's step time and peak memory before launching it (`groupo plan CONFIG`).

The trainer's passes (one micro-batch of the update, the reference pass, a generate call's
prefill and a decoding step) run on fake tensors built from the model's config.json: every op
with its shape and dtype, autocast and autograd included, and no arithmetic
(groupo.plan.trace). A few seconds of measurements price this machine's ops: each matmul shape,
memory bandwidth, and the fixed cost per op of eager PyTorch (groupo.plan.machine). The sum is
the estimate (groupo.plan.estimate); groupo.plan.build puts it together and, when the peak would
not fit, re-plans with smaller micro-batches, gradient checkpointing, a smaller rollout batch or
LoRA and names the settings that fit.

Entry point: `groupo.plan.build.make_plan(cfg)` (imported there, not here, so that the command
line can read this package's argument definitions without loading torch).
"""
