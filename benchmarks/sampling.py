"""Drawing the next token: torch.multinomial (what transformers' generate uses) against the HF
engine's inverse-CDF sampler (groupo.engines.hf.sample_inverse_cdf), on decode-step-sized logits.

    python benchmarks/sampling.py                 # 32 rows x 49,152 (SmolLM2's vocabulary)
    python benchmarks/sampling.py --rows 64 --vocab 151936

Both start from the same probabilities (softmax of the logits); times are medians of 30 calls.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from machine import machine  # benchmarks/machine.py (this folder is on sys.path when run as a script)

from groupo.engines.hf import sample_inverse_cdf


def timed(f, repeats: int = 30) -> float:
    for _ in range(3):
        f()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    probs = torch.softmax(3 * torch.randn(args.rows, args.vocab), dim=-1)
    t_mult = timed(lambda: torch.multinomial(probs, 1))
    t_icdf = timed(lambda: sample_inverse_cdf(probs))
    print(f"CPU: {machine()}")
    print(f"{args.rows} x {args.vocab}, {torch.get_num_threads()} threads: torch.multinomial {1000 * t_mult:.1f} ms, "
          f"inverse CDF {1000 * t_icdf:.1f} ms ({t_mult / t_icdf:.1f}x)")


if __name__ == "__main__":
    main()
