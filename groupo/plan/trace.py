"""Run a model's training and generation passes on fake tensors: every op's FLOPs and bytes, and
the memory it holds, with no arithmetic and no weights in memory.

A FakeTensor carries a shape, a dtype and a device and nothing else, so the model is built from
its config.json alone (any size: a 70B model costs nothing here), autocast applies as it does on
the real device, and autograd runs the real backward pass. `OpTrace`, a dispatch mode, sees each
aten op the passes issue (Python modules, autocast casts, autograd's backward): it counts them,
sums matmul FLOPs (torch's own flop formulas) and the bytes other ops read and write, and tracks
the bytes of the tensors alive, whose maximum is the pass's peak beyond what existed before it.

The passes mirror the trainer's (groupo.models.logprobs, groupo.rollout.hf): the update's
shared-prompt forward with the chunked, checkpointed output head, and a decoding step with a KV
cache. Masks are given as 4D tensors (the form transformers uses as is) because building them
from 2D padding masks reads values that fake tensors do not have.
"""

from __future__ import annotations

import math
import weakref
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

MATMULS = {"mm", "addmm", "bmm", "baddbmm"}  # timed per shape (groupo.plan.machine); other FLOPs are attention's
ALIASES = {"_unsafe_view", "detach", "alias", "lift_fresh"}  # not marked as views, but move no bytes


@dataclass
class Counts:
    """What a pass costs, op by op, summed."""

    ops_forward: int = 0
    ops_backward: int = 0
    matmuls: Counter = field(default_factory=Counter)  # (M, K, N, dtype, a transposed, b transposed) -> times
    other_flops: float = 0.0   # attention kernels and the like, costed at the matmul rate
    bytes_moved: float = 0.0   # read + written by ops that are neither matmuls nor views
    peak_bytes: int = 0        # most bytes alive at once, of tensors the pass created

    @property
    def matmul_flops(self) -> float:
        return sum(2 * key[0] * key[1] * key[2] * c for key, c in self.matmuls.items())

    @staticmethod
    def extrapolate(a: Counts, b: Counts, depth: int, layers: int) -> Counts:
        """A pass of a `layers`-layer model from the same pass with `depth` and `depth` + 1 identical
        layers: a fixed part plus one layer's share per layer. Depth 2 and 3, not 1 and 2: the first
        layer's backward is cheaper (nothing below it needs a gradient)."""
        k = layers - depth

        def lin(x, y):
            return x + k * (y - x)

        return Counts(round(lin(a.ops_forward, b.ops_forward)), round(lin(a.ops_backward, b.ops_backward)),
                      Counter({key: lin(a.matmuls[key], b.matmuls[key]) for key in b.matmuls}),
                      lin(a.other_flops, b.other_flops), lin(a.bytes_moved, b.bytes_moved),
                      round(lin(a.peak_bytes, b.peak_bytes)))


def _transposed(t: torch.Tensor) -> bool:
    """Whether a matmul operand is laid out column-major (e.g. weight.t())."""
    return t.stride(-1) != 1 and t.stride(-2) == 1


