"""`make_plan(cfg)`: a config's predicted step time and peak memory on this machine, and the
settings that would make it fit (see groupo.plan)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import statistics
from dataclasses import dataclass, field

import torch

from groupo.algorithms.presets import loss_settings
from groupo.config import Config, ConfigError
from groupo.models.precision import AUTOCAST_DTYPES, native_half, resolve_autocast
from groupo.models.quantization import weight_bytes
from groupo.plan import estimate as E
from groupo.plan.machine import Machine, available_bytes, dequant_seconds, matmul_rates, measure
from groupo.plan.trace import Counts, fake_mode, fake_model, generation_passes, quantizable_linears, update_pass


@dataclass
class Plan:
    device: str
    amp: str
    prompt_tokens: int        # assumed longest prompt of a micro-batch / generate call
    completion_tokens: int    # assumed completion length (decoding steps, update width)
    update_completion_tokens: int  # with train.packing: the completions' mean length, what the flat update holds
    rows: int                 # completions per step
    gen_s: float | None       # None: not predicted (vLLM)
    reference_s: float        # the reference (and, with mu > 1, old-policy) log-prob passes
    update_s: float           # policy forward + backward over all micro-batches, times mu
    memory: E.Memory
    available: int
    machine: Machine
    suggestions: list[tuple[str, int]] = field(default_factory=list)  # (overrides, predicted peak)
    notes: list[str] = field(default_factory=list)

    @property
    def step_s(self) -> float | None:
        return None if self.gen_s is None else self.gen_s + self.reference_s + self.update_s

    @property
    def fits(self) -> bool:
        return self.memory.peak <= self.available


def prompt_lengths(cfg: Config, tokenizer, limit: int = 256) -> list[int]:
    """Token counts of the task's first `limit` training prompts, encoded as the trainer does."""
    from groupo.data.prompts import encode_prompt
    from groupo.data.registry import load_task

    task = load_task(cfg.task)
    if not task.train:
        raise ConfigError(f"task {cfg.task.name!r} has no training problems")
    return [len(encode_prompt(tokenizer, p.messages, cfg.rollout.chat_template_kwargs)) for p in task.train[:limit]]


def longest_per_batch(lengths: list[int], prompts: int) -> int:
    """The mean, over consecutive batches of `prompts` prompts, of each batch's longest: what left
    padding makes every row of a batch as long as."""
    k = max(1, prompts)
    return math.ceil(statistics.mean(max(lengths[i:i + k]) for i in range(0, len(lengths), k)))


def _hf_config(cfg: Config):
    from transformers import AutoConfig, AutoTokenizer

    from groupo.models.load import prepare_tokenizer, resolve_model

    path = resolve_model(cfg.model.name, cfg.model.revision)
    if path.suffix == ".gguf":
        raise ConfigError("groupo plan reads a Hugging Face config.json; a .gguf model is not supported "
                          "(groupo export writes a Hugging Face folder)")
    return AutoConfig.from_pretrained(path), prepare_tokenizer(AutoTokenizer.from_pretrained(path))


def _device(cfg: Config) -> str:
    from groupo.distributed import launched_world, resolve_device

    return str(resolve_device(cfg.run.device, launched_world()))


