"""What this machine's ops cost, measured in a few seconds: the rates the planner turns traced
op counts into seconds with (groupo.plan.estimate).

- Matmuls: each distinct (K, N, dtype, layout) the traced passes issue, timed on random tensors at the
  power of two of rows at or above each M (best of three; a shape over ~0.5 GFLOP is timed with
  fewer rows, but at least 128, at the same per-FLOP rate; a run slower than 0.2 s is not repeated).
- Other ops: one memory bandwidth, from a large elementwise add.
- A quantized base (model.quantization): for each weight shape, what a bitsandbytes layer of that
  kind spends dequantizing, in the forward pass (its call on 16 rows less the plain matmul's) and in
  the backward pass (bitsandbytes' dequantize call), best of ten. Per shape, not per weight: the
  dequantized weight's size against the caches sets the rate (nf4 on an AVX-512 EPYC, forward: 0.1-0.2
  ns a weight at 2048 x 512 and 896 x 4864, 0.6 ns at 2048 x 8192).
- The process itself: a fresh interpreter's memory once it has imported the trainer.
- Fixed costs: eager PyTorch pays microseconds per op (Python, dispatch, kernel launch) whatever
  its size; for a small model's decoding step that is most of the time. Measured on a tiny model
  of the same architecture (hidden size 64, 2 layers, vocabulary 512) whose ops cost almost
  nothing else: seconds per op without grad, per forward op with autograd recording, and per
  backward op; and `generate`'s own cost per decoding step beyond the forward pass, from a real
  run of groupo's HF engine on it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
import warnings
from dataclasses import dataclass, field

import torch

TIMED_FLOPS = 5e8  # larger matmuls are timed with fewer rows,
MIN_TIMED_ROWS = 128  # but not so few that the rate drops (an output head timed on 8 rows ran at a tenth)


@dataclass
class Machine:
    device: str
    op_nograd_s: float        # per op of a no-grad forward (generation, reference)
    op_forward_s: float       # per op of a forward that records autograd
    op_backward_s: float      # per op of a backward pass
    generate_step_s: float    # generate's own loop, per decoding step
    bandwidth: float          # bytes/s of an elementwise op
    baseline_bytes: int       # the process before any model: torch, transformers, peft, groupo
    matmul_rate: dict = field(default_factory=dict)  # trace.Counts.matmuls keys -> FLOP/s
    dequant_s: dict = field(default_factory=dict)    # trace.Counts.dequantized keys -> seconds each


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _best(f, device: str, repeats: int = 3, slow_s: float = 0.2, warmup: int = 1) -> float:
    """Best time of `repeats` calls after `warmup` ones; one call only where the (last) warm-up took over `slow_s`."""
    for _ in range(warmup):
        t = time.perf_counter()
        f()
        _sync(device)
        best = time.perf_counter() - t
    if best > slow_s:
        return best
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def resident_bytes() -> int:
    """This process's resident memory now (Linux /proc; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def baseline_bytes() -> int:
    """Resident memory of a fresh process that has imported what a training run imports (torch,
    transformers, peft, groupo's trainer), before any model: measured in a child process, so this
    one's own allocations do not count."""
    import subprocess
    import sys

    code = ("import resource, groupo.trainer.loop; "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) * 1024  # KiB on Linux


def available_bytes(device: str) -> int:
    """Memory a run could still take: free GPU memory, or the host's MemAvailable plus what this
    process holds (a run would start as a fresh process)."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    try:
        with open("/proc/meminfo") as fh:
            info = {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in fh}
        return info["MemAvailable"] + resident_bytes()
    except (OSError, KeyError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def matmul_rates(keys, device: str) -> dict:
    """FLOP/s of each (M, K, N, dtype, a transposed, b transposed) matmul on `device` (see the
    module docstring)."""
    timed: dict[tuple, float] = {}
    rates = {}
    for key in set(keys):
        M, K, N, dtype, a_t, b_t = key
        m = min(1 << max(0, M - 1).bit_length(), max(MIN_TIMED_ROWS, int(TIMED_FLOPS / (2 * K * N))))
        if (m, *key[1:]) not in timed:
            kw = {"dtype": getattr(torch, dtype), "device": device}
            a = torch.randn(K, m, **kw).t() if a_t else torch.randn(m, K, **kw)
            b = torch.randn(N, K, **kw).t() if b_t else torch.randn(K, N, **kw)
            timed[(m, *key[1:])] = 2 * m * K * N / _best(lambda a=a, b=b: a @ b, device)
        rates[key] = timed[(m, *key[1:])]
    return rates


DEQUANT_ROWS = 16
DEQUANT_REPEATS = 10  # a few milliseconds each; best of three varied threefold from run to run


def dequant_seconds(keys, kind: str, weights: torch.dtype, compute: torch.dtype, device: str) -> dict:
    """Seconds a bitsandbytes layer of `kind` (nf4, fp4, int8), quantized from `weights` (model.dtype)
    and computing in `compute`, spends dequantizing, per trace.Counts.dequantized key (out, in, in
    backward); see the module docstring. Forward: the layer's call less the plain matmul's, in
    training mode as the update runs it (int8 on a CPU: its dequantizing path; its eval-mode int8
    matmul, generation's, is priced the same). Backward: the 4-bit layers' own call,
    bitsandbytes.functional.dequantize_4bit into `weights` and a cast to `compute` (so a float32 base
    costs more there); int8's backward dequantizes as its forward does."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    from groupo.models.quantization import keep_training_kernels, quiet_bitsandbytes

    quiet_bitsandbytes()
    best = lambda f: _best(f, device, repeats=DEQUANT_REPEATS, warmup=3)
    out = {}
    for N, K in {key[:2] for key in keys}:  # each shape quantized once, for both directions
        w = (torch.randn(N, K) * 0.02).to(weights)
        if kind == "int8":
            layer = bnb.nn.Linear8bitLt(K, N, bias=False, has_fp16_weights=False)
            layer.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
        else:
            layer = bnb.nn.Linear4bit(K, N, bias=False, compute_dtype=compute, quant_type=kind)
            layer.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type=kind)
        layer = layer.to(device)  # quantizes
        keep_training_kernels(layer)
        with torch.no_grad():
            x, plain = torch.randn(DEQUANT_ROWS, K, device=device, dtype=compute), w.to(device=device, dtype=compute)
            forward = max(0.0, best(lambda layer=layer, x=x: layer(x))
                          - best(lambda x=x, w=plain: torch.nn.functional.linear(x, w)))
            q = layer.weight
            backward = (forward if kind == "int8" else
                        best(lambda q=q: F.dequantize_4bit(q.data, q.quant_state).to(compute)))
        out[(N, K, False)], out[(N, K, True)] = forward, backward
    return out


