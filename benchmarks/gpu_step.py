"""groupo's real training step on one device, timed: generation and update throughput, memory, MFU.

    python benchmarks/gpu_step.py                    # a GPU: ~0.5B Qwen2, 16 prompts x 8, 256 tokens
    python benchmarks/gpu_step.py --micro-batch 32 --beta 0.04 --out step.json
    python benchmarks/gpu_step.py --small            # CPU smoke test: tiny model, 2 prompts x 2, 8 tokens

Nothing is downloaded. The model is a randomly initialised Qwen2 of Qwen2.5-0.5B's shape (hidden
896, 24 layers, 14 heads, 2 KV heads, MLP 4864, vocabulary 151936, tied embeddings; ~494M
parameters in float32, the trainer's default model.dtype), built from a config in code and saved
with a byte-level BPE tokenizer trained in code (ChatML template) to a temporary folder. Then
`groupo.trainer.loop.train` runs as a user's run would: model.name=<that folder>, LoRA r16 on
q/k/v/o, the arithmetic task, GRPO with beta 0, run.device=auto, model.autocast=auto (bf16 on
GPUs), a reward that needs no answer (the share of even token ids), one held-out problem
evaluated before and after (not timed), no checkpoint but the last. Random weights over 151936
tokens draw EOS about once in 150k tokens, so nearly every completion runs to --new-tokens: the
table's `len` column is the measured mean, to check that they did.

Per step, and the median of the steps after the first (warm-up), from the run's metrics.jsonl:
    step s, gen s    the step's and its generation's seconds (generation includes scoring)
    upd s            step - generation: packing, forward, backward, optimizer step
    len              mean completion length, tokens
    gen tok/s        generated tokens / generation time
    train tok/s      tokens the update processes / update time: each prompt once per group in
                     a micro-batch (the trainer shares a group's prompt pass) + every completion
    GPU GB           peak allocated GPU memory in the step (host GB: the process's peak RSS so far)
    MFU              achieved FLOP/s / the GPU's dense bf16 peak, for generation, update, step

FLOPs count the weight matmuls only: attention scores, softmax, norms, padding and generation's
prompt prefill are left out (a few % at these lengths). A forward pass costs 2 FLOPs per weight
per token, where prompt tokens in the update skip the output head (logits are computed only
where a completion token is predicted); the update runs forward (2N) and the backward's
activation gradients (2N) but no weight gradients for the frozen base (LoRA's are negligible):
4N per token, 6N with --lora-rank 0, plus 2N for the reference pass when --beta > 0. Decoding
is memory-bound (every step reads all the weights for one token per sequence), so generation's
MFU is expected to be low. Peaks come from a table keyed by GPU name (or --peak-tflops); on a
CPU MFU is n/a unless --peak-tflops is given. With --autocast none a GPU runs float32 matmuls
in TF32, whose peak is half the bf16 one.

Every figure depends on the machine: GPU or CPU, clocks, driver, library versions, other load.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import tempfile
from pathlib import Path

import peft
import torch
import transformers
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from groupo.config import load_config
from groupo.data import load_task
from groupo.data.prompts import encode_prompt
from groupo.models.offline_tokenizer import make_tokenizer
from groupo.report.metrics import read_jsonl
from groupo.trainer.loop import train

# --small: a model and batch that run on a laptop CPU in seconds (flags given explicitly still win).
SMALL = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "intermediate": 128, "vocab": 2048,
         "prompts": 2, "group": 2, "new_tokens": 8, "micro_batch": 2}

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from NVIDIA's data sheets, matched against
# torch.cuda.get_device_name in order (so "H100 PCIe" before the SXM part's plain "H100").
PEAK_TFLOPS = [(r"H200", 989.0), (r"H100 PCIe", 756.0), (r"H100 NVL", 835.0), (r"H100", 989.0),
               (r"A100", 312.0), (r"\bL4\b", 121.0)]

# A reward that needs no answer. Not the share of digits in the text: the model samples from 151936
# ids and the tokenizer decodes only its first 384, so completions decode to almost nothing and
# every reward would be 0 (zero advantages: the same compute, but a degenerate loss and gradient).
REWARD_FILE = '''
def even_ids(prompts, completions, completion_ids, **kwargs):
    """Share of even token ids: varies between samples whatever the tokenizer decodes."""
    return [sum(t % 2 == 0 for t in ids) / max(1, len(ids)) for ids in completion_ids]
'''

def save_model(args, folder: Path) -> dict[str, int]:
    """A random Qwen2 + tokenizer as a Hugging Face folder; returns its parameter counts."""
    tokenizer = make_tokenizer()
    if len(tokenizer) > args.vocab:
        raise SystemExit(f"--vocab {args.vocab} is smaller than the tokenizer's {len(tokenizer)} tokens")
    # A vocabulary larger than the tokenizer's is fine: the extra ids sample (and decode to nothing)
    # like any other, and the output head costs what Qwen2.5's 151936-token head costs.
    config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, max_position_embeddings=32768, rms_norm_eps=1e-6,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # named_parameters lists a tied head once, as the embedding; the embedding lookup costs no FLOPs.
    body = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
    return {"params": sum(p.numel() for p in model.parameters()), "body": body, "head": args.vocab * args.hidden}


def run_training(args, folder: Path) -> tuple[list[dict], object]:
    (folder / "reward.py").write_text(REWARD_FILE, encoding="utf-8")
    overrides = {
        "model.name": str(folder / "model"), "model.dtype": "float32", "model.autocast": args.autocast,
        "lora.rank": args.lora_rank, "task.name": "arithmetic",
        "task.eval_size": 1,  # the fewest: 0 would mean all; the evaluations are outside the steps anyway
        "rollout.group_size": args.group, "rollout.max_new_tokens": args.new_tokens, "rollout.temperature": 1.0,
        "rollout.batch_size": args.gen_batch or args.prompts * args.group,
        "train.prompts_per_step": args.prompts, "train.micro_batch_size": args.micro_batch,
        "train.steps": args.steps, "train.save_every": 0, "algorithm.beta": args.beta,
        "run.device": args.device, "run.progress": "plain",
        "rewards.funcs": json.dumps({f"{folder / 'reward.py'}:even_ids": 1.0}),
    }
    cfg = load_config(None, [f"{k}={v}" for k, v in overrides.items()])
    train(cfg, folder / "run")
    return read_jsonl(folder / "run" / "metrics.jsonl"), cfg


def update_prompt_tokens(cfg, tokenizer, task, record: dict) -> int:
    """Prompt tokens the step's update ran: the step's P prompts as the loop draws them (GRPO
    has no dynamic sampling: prompts data_position - P .. data_position - 1), each encoded once
    per micro-batch that holds rows of its group."""
    P, G, mb = cfg.train.prompts_per_step, cfg.rollout.group_size, cfg.train.micro_batch_size
    start = record["data_position"] - P
    lengths = [len(encode_prompt(tokenizer, task.train[(start + i) % len(task.train)].messages)) for i in range(P)]
    return sum(lengths[p] for i in range(0, P * G, mb) for p in {r // G for r in range(i, min(i + mb, P * G))})


def step_rows(records: list[dict], cfg, counts: dict[str, int], peak: float | None) -> list[dict]:
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.name)
    task = load_task(cfg.task)
    G = cfg.rollout.group_size
    # FLOPs per token and weight in the update: forward, activation gradients, weight gradients
    # (full fine-tuning only), the reference's forward (beta > 0)
    k = 4 + (2 if cfg.lora.rank == 0 else 0) + (2 if cfg.algorithm.beta else 0)
    with_head = counts["body"] + counts["head"]
    mfu = (lambda flops, s: flops / s / (peak * 1e12)) if peak else (lambda flops, s: None)
    out = []
    for r in records:
        gen_tok = r["completion/len_mean"] * r["rollout/groups_used"] * G
        prompt_tok = update_prompt_tokens(cfg, tokenizer, task, r)
        upd_s = r["time/step_s"] - r["time/gen_s"]
        gen_flops = 2 * with_head * gen_tok
        upd_flops = k * (counts["body"] * prompt_tok + with_head * gen_tok)
        gpu_mb = r.get("memory/gpu_peak_mb")
        out.append({
            "step": r["step"], "step_s": r["time/step_s"], "gen_s": r["time/gen_s"], "update_s": upd_s,
            "completion_len": r["completion/len_mean"], "truncated_frac": r["completion/truncated_frac"],
            "gen_tok_s": gen_tok / r["time/gen_s"], "train_tok_s": (prompt_tok + gen_tok) / upd_s,
            "gpu_peak_gb": gpu_mb / 1024 if gpu_mb is not None else None,
            "host_peak_gb": r["memory/host_peak_rss_mb"] / 1024,
            "mfu_gen": mfu(gen_flops, r["time/gen_s"]), "mfu_update": mfu(upd_flops, upd_s),
            "mfu_step": mfu(gen_flops + upd_flops, r["time/step_s"]),
            "gen_tflop": gen_flops / 1e12, "update_tflop": upd_flops / 1e12, "loss": r.get("loss/total"),
        })
    return out


def median_row(rows: list[dict]) -> dict:
    """Each column's median over the steps after the first (the first alone if there is one)."""
    warm = rows[1:] or rows
    return {k: (statistics.median(v[k] for v in warm) if warm[0][k] is not None else None)
            for k in rows[0] if k != "step"}