class OpTrace(TorchDispatchMode):
    """Counts every op dispatched inside it (see the module docstring) into `counts[phase]`;
    `backward = True` marks the ops that follow as the backward pass's. A phase's peak counts
    what was alive when it began (tensors made earlier inside the trace) and what it adds."""

    def __init__(self, phase: str = "pass") -> None:
        super().__init__()
        self.counts: dict[str, Counts] = {}
        self.backward = False
        self._live = 0
        self._storages: dict[int, list[int]] = {}  # storage id -> [tensors alive, bytes]
        self.start(phase)

    def start(self, phase: str) -> None:
        """Count the ops that follow as `phase`'s."""
        self.phase = phase
        c = self.counts.setdefault(phase, Counts())
        c.peak_bytes = max(c.peak_bytes, self._live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        c = self.counts[self.phase]
        if self.backward:
            c.ops_backward += 1
        else:
            c.ops_forward += 1
        name = func.overloadpacket.__name__
        outs = [t for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor)]
        if name in MATMULS:
            a, b = (args[1], args[2]) if name in ("addmm", "baddbmm") else (args[0], args[1])
            batch = a.shape[0] if a.dim() == 3 else 1
            # The layout too: a transposed operand (a Linear's weight.t()) takes another kernel, and with
            # emulated bf16 a 10x faster one (measured on an AVX2 CPU).
            c.matmuls[(batch * a.shape[-2], a.shape[-1], b.shape[-1], str(a.dtype).removeprefix("torch."),
                       _transposed(a), _transposed(b))] += 1
        elif func.overloadpacket in flop_registry:
            c.other_flops += flop_registry[func.overloadpacket](*args, **kwargs, out_val=out)
        elif "scaled_dot_product" in name:  # torch counts no FLOPs for the CPU's fused attention
            q, k = args[0], args[1]
            c.other_flops += 4 * q.numel() * k.shape[-2] * (2 if name.endswith("backward") else 1)
        elif not func.is_view and outs and name not in ALIASES:
            # Written: the outputs; read: each input, but no more of it than the output's size (an
            # embedding lookup or a slice reads rows, not the whole table; reductions are rare).
            size = sum(t.numel() * t.element_size() for t in outs)
            c.bytes_moved += size + sum(min(size, t.numel() * t.element_size())
                                        for t in args if isinstance(t, torch.Tensor))
        for t in outs:
            self._hold(t)
        return out

    def _hold(self, t: torch.Tensor) -> None:
        key = t.untyped_storage()._cdata
        entry = self._storages.get(key)
        if entry is None:
            entry = self._storages[key] = [0, t.untyped_storage().nbytes()]
            self._live += entry[1]
            c = self.counts[self.phase]
            c.peak_bytes = max(c.peak_bytes, self._live)
        entry[0] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._storages[key]
        entry[0] -= 1
        if entry[0] == 0:
            self._live -= entry[1]
            del self._storages[key]


# --------------------------------------------------------------------------------------------
# the model, built on fake tensors

def fake_mode() -> FakeTensorMode:
    return FakeTensorMode(allow_non_fake_inputs=True)


def fake_model(hf_config, dtype: torch.dtype, device: str, mode: FakeTensorMode, lora_cfg=None,
               gradient_checkpointing: bool = False) -> torch.nn.Module:
    """The model of `hf_config` (with LoRA adapters per `lora_cfg`, as groupo.models.lora adds them)
    with fake parameters on `device`. Built on the meta device first, where peft's layer
    surgery works, then each parameter replaced by a fake one (tied weights stay tied)."""
    from transformers import AutoModelForCausalLM

    from groupo.models.lora import apply_lora

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype, attn_implementation="sdpa")
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora_cfg is not None and lora_cfg.rank > 0:
        model = apply_lora(model, lora_cfg)
    else:
        model.requires_grad_(True)
    done: dict[int, torch.nn.Parameter] = {}
    with mode:
        for m in model.modules():
            for name, p in list(m._parameters.items()):
                if p is not None:
                    if id(p) not in done:
                        done[id(p)] = torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=device),
                                                         requires_grad=p.requires_grad)
                    m._parameters[name] = done[id(p)]
            for name, b in list(m._buffers.items()):
                if b is not None:
                    m._buffers[name] = torch.empty(b.shape, dtype=b.dtype, device=device)
    return model


# --------------------------------------------------------------------------------------------
# the passes (inside `mode`; each returns its Counts)

def _ids(B: int, L: int, device: str) -> torch.Tensor:
    return torch.zeros((B, L), dtype=torch.long, device=device)


def _mask(B: int, q: int, kv: int, device: str) -> torch.Tensor:
    return torch.ones((B, 1, q, kv), dtype=torch.bool, device=device)


