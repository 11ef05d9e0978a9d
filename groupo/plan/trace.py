"""Run a model's training and generation passes on fake tensors: every op's FLOPs and bytes, and
the memory it holds, with no arithmetic and no weights in memory.

A FakeTensor carries a shape, a dtype and a device and nothing else, so the model is built from
its config.json alone (any size: a 70B model costs nothing here), autocast applies as it does on
the real device, and autograd runs the real backward pass. `OpTrace`, a dispatch mode, sees each
aten op the passes issue (Python modules, autocast casts, autograd's backward): it counts them,
sums matmul FLOPs (torch's own flop formulas) and the bytes other ops read and write, and tracks
the bytes of the tensors alive, whose maximum is the pass's peak beyond what existed before it.

The passes mirror the trainer's (groupo.models.logprobs, groupo.engines.hf): the update's
shared-prompt forward with the chunked, checkpointed output head (or its padding-free pass, run by
groupo.models.packing itself), and a decoding step with a KV cache. Masks are given as 4D
tensors (the form transformers uses as is) because building them from 2D padding masks reads
values that fake tensors do not have.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import weakref
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

from groupo.models.precision import autocast

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
    dequantized: Counter = field(default_factory=Counter)  # (out, in, in backward) of a quantized weight -> times

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
                      round(lin(a.peak_bytes, b.peak_bytes)),
                      Counter({key: lin(a.dequantized[key], b.dequantized[key]) for key in b.dequantized}))


@functools.cache
def _may_share(func) -> bool:
    """Whether an op can return an input's memory: a view, an alias, or an in-place / out= op."""
    return func.is_view or func.overloadpacket.__name__ in ALIASES or func._schema.is_mutable


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

    def dequantize(self, weight: torch.Tensor, backward: bool) -> None:
        """A quantized base dequantizes `weight` here, in the forward or the backward pass (see `quantized_base`)."""
        self.counts[self.phase].dequantized[(*weight.shape, backward)] += 1

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
        # A view of (or an in-place op on) a tensor made before the pass, a weight above all, takes no
        # new memory: it is not held. (Counting `weight.t()` as new put a 128k-vocabulary head's 0.5 GB
        # into every head chunk's peak.) Only such ops can return an input's memory; looking at every
        # op's inputs made a trace 30% slower.
        before = ({a.untyped_storage()._cdata for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
                  - self._storages.keys() if _may_share(func) else ())
        for t in outs:
            if t.untyped_storage()._cdata not in before:
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
        # lora.init_from's rank and targets are cfg.lora's already (config_rules.adopt_adapter); its weights
        # do not matter to a trace
        model = apply_lora(model, dataclasses.replace(lora_cfg, init_from=None))
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


def quantizable_linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """The layers bitsandbytes quantizes under model.quantization: every nn.Linear but the output head
    and LoRA's own (a mixture of experts' fused expert weights are parameters, not linear layers, and
    stay in model.dtype; tests/test_qlora.py checks their bytes against bitsandbytes')."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    return [m for name, m in model.named_modules()
            if type(m) is torch.nn.Linear and m is not head and ".lora_" not in name]


@contextlib.contextmanager
def quantized_base(model: torch.nn.Module, trace: OpTrace, compute: torch.dtype | None):
    """With `compute` (a quantized base's compute dtype; None: not quantized), run the block as a
    bitsandbytes base would and count into `trace` every dequantization it runs. Each quantized
    layer dequantizes its whole weight straight into `compute` for each matmul
    (groupo.models.quantization): at every forward call (a checkpointed layer's recomputation
    included) and again in the backward pass where its input needs a gradient, which is where its
    output needs one (the weight is frozen). The fake layers get weights in `compute` for the block,
    made before `trace` is entered, so autocast casts nothing at each call and the trace holds no
    copy of them; their matmuls are counted as usual."""
    if compute is None:
        yield
        return

    def counted(module, args, out):
        trace.dequantize(module.weight, backward=False)
        if out.requires_grad:
            out.register_hook(lambda grad, w=module.weight: trace.dequantize(w, backward=True))

    layers = quantizable_linears(model)
    saved = [(m, m.weight) for m in layers]
    handles = [m.register_forward_hook(counted) for m in layers]
    try:
        for m, w in saved:
            m.weight = torch.nn.Parameter(torch.empty(w.shape, dtype=compute, device=w.device), requires_grad=False)
        yield
    finally:
        for h in handles:
            h.remove()
        for m, w in saved:
            m.weight = w


# --------------------------------------------------------------------------------------------
# the passes (inside `mode`; each returns its Counts)

def _ids(B: int, L: int, device: str) -> torch.Tensor:
    return torch.zeros((B, L), dtype=torch.long, device=device)


def _mask(B: int, q: int, kv: int, device: str) -> torch.Tensor:
    return torch.ones((B, 1, q, kv), dtype=torch.bool, device=device)


@dataclass(frozen=True)
class UpdateInputs:
    """One update micro-batch as the planner passes it to the model, with 4D boolean masks (fake
    tensors have no values to build them from 2D ones): U distinct prompts of P tokens, B rows of
    T completion tokens. `group_B` maps each row to its prompt."""

    prompt_ids_UQ: torch.Tensor | None     # (U, P-1) each distinct prompt but its last token
    prompt_mask_U1QQ: torch.Tensor | None  # (U, 1, P-1, P-1)
    prompt_pos_UQ: torch.Tensor | None
    group_B: torch.Tensor | None           # (B,) long
    tail_ids_BT: torch.Tensor | None       # (B, T) the last prompt token, then the completion but its last token
    tail_mask_B1TK: torch.Tensor | None    # (B, 1, T, P-1+T)
    tail_pos_BT: torch.Tensor | None
    ids_BL: torch.Tensor | None            # (B, P+T) the unshared pass
    mask_B1LL: torch.Tensor | None
    pos_BL: torch.Tensor | None
    targets_BT: torch.Tensor        # (B, T) the completion tokens


def zero_inputs(rows: int, group: int, P: int, T: int, device: str, share_prompts: bool) -> UpdateInputs:
    """Inputs of the right shapes (values do not matter to a trace); only those of the pass that
    runs exist (the others are None), so the trace holds no tensor the trainer would not."""
    U, L = math.ceil(rows / group), P + T
    if share_prompts:
        return UpdateInputs(_ids(U, P - 1, device), _mask(U, P - 1, P - 1, device), _ids(U, P - 1, device),
                            torch.arange(rows, device=device) // group, _ids(rows, T, device),
                            _mask(rows, T, P - 1 + T, device), _ids(rows, T, device), None, None, None,
                            _ids(rows, T, device))
    return UpdateInputs(None, None, None, None, None, None, None, _ids(rows, L, device), _mask(rows, L, L, device),
                        _ids(rows, L, device), _ids(rows, T, device))


def packed_inputs(packed) -> UpdateInputs:
    """The real inputs of a groupo.models.logprobs.Packed batch (causal masks over its real tokens);
    for checking that the traced pass computes what the trainer's does."""
    P, T = packed.prompt_len, packed.completion_ids_BT.shape[1]
    ids, attn, pos = packed.input_ids_BL, packed.attention_mask_BL.bool(), packed.position_ids_BL
    L = P + T
    causal_LL = torch.ones(L, L, dtype=torch.bool, device=ids.device).tril()
    mask_B1LL = (causal_LL[None] & attn[:, None, :])[:, None]
    key = torch.cat([ids[:, :P], packed.attention_mask_BL[:, :P]], dim=1)
    _, group_B = torch.unique(key, dim=0, return_inverse=True)
    first = torch.empty(int(group_B.max()) + 1, dtype=torch.long).scatter_(0, group_B, torch.arange(len(ids)))
    tail = slice(P - 1, P + T - 1)
    return UpdateInputs(ids[first, :P - 1], mask_B1LL[first][:, :, :P - 1, :P - 1], pos[first, :P - 1], group_B,
                        ids[:, tail], mask_B1LL[:, :, tail, :P + T - 1], pos[:, tail], ids, mask_B1LL, pos,
                        packed.completion_ids_BT)


def update_logprobs(model, x: UpdateInputs, share_prompts: bool, temperature: float = 1.0,
                    with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The log-prob pass of an update micro-batch as groupo.models.logprobs.token_logprobs runs it:
    each distinct prompt encoded once where `share_prompts` (its KV cache indexed to the rows that
    share it), the output head in checkpointed chunks. tests/test_plan.py checks that both give
    the same log-probs."""
    from groupo.models.logprobs import _chunkable_head, _without_head, head_logprobs, shared_prefix_forward

    head = _chunkable_head(model)
    with _without_head(model, head):
        out = None
        if share_prompts:
            out = shared_prefix_forward(
                model, dict(input_ids=x.prompt_ids_UQ, attention_mask=x.prompt_mask_U1QQ, position_ids=x.prompt_pos_UQ),
                x.group_B, dict(input_ids=x.tail_ids_BT, attention_mask=x.tail_mask_B1TK, position_ids=x.tail_pos_BT))
        if out is None:
            L, T = x.ids_BL.shape[1], x.targets_BT.shape[1]
            keep = torch.arange(L - T - 1, L - 1, device=x.ids_BL.device)  # the columns predicting the completion
            out = model(input_ids=x.ids_BL, attention_mask=x.mask_B1LL, position_ids=x.pos_BL,
                        logits_to_keep=keep, use_cache=False).logits
    return head_logprobs(out, head, x.targets_BT, temperature, with_entropy)


def packed_update_logprobs(model, rows: int, group: int, P: int, T: int, share_prompts: bool, device: str,
                           temperature: float = 1.0, with_entropy: bool = False):
    """The padding-free log-prob pass of an update micro-batch (groupo.models.packing): `rows`
    completions of T tokens after prompts of P tokens, `group` rows to a prompt, laid out and run by
    the trainer's own functions (token ids do not matter to a trace). The model must attend with a
    packed kernel (groupo.models.attention)."""
    from groupo.models.logprobs import _chunkable_head, _without_head, head_logprobs
    from groupo.models.packing import flat_layout, run_flat

    def layout(share: bool):
        return flat_layout([P] * rows, [T] * rows, [r // group for r in range(rows)] if share else None, P, P + T)

    def ids_of(row):
        return torch.zeros(len(row.index_N), dtype=torch.long, device=device)

    head = _chunkable_head(model)
    with _without_head(model, head):
        out = run_flat(model, *layout(share_prompts), ids_of)
        if out is None:  # as the trainer: the prompts' cache could not be shared
            out = run_flat(model, *layout(False), ids_of)
    return head_logprobs(out, head, _ids(1, rows * T, device), temperature, with_entropy)


def update_pass(model, rows: int, group: int, prompt_len: int, completion_len: int, amp: torch.dtype | None,
                device: str, share_prompts: bool, backward: bool = True, temperature: float = 1.0,
                packing: bool = False, quantized: bool = False) -> Counts:
    """One micro-batch of the policy update (forward, entropy, backward), or with backward=False a
    no-grad log-prob pass (the reference / old policy), traced: `update_logprobs` on inputs of the
    batch's shapes, or with `packing` `packed_update_logprobs` (completion_len is then the mean).
    `quantized`: as a quantized base runs it, its dequantizations counted (`quantized_base`)."""
    from groupo.models.logprobs import checkpoint_keeps_cache

    P, T = prompt_len, completion_len
    trace = OpTrace()
    model.train(backward)
    grad = torch.enable_grad() if backward else torch.no_grad()
    share = (share_prompts and P > 1 and math.ceil(rows / group) < rows
             and (checkpoint_keeps_cache() or not _checkpointing(model)))
    with quantized_base(model, trace, (amp or torch.float32) if quantized else None), trace, grad, \
            autocast(amp, device):
        if packing:
            logp, _ = packed_update_logprobs(model, rows, group, P, T, share, device, temperature, backward)
        else:
            logp, _ = update_logprobs(model, zero_inputs(rows, group, P, T, device, share), share, temperature,
                                      with_entropy=backward)
        if backward:
            loss = (logp.float() * torch.ones_like(logp)).sum()  # the loss itself: a few (B, T) ops
            trace.backward = True
            loss.backward()
    return trace.counts["pass"]


def _checkpointing(model) -> bool:
    """Activation checkpointing on (with a transformers release that drops a checkpointed layer's
    cache, the update then encodes every prompt per row: see shared_prefix_forward)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return any(getattr(m, "gradient_checkpointing", False) for m in base.modules())


def generation_passes(model, prompts: int, n: int, prompt_len: int, new_tokens: int, amp: torch.dtype | None,
                      device: str, quantized: bool = False) -> tuple[Counts, Counts]:
    """(prefill, one decoding step) of groupo.engines.hf for `prompts` x `n` rows, as its generate
    runs them: on merged LoRA weights, with the frozen weights cast once to the autocast dtype; the
    prefill encodes each prompt's first P-1 tokens once; the step is the last one, over a cache of
    P + new_tokens - 2 positions, written in place. The step's peak holds the casts, the whole cache
    and the step's own tensors. Generation's costs beyond the forward passes (sampling, generate's
    own loop) are measured separately (groupo.plan.machine). `quantized`: as the engine runs a
    quantized base: its adapters unmerged, each layer dequantized at every call (`quantized_base`)."""
    from transformers import DynamicCache

    from groupo.engines.kv import reserve
    from groupo.models.lora import merged_for_inference
    from groupo.models.precision import frozen_linear_weights_in

    P, rows = max(2, prompt_len), prompts * n
    past = P + new_tokens - 2  # cache length before the last step
    model.eval()
    cfg = getattr(model, "config", None)
    trace = OpTrace("setup")
    with quantized_base(model, trace, (amp or torch.float32) if quantized else None), trace, torch.no_grad(), \
            contextlib.nullcontext() if quantized else merged_for_inference(model), \
            frozen_linear_weights_in(model, amp), autocast(amp, device):
        trace.start("prefill")
        cache = DynamicCache(config=cfg)
        model(input_ids=_ids(prompts, P - 1, device), attention_mask=_mask(prompts, P - 1, P - 1, device),
              position_ids=_ids(prompts, P - 1, device), past_key_values=cache, use_cache=True, logits_to_keep=1)
        del cache
        trace.start("setup")  # a cache of `past` positions for every row, built as fast as possible,
        cache = reserve(DynamicCache(config=cfg), 1)  # with room for the step's token (engines/kv.py)
        model(input_ids=_ids(rows, past, device), attention_mask=_mask(rows, past, past, device),
              position_ids=_ids(rows, past, device), past_key_values=cache, use_cache=True, logits_to_keep=1)
        trace.start("step")
        model(input_ids=_ids(rows, 1, device), attention_mask=_mask(rows, 1, past + 1, device),
              position_ids=_ids(rows, 1, device), past_key_values=cache, use_cache=True, logits_to_keep=1)
    return trace.counts["prefill"], trace.counts["step"]