COLUMNS = [("step s", "step_s", "{:.2f}"), ("gen s", "gen_s", "{:.2f}"), ("upd s", "update_s", "{:.2f}"),
           ("len", "completion_len", "{:.1f}"), ("gen tok/s", "gen_tok_s", "{:.0f}"),
           ("train tok/s", "train_tok_s", "{:.0f}"), ("GPU GB", "gpu_peak_gb", "{:.1f}"),
           ("host GB", "host_peak_gb", "{:.1f}"), ("MFU gen", "mfu_gen", "{:.1%}"),
           ("MFU upd", "mfu_update", "{:.1%}"), ("MFU step", "mfu_step", "{:.1%}")]


def print_table(rows: list[dict], median: dict) -> None:
    def line(label: str, row: dict) -> str:
        cells = [("n/a" if row[key] is None else fmt.format(row[key])).rjust(len(head)) for head, key, fmt in COLUMNS]
        return f"{label:>8}  " + "  ".join(cells)

    print(f"{'step':>8}  " + "  ".join(head for head, _, _ in COLUMNS))
    for r in rows:
        print(line(str(r["step"]), r))
    print(line("median" if len(rows) > 1 else "only", median))


def machine(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "device": str(device)}
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
        return info
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:  # not Linux
        cpuinfo = ""
    name = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.M)
    flags = set(flags.group(1).split()) if flags else None
    info.update(cpu=name.group(1).strip() if name else platform.processor() or "unknown",
                threads=torch.get_num_threads(),
                avx512_bf16=None if flags is None else "avx512_bf16" in flags,
                amx_bf16=None if flags is None else "amx_bf16" in flags)
    return info


