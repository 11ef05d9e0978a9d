"""Rollout throughput of the HF engine on the built-in model: new tokens per second.

    python benchmarks/generation.py                      # 64 sequences x 48 tokens, bf16 and none
    python benchmarks/generation.py --threads 2 --lora 16 --sequences 64 --new-tokens 48
    python benchmarks/generation.py --autocast none --compare-keep   # finished rows dropped vs decoded on

Sampling as in training (temperature 1, EOS stops a sequence). Reports the wall time per call,
the tokens actually generated per second, and the batch throughput: sequences x decode steps
per second, where steps = the longest completion (a batch runs until its last sequence stops).
Also prints the cached-model load time. Prompts are arithmetic questions in the chat template.
`--compare-keep` alternates the engine as it runs (a row that stopped leaves the batch) with
`drop_finished=False` (every row decoded until the batch's longest ends, as transformers'
generate does): same seed, same completions, so the difference is the lever alone.
`--compare-cache` does the same for the in-place KV cache (groupo/engines/kv.py) against
transformers' DynamicCache, which copies every layer's cache at each step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from groupo.config import LoraConfig
from groupo.engines.hf import HFEngine
from groupo.models import load_model, load_policy_from
from groupo.types import SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--sequences", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--group", type=int, default=8, help="completions per prompt")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--lora", type=int, default=0, help="wrap in a LoRA adapter of this rank")
    ap.add_argument("--autocast", nargs="+", default=["bf16", "none"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--compare-keep", action="store_true", help="also time drop_finished=False, alternating")
    ap.add_argument("--compare-cache", action="store_true",
                    help="also time transformers' DynamicCache (reserve_cache=False), alternating")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    model, tok = load_model(args.model)
    print(f"load {args.model}: {time.perf_counter() - t0:.2f} s   threads={torch.get_num_threads()}")
    if args.lora:
        model = load_policy_from(model, tok, LoraConfig(rank=args.lora), beta=0.0).model

    n_prompts = max(1, args.sequences // args.group)
    prompts = [tok.apply_chat_template([{"role": "user", "content": f"What is {7 * i + 3} + {5 * i + 11}?"}],
                                       add_generation_prompt=True, return_dict=False)
               for i in range(n_prompts)]
    from machine import machine  # benchmarks/machine.py

    print(f"CPU: {machine()}")
    variants = [{}]  # HFEngine keyword arguments of each variant, timed alternately
    if args.compare_keep:
        variants.append({"drop_finished": False})
    if args.compare_cache:
        variants.append({"reserve_cache": False})
    times: dict[str, list[float]] = {}
    for amp in args.autocast:
        params = SamplingParams(n=args.group, temperature=1.0, max_new_tokens=args.new_tokens, seed=0)
        for r in range(args.repeats):
            for kw in variants:
                engine = HFEngine(model, tok, batch_size=args.batch_size, autocast=amp, **kw)
                t0 = time.perf_counter()
                out = engine.generate(prompts, params)
                dt = time.perf_counter() - t0
                n_tok = sum(len(c.token_ids) for g in out for c in g)
                n_seq = sum(len(g) for g in out)
                steps = max(len(c.token_ids) for g in out for c in g)
                label = " ".join(f"{k}={v}" for k, v in kw.items()) or "as it runs"
                times.setdefault(f"autocast={amp} {label}", []).append(dt)
                print(f"autocast={amp:5s} {label} run {r}: {n_seq} seqs in {dt:6.2f} s, {n_tok} tokens = "
                      f"{n_tok / dt:6.1f} tok/s; {steps} steps = {n_seq * steps / dt:6.1f} seq-steps/s", flush=True)
    for label, ts in times.items():
        print(f"median {label}: {statistics.median(ts):.2f} s over {len(ts)} runs")


if __name__ == "__main__":
    main()