def make_plan(cfg: Config, prompt_tokens: int | None = None, completion_tokens: int | None = None,
              suggest: bool = True, machine: Machine | None = None, available: int | None = None,
              mean_completion_tokens: int | None = None) -> Plan:
    """Predict `cfg`'s step on this machine. prompt_tokens: the longest prompt per batch (default:
    measured on the task's prompts); completion_tokens: default rollout.max_new_tokens, the worst
    case (generate decodes until its longest row stops, a padded micro-batch is as wide as its
    longest); mean_completion_tokens: with train.packing, the completions' mean length, which is
    what a padding-free update runs (default completion_tokens: equal lengths, where packing saves
    nothing); available: bytes the run may take (default: what this machine has free)."""
    from groupo.models.attention import attention_kernel

    device = _device(cfg)
    amp = resolve_autocast(cfg.model.autocast, device)
    hf_config, tokenizer = _hf_config(cfg)
    R, T, A = cfg.rollout, cfg.train, cfg.algorithm
    G, prompts = R.group_size, T.prompts_per_step
    lengths = None if prompt_tokens else prompt_lengths(cfg, tokenizer)
    P_gen = prompt_tokens or longest_per_batch(lengths, E.chunks(prompts, G, R.batch_size)[0])
    S = completion_tokens or R.max_new_tokens
    S_upd = min(S, mean_completion_tokens or S) if T.packing else S  # the update's completion tokens per row
    size = T.micro_batch_size
    if T.micro_batch_tokens:  # every completion S_upd long: the rows that fit beside the step's longest prompt
        size = max(1, T.micro_batch_tokens // ((prompt_tokens or longest_per_batch(lengths, prompts)) + S_upd))
    P_upd = prompt_tokens or longest_per_batch(lengths, math.ceil(size / G))
    beta = loss_settings(cfg.algorithm).beta
    amp_dtype = AUTOCAST_DTYPES[amp]
    rows = prompts * G
    micro, calls = E.micro_batches(rows, size), E.chunks(prompts, G, R.batch_size)
    quantized = cfg.model.quantization != "none"

    def passes(model) -> dict:
        with attention_kernel(model, cfg.model.update_attention, packing=T.packing):  # as the trainer's passes run
            out = {("update", m): update_pass(model, m, G, P_upd, S_upd, amp_dtype, device, True, packing=T.packing,
                                              quantized=quantized)
                   for m in set(micro)}
            if beta > 0 or A.num_iterations > 1:
                with model.disable_adapter() if cfg.lora.rank > 0 else contextlib.nullcontext():
                    out |= {("ref", m): update_pass(model, m, G, P_upd, S_upd, amp_dtype, device, True,
                                                    backward=False, packing=T.packing, quantized=quantized)
                            for m in set(micro)}
        if R.engine != "vllm":
            for p in set(calls):
                out[("prefill", p)], out[("step", p)] = generation_passes(model, p, G, P_gen, S, amp_dtype, device,
                                                                          quantized=quantized)
        return out

    traced, params = _traced(cfg, hf_config, device, passes)
    keys = [k for c in traced.values() for k in c.matmuls]
    machine = machine or measure(hf_config, cfg.lora, amp_dtype, device, keys)
    missing = [k for k in keys if k not in machine.matmul_rate]
    if missing:
        machine.matmul_rate.update(matmul_rates(missing, device))
    dequant_priced = _price_dequantization(cfg, traced, machine, amp_dtype, device)

    update_s = A.num_iterations * sum(E.seconds(traced["update", m], machine, grad=True) for m in micro)
    n_ref = (beta > 0) + (A.num_iterations > 1)
    reference_s = n_ref * sum(E.seconds(traced["ref", m], machine, grad=False) for m in micro) if n_ref else 0.0
    gen_s = None if R.engine == "vllm" else sum(
        E.generation_seconds(traced["prefill", p], traced["step", p], S, p * G, hf_config.vocab_size, machine)
        for p in calls)
    memory = _memory(cfg, params, beta, machine, traced, device, several_micro_batches=len(micro) > 1)
    plan = Plan(device=device, amp=amp, prompt_tokens=max(P_gen, P_upd), completion_tokens=S,
                update_completion_tokens=S_upd, rows=rows, gen_s=gen_s,
                reference_s=reference_s, update_s=update_s, memory=memory,
                available=available or available_bytes(device), machine=machine)
    if quantized:
        kind = cfg.model.quantization
        size = "1 byte" if kind == "int8" else "4 bits (and a float32 scale per 64)"
        time = ("their dequantization at every call at the time measured here" if dequant_priced else
                "their dequantization at every call is not priced (bitsandbytes is not installed)")
        plan.notes.append(f"model.quantization={kind}: the linear layers' weights are priced at {size} each, "
                          f"and {time}")
    if device == "cpu" and amp != "none" and not native_half(amp):
        plan.notes.append(f"autocast {amp} is emulated on this CPU (no native {amp} kernels): float32 "
                          "(model.autocast=none) is several times faster here; planned as configured")
    if suggest and not plan.fits:
        plan.suggestions = _suggestions(cfg, plan, prompt_tokens or P_upd, S, machine, mean_completion_tokens)
    return plan


def _price_dequantization(cfg: Config, traced: dict, machine: Machine, amp_dtype, device: str) -> bool:
    """Time the dequantizations the traced passes run that `machine` has no time for (bitsandbytes'
    layers quantized from model.dtype, computing in the autocast dtype or float32), where
    bitsandbytes is installed; whether the quantized base's time is priced."""
    if cfg.model.quantization == "none":
        return False
    missing = {s for c in traced.values() for s in c.dequantized if s not in machine.dequant_s}
    if missing:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            return False
        machine.dequant_s.update(dequant_seconds(missing, cfg.model.quantization, getattr(torch, cfg.model.dtype),
                                                 amp_dtype or torch.float32, device))
    return True


def _traced(cfg: Config, hf_config, device: str, passes) -> tuple[dict, tuple[int, int, int, int]]:
    """passes(model) on the fake model of `cfg`, and its (weight bytes, trainable parameters,
    trainable bytes each, weights of the linear layers model.quantization would quantize). Layers
    that are all alike are traced at depth 2 and 3 and extrapolated (Counts.extrapolate: exact for
    the counts, seconds instead of a minute for a deep model)."""
    dtype = getattr(torch, cfg.model.dtype)
    layers = hf_config.num_hidden_layers
    uniform = len(set(getattr(hf_config, "layer_types", None) or ["all"])) == 1
    depths = [2, 3] if uniform and layers > 3 else [layers]
    results = []
    for d in depths:
        c = copy.deepcopy(hf_config)
        c.num_hidden_layers = d
        if getattr(c, "layer_types", None):
            c.layer_types = c.layer_types[:d]
        mode = fake_mode()
        model = fake_model(c, dtype, device, mode, cfg.lora, cfg.model.gradient_checkpointing)
        ps = list({id(p): p for p in model.parameters()}.values())
        trainable = [p for p in ps if p.requires_grad]
        with mode:
            results.append((passes(model), sum(p.numel() * p.element_size() for p in ps),
                            sum(p.numel() for p in trainable), trainable[0].element_size() if trainable else 4,
                            quantizable_weights(model)))
    if len(results) == 1:
        return results[0][0], results[0][1:]
    (one, *p1), (two, *p2) = results
    k = layers - 2
    return ({key: Counts.extrapolate(one[key], two[key], 2, layers) for key in one},
            (p1[0] + k * (p2[0] - p1[0]), p1[1] + k * (p2[1] - p1[1]), p1[2], p1[3] + k * (p2[3] - p1[3])))


def quantizable_weights(model: torch.nn.Module) -> int:
    """Weights of the layers bitsandbytes quantizes under model.quantization (trace.quantizable_linears)."""
    return sum(m.weight.numel() for m in quantizable_linears(model))


def _memory(cfg: Config, params: tuple[int, int, int, int], beta: float, machine: Machine, traced: dict,
            device: str, several_micro_batches: bool) -> E.Memory:
    weights, trainable, each, quantizable = params
    if cfg.model.quantization != "none":  # those layers' weights at 4 or 8 bits (and their scales)
        dtype_bytes = torch.empty(0, dtype=getattr(torch, cfg.model.dtype)).element_size()
        weights += weight_bytes(quantizable, cfg.model.quantization, dtype_bytes) - quantizable * dtype_bytes
    state = E.training_state_bytes(trainable, each)
    grads = trainable * each  # the traced update allocates them; held between micro-batches
    engine = 0
    if cfg.rollout.engine == "vllm":  # its own copy of the weights, in the autocast dtype, and its KV cache
        share = (int(cfg.rollout.vllm.memory_share * torch.cuda.mem_get_info()[1]) if device.startswith("cuda")
                 else cfg.rollout.vllm.kv_cache_gb * 2**30)
        engine = weights // (2 if cfg.model.autocast != "none" and cfg.model.dtype == "float32" else 1) + share
    if cfg.lora.rank == 0 and beta > 0:
        weights *= 2  # the frozen reference copy (the trainer's; vLLM holds only the policy)

    def peak(*kinds: str) -> int:
        return max((c.peak_bytes for (k, _), c in traced.items() if k in kinds), default=0)

    update = peak("update", "ref") + (grads if several_micro_batches else 0)
    return E.Memory(machine.baseline_bytes, weights, state, peak("step"), update, engine)


def _suggestions(cfg: Config, plan: Plan, prompt_tokens: int, completion_tokens: int, machine: Machine,
                 mean_completion_tokens: int | None = None) -> list[tuple[str, int]]:
    """Settings that would fit, each with its predicted peak: the first of each kind that does."""
    out = []
    T, R = cfg.train, cfg.rollout

    def peak(key: str, value) -> int:
        c = _replace(cfg, key, value)
        p = make_plan(c, prompt_tokens, completion_tokens, suggest=False, machine=machine, available=plan.available,
                      mean_completion_tokens=mean_completion_tokens)
        return p.memory.peak

    m = plan.memory
    if m.update >= m.generation:
        key = "train.micro_batch_tokens" if T.micro_batch_tokens else "train.micro_batch_size"
        size = (T.micro_batch_tokens or T.micro_batch_size) // 2
        while size >= 1:
            p = peak(key, size)
            if p <= plan.available:
                out.append((f"{key}={size}", p))
                break
            size //= 2
        if not cfg.model.gradient_checkpointing:
            p = peak("model.gradient_checkpointing", True)
            if p <= plan.available:
                out.append(("model.gradient_checkpointing=true", p))
        if not T.packing and (mean_completion_tokens or completion_tokens) < completion_tokens:
            p = peak("train.packing", True)  # only where the completions are shorter than the longest on average
            if p <= plan.available:
                out.append(("train.packing=true", p))
    if m.generation >= m.update or not out:
        size = R.batch_size // 2
        while size >= R.group_size:
            p = peak("rollout.batch_size", size)
            if p <= plan.available:
                out.append((f"rollout.batch_size={size}", p))
                break
            size //= 2
    if cfg.lora.rank > 0 and cfg.model.quantization == "none":
        p = peak("model.quantization", "nf4")
        if p <= plan.available:
            out.append(("model.quantization=nf4", p))
    if cfg.lora.rank == 0:
        p = peak("lora.rank", 16)
        if p <= plan.available:
            out.append(("lora.rank=16", p))
    return out


def _replace(cfg: Config, key: str, value) -> Config:
    """`cfg` with the dotted key `section.name` set to `value` (already typed)."""
    section, name = key.split(".")
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **{name: value})})