def peak_tflops(args, device: torch.device, ap: argparse.ArgumentParser) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if device.type != "cuda":
        return None
    if not torch.cuda.is_available():
        ap.error(f"--device {args.device}, but torch {torch.__version__} sees no CUDA device here")
    name = torch.cuda.get_device_name(device)
    for pattern, tflops in PEAK_TFLOPS:
        if re.search(pattern, name):
            return tflops
    ap.error(f"no bf16 peak known for GPU {name!r}: pass --peak-tflops (its dense bf16 TFLOP/s)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3, help="training steps; the first is the warm-up")
    ap.add_argument("--prompts", type=int, default=16, help="train.prompts_per_step")
    ap.add_argument("--group", type=int, default=8, help="rollout.group_size")
    ap.add_argument("--new-tokens", type=int, default=256, help="rollout.max_new_tokens")
    ap.add_argument("--micro-batch", type=int, default=16, help="train.micro_batch_size")
    ap.add_argument("--gen-batch", type=int, default=None,
                    help="rollout.batch_size (default: prompts x group, the whole step in one generate call)")
    ap.add_argument("--beta", type=float, default=0.0, help="algorithm.beta (> 0 adds a reference pass)")
    ap.add_argument("--lora-rank", type=int, default=16, help="lora.rank (0 = full fine-tuning)")
    ap.add_argument("--autocast", default="auto", help="model.autocast: auto, none, bf16, fp16")
    ap.add_argument("--device", default="auto", help="run.device: auto, cpu, cuda, cuda:N")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=896)
    ap.add_argument("--heads", type=int, default=14)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=4864)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--small", action="store_true", help="tiny model and batch: a smoke test on a CPU")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's dense bf16 peak, TFLOP/s (needed for a GPU not in the table)")
    ap.add_argument("--dir", default=None, help="keep the model and the run here (default: a temporary folder)")
    ap.add_argument("--out", default=None, help="also write the table (and the machine) as JSON here")
    return ap


def main() -> None:
    ap = parser()
    if ap.parse_known_args()[0].small:
        ap.set_defaults(**SMALL)
    args = ap.parse_args()
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    peak = peak_tflops(args, device, ap)  # before minutes of building: an unknown GPU fails now
    info = machine(device)
    print("  ".join(f"{k} {v}" for k, v in info.items()))

    with tempfile.TemporaryDirectory(prefix="groupo-gpu-step-") as tmp:
        folder = Path(args.dir or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        counts = save_model(args, folder / "model")
        print(f"model: random Qwen2, {args.layers} layers, hidden {args.hidden}, vocab {args.vocab}: "
              f"{counts['params'] / 1e6:.1f}M parameters ({counts['body'] / 1e6:.1f}M outside the embedding)")
        records, cfg = run_training(args, folder)
        rows = step_rows(records, cfg, counts, peak)
    median = median_row(rows)

    print(f"\n{args.prompts} prompts x {args.group} samples, <= {args.new_tokens} new tokens, micro-batch "
          f"{args.micro_batch}, LoRA r{args.lora_rank}, beta {args.beta}, autocast {args.autocast}, "
          f"peak {f'{peak:g} TFLOP/s bf16' if peak else 'n/a'}")
    print_table(rows, median)
    if median["truncated_frac"] < 0.9:
        print(f"note: only {median['truncated_frac']:.0%} of completions ran to {args.new_tokens} tokens")
    if args.out:
        setup = {k: v for k, v in vars(args).items() if k not in ("out", "dir")}
        Path(args.out).write_text(json.dumps({"machine": info, "setup": setup, "params": counts, "peak_tflops": peak,
                                              "steps": rows, "median": median}, indent=2), encoding="utf-8")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