def bandwidth(device: str) -> float:
    a = torch.ones(8 << 20, device=device)  # 32 MiB each
    b, out = a.clone(), torch.empty_like(a)
    return 3 * a.numel() * 4 / _best(lambda: torch.add(a, b, out=out), device)


def tiny_config(hf_config):
    """`hf_config` shrunk until its ops cost only their fixed price: 2 layers of hidden size 64."""
    cfg = copy.deepcopy(hf_config)
    heads = 4
    kv = max(1, heads * getattr(cfg, "num_key_value_heads", heads) // max(1, cfg.num_attention_heads))
    cfg.update({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": heads,
                "num_key_value_heads": kv, "head_dim": 16, "vocab_size": 512})
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = cfg.layer_types[:2]
    return cfg


def fixed_costs(hf_config, lora_cfg, amp: torch.dtype | None, device: str) -> tuple[float, float, float, float]:
    """(per no-grad op, per forward op with autograd, per backward op, generate per step) seconds,
    from the tiny model (see the module docstring): each real timing divided by the op count that
    the same pass has on fake tensors."""
    from transformers import AutoModelForCausalLM

    from groupo.engines.hf import HFEngine
    from groupo.models.logprobs import pack, token_logprobs
    from groupo.models.lora import apply_lora
    from groupo.models.offline_tokenizer import make_tokenizer
    from groupo.models.precision import AUTOCAST_DTYPES, autocast
    from groupo.plan.trace import fake_mode, fake_model, generation_passes, update_pass
    from groupo.types import SamplingParams

    cfg = tiny_config(hf_config)
    tiny_lora = (dataclasses.replace(lora_cfg, rank=min(4, lora_cfg.rank), init_from=None) if lora_cfg.rank > 0
                 else lora_cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").to(device)
        model = apply_lora(model, tiny_lora) if tiny_lora.rank > 0 else model.requires_grad_(True)
    rows, group, P, T = 8, 4, 16, 16
    mode = fake_mode()
    fake = fake_model(cfg, torch.float32, device, mode, tiny_lora)
    with mode:
        ref = update_pass(fake, rows, group, P, T, amp, device, True, backward=False)
        upd = update_pass(fake, rows, group, P, T, amp, device, True)
        prefill, step = generation_passes(fake, rows // group, group, P, T, amp, device)
    packed = pack([[5] * P] * rows, [[6] * T] * rows, 0).to(device)
    auto = autocast(amp, device)

    def forward(grad: bool):
        with auto, torch.set_grad_enabled(grad):
            return token_logprobs(model, packed, with_entropy=grad)[0]

    t_ref = _best(lambda: forward(False), device)
    t_fwd = _best(lambda: forward(True), device)
    t_both = _best(lambda: forward(True).sum().backward(), device)
    op_nograd = t_ref / ref.ops_forward
    op_forward = t_fwd / upd.ops_forward
    op_backward = max(0.0, t_both - t_fwd) / max(1, upd.ops_backward)
    tok = make_tokenizer()
    with warnings.catch_warnings():  # the engine's warning about emulated bf16: the plan says it once
        warnings.simplefilter("ignore")
        engine = HFEngine(model, tok, batch_size=rows,
                          autocast=next(kind for kind, dtype in AUTOCAST_DTYPES.items() if dtype == amp))
    params = SamplingParams(n=group, max_new_tokens=T, temperature=1.0, seed=0)
    prompts = [[5] * P] * (rows // group)
    done = []
    t_gen = _best(lambda: done.append(engine.generate(prompts, params)), device, repeats=2)
    steps = max(len(c.token_ids) for group_out in done[-1] for c in group_out)
    forward_s = (prefill.ops_forward + steps * step.ops_forward) * op_nograd
    generate_step = max(0.0, t_gen - forward_s) / max(1, steps)
    return op_nograd, op_forward, op_backward, generate_step


def measure(hf_config, lora_cfg, amp: torch.dtype | None, device: str, matmuls) -> Machine:
    """This machine's rates for a model like `hf_config` and the traced passes' `matmuls` keys."""
    baseline = baseline_bytes() if not device.startswith("cuda") else 0
    nograd, fwd, bwd, gen = fixed_costs(hf_config, lora_cfg, amp, device)
    return Machine(device, nograd, fwd, bwd, gen, bandwidth(device), baseline, matmul_rates(matmuls, device))


def machine_name(device: str) -> str:
    """The GPU's name, or the CPU's model and the threads torch uses."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "CPU")
    except OSError:
        model = "CPU"
    return f"{model}, {torch.get_num_threads()} threads"