def update_pass(model, rows: int, group: int, prompt_len: int, completion_len: int, amp: torch.dtype | None,
                device: str, share_prompts: bool, backward: bool = True, temperature: float = 1.0) -> Counts:
    """One micro-batch of the policy update (forward, entropy, backward), or with backward=False a
    no-grad log-prob pass (the reference / old policy), as groupo.models.logprobs.token_logprobs
    runs it: each distinct prompt encoded once where `share_prompts` (rows // group of them), the
    output head in checkpointed chunks."""
    from transformers import DynamicCache

    from groupo.models.logprobs import _chunkable_head, _without_head, head_logprobs

    P, T = prompt_len, completion_len
    trace = OpTrace()
    model.train(backward)
    grad = torch.enable_grad() if backward else torch.no_grad()
    head = _chunkable_head(model)
    with trace, grad, torch.autocast(device.split(":")[0], dtype=amp or torch.float32, enabled=amp is not None), \
            _without_head(model, head):
        unique = math.ceil(rows / group)
        if share_prompts and P > 1 and unique < rows and not _checkpointing(model):
            cache = DynamicCache(config=getattr(model, "config", None))
            model(input_ids=_ids(unique, P - 1, device), attention_mask=_mask(unique, P - 1, P - 1, device),
                  position_ids=_ids(unique, P - 1, device), past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache.batch_select_indices(torch.arange(rows, device=device) // group)
            out = model(input_ids=_ids(rows, T, device), attention_mask=_mask(rows, T, P - 1 + T, device),
                        position_ids=_ids(rows, T, device), past_key_values=cache, use_cache=True).logits
        else:
            L = P + T
            out = model(input_ids=_ids(rows, L, device), attention_mask=_mask(rows, L, L, device),
                        position_ids=_ids(rows, L, device), logits_to_keep=T, use_cache=False).logits
        logp, _ = head_logprobs(out, head, _ids(rows, T, device), temperature, with_entropy=backward)
        if backward:
            loss = (logp.float() * torch.ones_like(logp)).sum()  # the loss itself: a few (B, T) ops
            trace.backward = True
            loss.backward()
    return trace.counts["pass"]


def _checkpointing(model) -> bool:
    """Activation checkpointing on (it turns the KV cache off in training: no shared prompts)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return any(getattr(m, "gradient_checkpointing", False) for m in base.modules())


def generation_passes(model, prompts: int, n: int, prompt_len: int, new_tokens: int, amp: torch.dtype | None,
                      device: str) -> tuple[Counts, Counts]:
    """(prefill, one decoding step) of groupo.rollout.hf for `prompts` x `n` rows, as its generate
    runs them: on merged LoRA weights, with the frozen weights cast once to the autocast dtype; the
    prefill encodes each prompt's first P-1 tokens once; the step is the last one, over a cache of
    P + new_tokens - 2 positions. The step's peak holds the casts, the whole cache and the step's
    own tensors. Generation's costs beyond the forward passes (sampling, generate's own loop) are
    measured separately (groupo.plan.machine)."""
    from transformers import DynamicCache

    from groupo.models.lora import merged_for_inference
    from groupo.models.precision import frozen_linear_weights_in

    P, rows = max(2, prompt_len), prompts * n
    past = P + new_tokens - 2  # cache length before the last step
    model.eval()
    cfg = getattr(model, "config", None)
    trace = OpTrace("setup")
    with trace, torch.no_grad(), merged_for_inference(model), frozen_linear_weights_in(model, amp), \
            torch.autocast(device.split(":")[0], dtype=amp or torch.float32, enabled=amp is not None):
        trace.start("prefill")
        cache = DynamicCache(config=cfg)
        model(input_ids=_ids(prompts, P - 1, device), attention_mask=_mask(prompts, P - 1, P - 1, device),
              position_ids=_ids(prompts, P - 1, device), past_key_values=cache, use_cache=True, logits_to_keep=1)
        del cache
        trace.start("setup")  # a cache of `past` positions for every row, built as fast as possible
        cache = DynamicCache(config=cfg)
        model(input_ids=_ids(rows, past, device), attention_mask=_mask(rows, past, past, device),
              position_ids=_ids(rows, past, device), past_key_values=cache, use_cache=True, logits_to_keep=1)
        trace.start("step")
        model(input_ids=_ids(rows, 1, device), attention_mask=_mask(rows, 1, past + 1, device),
              position_ids=_ids(rows, 1, device), past_key_values=cache, use_cache=True, logits_to_keep=1)
    return trace.counts["prefill"], trace.counts["step"]
