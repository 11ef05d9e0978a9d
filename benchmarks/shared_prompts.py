"""Side by side: a GRPO step's two halves with and without encoding each prompt once per group.

    python benchmarks/shared_prompts.py                  # built-in model, LoRA r16, 8 prompts x 8
    python benchmarks/shared_prompts.py --repeats 3 --micro-batch 16

Generation (`HFEngine.generate`, temperature 0.7, <= 48 new tokens), three ways, interleaved so
that the machine's drift hits them alike:
    plain      every row encodes its prompt, LoRA applied as separate low-rank matmuls
    merged     the same with merged LoRA weights (`merged_for_inference`)
    shared     merged weights + each prompt's KV cache computed once and repeated (the default)
The update (`token_logprobs` forward + backward over the generated batch, in micro-batches):
    plain      each row runs prompt + completion
    shared     each distinct prompt runs once, its cache indexed out to its rows (the default)
Seconds per call (median of the repeats) and the speed-up over plain.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from unittest import mock

import torch

from groupo.config import quickstart_config
from groupo.data import load_task
from groupo.data.prompts import encode_prompt
from groupo.engines import hf
from groupo.models import load_policy
from groupo.models.logprobs import pack, token_logprobs
from groupo.trainer.passes import rows
from groupo.types import SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    cfg = quickstart_config()
    task = load_task(cfg.task)
    policy = load_policy(cfg.model, cfg.lora, 0.0)
    model, tok = policy.model, policy.tokenizer
    with torch.no_grad():  # a non-zero adapter, as after some training
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1e-3)
    engine = hf.HFEngine(model, tok, batch_size=args.prompts * args.group, autocast="none")
    prompts = [encode_prompt(tok, p.messages) for p in task.train[:args.prompts]]
    params = SamplingParams(n=args.group, temperature=0.7, max_new_tokens=args.new_tokens, seed=0)

    gen = {"plain": [], "merged": [], "shared": []}
    out = None
    for _ in range(args.repeats):
        for mode in gen:
            patches = []
            if mode == "plain":
                patches.append(mock.patch.object(hf, "merged_for_inference", lambda m: contextlib.nullcontext()))
            if mode != "shared":
                patches.append(mock.patch.object(hf.HFEngine, "_shared_prefix", lambda self, b, n: None))
            for p in patches:
                p.start()
            t0 = time.perf_counter()
            out = engine.generate(prompts, params)
            gen[mode].append(time.perf_counter() - t0)
            for p in patches:
                p.stop()
    flat = [c for g in out for c in g]
    n_tok = sum(len(c.token_ids) for c in flat)
    print(f"generation: {len(flat)} completions, {n_tok} new tokens, prompts of "
          f"{min(map(len, prompts))}-{max(map(len, prompts))} tokens")
    _report(gen)

    packed = pack([c.prompt_ids for c in flat], [c.token_ids for c in flat], tok.pad_token_id)
    B = len(flat)
    upd = {"plain": [], "shared": []}
    model.train()
    for _ in range(args.repeats):
        for mode in upd:
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            for i in range(0, B, args.micro_batch):  # micro-batches as the trainer cuts them
                micro = rows(packed, slice(i, i + args.micro_batch))
                logp, _ = token_logprobs(model, micro, 0.7, with_entropy=True, share_prompts=mode == "shared")
                logp.sum().backward()
            upd[mode].append(time.perf_counter() - t0)
    print(f"update: forward + backward of {B} rows, micro-batches of {args.micro_batch}, "
          f"{packed.input_ids_BL.shape[1]} columns at most")
    _report(upd)


def _report(times: dict[str, list[float]]) -> None:
    base = statistics.median(times["plain"])
    for mode, ts in times.items():
        med = statistics.median(ts)
        print(f"  {mode:7s} {med:6.1f} s  (runs: {', '.join(f'{t:.1f}' for t in ts)})  x{base / med:.2f}")


if __name__ == "__main__":
    main()
