"""Peak memory of one policy forward + backward, with the output head run whole or in chunks.

    python benchmarks/logit_memory.py                     # built-in model, 16 x (60 + 400) tokens, LoRA r16
    python benchmarks/logit_memory.py --rows 16 --completion 64

Each setting runs in its own process (peak RSS is per process): the built-in SmolLM2-135M with
LoRA r=16 on q/k/v/o, bf16 autocast, `token_logprobs` of `--rows` completions of `--completion`
tokens after a `--prompt`-token prompt (all rows distinct, so no prompt sharing), then backward
of their sum. `chunk=0` is the whole (B, T, V) logits at once; the default chunk is
groupo.models.logprobs.LOGIT_CHUNK (row, position) pairs. Prints peak RSS, the time of the pass,
and the largest difference of the log-probs between the two.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from machine import machine  # benchmarks/machine.py (this folder is on sys.path when run as a script)


def worker(args) -> None:
    import torch

    from groupo.config import LoraConfig, ModelConfig
    from groupo.models import load_policy
    from groupo.models.logprobs import pack, token_logprobs

    torch.manual_seed(0)
    policy = load_policy(ModelConfig(), LoraConfig(rank=16, alpha=16), 0.0)
    V = policy.model.config.vocab_size
    prompts = torch.randint(100, V, (args.rows, args.prompt)).tolist()
    completions = torch.randint(100, V, (args.rows, args.completion)).tolist()
    packed = pack(prompts, completions, policy.tokenizer.pad_token_id)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp, _ = token_logprobs(policy.model, packed, share_prompts=False, chunk=args.chunk)
    logp.sum().backward()
    dt = time.perf_counter() - t
    print(json.dumps({"chunk": args.chunk, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "before_mb": base, "seconds": dt, "logp": logp.detach()[:, :8].tolist()}))


def main() -> None:
    from groupo.models.logprobs import LOGIT_CHUNK

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=60)
    ap.add_argument("--completion", type=int, default=400)
    ap.add_argument("--chunk", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.chunk is not None:
        return worker(args)
    print(f"CPU: {machine()}")
    out = {}
    for chunk in (0, LOGIT_CHUNK):
        cmd = [sys.executable, __file__, "--rows", str(args.rows), "--prompt", str(args.prompt),
               "--completion", str(args.completion), "--chunk", str(chunk)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            raise SystemExit(res.stderr[-3000:])
        out[chunk] = json.loads(lines[-1])
        r = out[chunk]
        print(f"chunk={chunk:5d}: peak RSS {r['peak_rss_mb']:.0f} MB (model loaded: {r['before_mb']:.0f} MB), "
              f"forward + backward {r['seconds']:.1f} s", flush=True)
    a, b = out[0]["logp"], out[LOGIT_CHUNK]["logp"]
    diff = max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))
    print(f"{args.rows} x ({args.prompt} + {args.completion}) tokens: peak RSS {out[0]['peak_rss_mb']:.0f} -> "
          f"{out[LOGIT_CHUNK]['peak_rss_mb']:.0f} MB; largest log-prob difference {diff:.2e}")


if __name__ == "__main__":
    main()
