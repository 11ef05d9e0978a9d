"""One update micro-batch, padded against padding-free (`train.packing`), where lengths vary and
where they do not.

    python benchmarks/packing.py                         # 16 rows, 2 prompts, completions 20-256 and all 256
    python benchmarks/packing.py --kernels sdpa --repeats 5

The built-in SmolLM2-135M-Instruct with LoRA r16 on q/k/v/o, bf16 autocast where the CPU has it
natively: one forward (log-probs with entropy, each prompt encoded once per group) and backward of
`--rows` completions after `--groups` prompts of `--prompt` tokens, each pass as the trainer's
update runs it (groupo.trainer.update: the attention kernel held through the backward). Completion
lengths: "varying", drawn uniformly from `--shortest` to `--longest` (seeded), or "equal", all
`--longest`. The variants alternate, `--repeats` times, and each is timed in CPU seconds of this
process as well as wall seconds: on a machine other jobs share, CPU time moves less with their load
(a pass's CPU time still grows when they evict its caches). Medians are printed.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from machine import machine  # benchmarks/machine.py


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--groups", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=70)
    ap.add_argument("--shortest", type=int, default=20)
    ap.add_argument("--longest", type=int, default=256)
    ap.add_argument("--kernels", nargs="+", choices=["sdpa", "eager"], default=["sdpa", "eager"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()

    import torch

    from groupo.config import LoraConfig
    from groupo.models import load_model, load_policy_from
    from groupo.models.attention import attention_kernel
    from groupo.models.logprobs import pack, token_logprobs
    from groupo.models.precision import autocast, native_half

    if args.threads:
        torch.set_num_threads(args.threads)
    amp = "bf16" if native_half("bf16") else "none"
    model, tok = load_model("smollm2-135m-instruct")
    torch.manual_seed(0)
    policy = load_policy_from(model, tok, LoraConfig(rank=16, alpha=16, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                           "o_proj"]), beta=0.0)
    policy.model.train()
    rng = random.Random(0)
    prompts = [[rng.randrange(100, 40000) for _ in range(args.prompt)] for _ in range(args.groups)]
    per = args.rows // args.groups
    batches = {}
    for kind in ("varying", "equal"):
        lengths = ([rng.randint(args.shortest, args.longest) for _ in range(args.rows)] if kind == "varying"
                   else [args.longest] * args.rows)
        comps = [[rng.randrange(100, 40000) for _ in range(n)] for n in lengths]
        batches[kind] = pack([prompts[i // per] for i in range(args.rows)], comps, tok.pad_token_id)
        print(f"{kind}: completions of {min(lengths)}-{max(lengths)} tokens, mean {statistics.mean(lengths):.0f}")

    def timed(batch, kernel: str, packing: bool) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        with attention_kernel(policy.model, kernel, packing=packing):
            with autocast(amp, "cpu"):
                logp, _ = token_logprobs(policy.model, batch, with_entropy=True, packing=packing)
            logp.float().sum().backward()
        policy.model.zero_grad(set_to_none=True)
        return time.process_time() - cpu, time.perf_counter() - wall

    print(f"CPU: {machine()}; {time.strftime('%Y-%m-%d')}; torch threads {torch.get_num_threads()}; autocast {amp}; "
          f"{args.rows} rows, {args.groups} prompts of {args.prompt} tokens")
    variants = [(kind, kernel, packing) for kind in batches for kernel in args.kernels for packing in (False, True)]
    times: dict[tuple, list[tuple[float, float]]] = {v: [] for v in variants}
    timed(batches["equal"], args.kernels[0], False)  # warm-up
    for _ in range(args.repeats):
        for v in variants:
            times[v].append(timed(batches[v[0]], v[1], v[2]))
    print("| completions | kernel | padded: CPU s (wall s) | packed: CPU s (wall s) | packed / padded (CPU) |")
    print("|---|---|---|---|---|")
    for kind in batches:
        for kernel in args.kernels:
            med = {p: [statistics.median(t[i] for t in times[(kind, kernel, p)]) for i in (0, 1)]
                   for p in (False, True)}
            print(f"| {kind} | {kernel} | {med[False][0]:.2f} ({med[False][1]:.2f}) | {med[True][0]:.2f} "
                  f"({med[True][1]:.2f}) | {med[True][0] / med[False][0]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
