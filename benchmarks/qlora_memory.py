"""Memory of a LoRA policy on a float32 base against the same base loaded 4-bit (model.quantization).

    python benchmarks/qlora_memory.py                              # the built-in SmolLM2-135M, none vs nf4
    python benchmarks/qlora_memory.py --model DIR --kinds none nf4 int8
    python benchmarks/qlora_memory.py --qwen-0.5b-shape /tmp/qwen05b  # random weights, Qwen2.5-0.5B's config

Each kind runs in its own process: load_policy (LoRA r=16 on all-linear, float32 elsewhere, autocast
none), then two steps: a generation of 8 prompts x 2 samples x 16 tokens by the HF engine, and a
forward + backward of 8 rows of 32 + 32 tokens followed by an AdamW step. Reported per kind:

    weights_mb      bytes of the model's parameters and buffers (each storage once): what the weights take
    loaded_mb       resident memory after loading over the same process's before it (torch, transformers,
                    peft, groupo imported), after gc and malloc_trim: VmRSS, and its parts RssAnon (what the
                    process allocated) and RssFile (mapped files: float32 safetensors weights are mapped, not
                    copied, and become resident as they are first read)
    after_steps_mb  the same after the two steps
    steps_peak_mb   the peak resident memory of the two steps (the peak is reset after loading:
                    /proc/self/clear_refs), over the same baseline
    load_s, steps_s wall time of loading (4-bit: quantizing on this device) and of the two steps

--qwen-0.5b-shape DIR writes (once) a random-weight model with Qwen2.5-0.5B's config.json shape
(24 layers, hidden 896, 14 heads / 2 KV heads, MLP 4864, vocabulary 151936, tied embeddings;
494M parameters, 2 GB in float32) and groupo's offline tokenizer, and measures it.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

from machine import machine  # benchmarks/machine.py (this folder is on sys.path when run as a script)


def _status_mb(*keys: str) -> dict[str, float]:
    """Fields of /proc/self/status in MiB: VmRSS (resident), RssAnon (memory the process allocated),
    RssFile (mapped files: libraries, and safetensors weights that transformers maps rather than copies),
    VmHWM (the peak of VmRSS)."""
    with open("/proc/self/status") as fh:
        rows = dict(ln.split(":", 1) for ln in fh if ":" in ln)
    return {k: int(rows[k].split()[0]) / 1024 for k in keys}


def _settle() -> None:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def worker(model: str, kind: str) -> None:
    import torch

    from groupo.config import LoraConfig, ModelConfig
    from groupo.engines.hf import HFEngine
    from groupo.models import load_policy
    from groupo.models.logprobs import pack, token_logprobs
    from groupo.types import SamplingParams

    torch.manual_seed(0)
    _settle()
    before = _status_mb("VmRSS", "RssAnon", "RssFile")
    t = time.perf_counter()
    policy = load_policy(ModelConfig(name=model, quantization=kind, autocast="none"),
                         LoraConfig(rank=16, alpha=32, target_modules=["all-linear"]), beta=0.0)
    load_s = time.perf_counter() - t
    _settle()
    loaded = _status_mb("VmRSS", "RssAnon", "RssFile")
    storages = {}
    for t_ in [*policy.model.parameters(), *policy.model.buffers()]:
        storages[t_.untyped_storage().data_ptr()] = t_.untyped_storage().nbytes()
    with open("/proc/self/clear_refs", "w") as fh:  # the peak from here on: the steps', not the load's
        fh.write("5")
    t = time.perf_counter()
    V = len(policy.tokenizer)
    prompts = torch.randint(100, V, (8, 32)).tolist()
    HFEngine(policy.model, policy.tokenizer, autocast="none").generate(
        prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=16, seed=0))
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-4)
    policy.model.train()
    logp, _ = token_logprobs(policy.model, pack(prompts, torch.randint(100, V, (8, 32)).tolist(),
                                                policy.tokenizer.pad_token_id))
    logp.sum().backward()
    optimizer.step()
    steps_s = time.perf_counter() - t
    _settle()
    after = _status_mb("VmRSS", "RssAnon", "RssFile", "VmHWM")
    over = lambda now, key: round(now[key] - before[key], 1)
    print(json.dumps({"kind": kind, "weights_mb": round(sum(storages.values()) / 2**20, 1),
                      "loaded_mb": {k: over(loaded, k) for k in ("VmRSS", "RssAnon", "RssFile")},
                      "after_steps_mb": {k: over(after, k) for k in ("VmRSS", "RssAnon", "RssFile")},
                      "steps_peak_mb": round(after["VmHWM"] - before["VmRSS"], 1),
                      "load_s": round(load_s, 1), "steps_s": round(steps_s, 1),
                      "trainable": sum(p.numel() for p in policy.trainable_parameters())}))


def qwen_05b_shape(out: Path) -> Path:
    """A random-weight model with Qwen2.5-0.5B-Instruct's config.json shape, and the offline tokenizer."""
    if (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from groupo.models.offline_tokenizer import make_tokenizer

    tok = make_tokenizer()
    cfg = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                      num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                      rms_norm_eps=1e-6, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--qwen-0.5b-shape", dest="qwen", type=Path, help="write (once) and measure that model in DIR")
    ap.add_argument("--kinds", nargs="+", default=["none", "nf4"])
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(*args.worker)
    model = str(qwen_05b_shape(args.qwen)) if args.qwen else args.model
    print(f"CPU: {machine()}; model {model}")
    for kind in args.kinds:
        out = subprocess.run([sys.executable, __file__, "--worker", model, kind], capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr[-3000:])
        print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
