"""groupo against TRL's GRPOTrainer on the same work, side by side on this machine.

    pip install 'trl==1.16.0'                         # benchmark-only; never a groupo dependency
    python benchmarks/vs_trl.py                       # 2 runs each, alternating, 5 steps per run
    python benchmarks/vs_trl.py --runs 1 --steps 4 --only groupo
    python benchmarks/vs_trl.py --creep 200           # groupo's resident memory over 200 short steps
    python benchmarks/vs_trl.py --precision fp32      # both in float32 (auto: bf16 where the CPU has it natively)
    python benchmarks/vs_trl.py --new-tokens 256 --modes speed memory   # groupo's two modes against TRL
    python benchmarks/vs_trl.py --new-tokens 256 --only groupo --modes memory memory+packing  # packing's effect

The work (both trainers): the built-in SmolLM2-135M-Instruct, LoRA r=16 alpha=16 on q/k/v/o,
two-digit sums with a think/answer system prompt, the same accuracy and format reward functions
(groupo's, called by TRL through a wrapper that reads its message-list completions), 4 prompts x
8 samples per step, at most 64 new tokens (`--new-tokens`), temperature 1.0, beta 0.04 (a KL term, so both run a
reference forward), lr 1e-5, bf16 autocast where this CPU runs bf16 natively and float32
elsewhere (`--precision`: emulated bf16 on an AVX2 CPU is several times slower than float32 for
both trainers), one update per batch, 16 sequences per forward pass
(TRL: per-device batch 16 and 2 accumulation steps, i.e. the same 32 completions per step),
no gradient checkpointing (TRL turns it on by default; here off for both), no evaluation.
groupo runs in its speed mode (as above, with the update's attention written out as matmuls:
`model.update_attention=eager`) and, with `--modes speed memory`, also in its memory mode:
`model.gradient_checkpointing=true`, which recomputes the layers' activations in the backward pass
and keeps the shared prompts (models.logprobs.shared_prefix_forward). A mode with `+packing` adds
`train.packing=true` (padding-free update passes, models.packing).

Each run is its own process (so its peak RSS is its own): per-step time (median after the first
step, a warm-up), completions/s, generated tokens/s, peak RSS, and the model FLOPs per step with
the achieved share of this machine's measured matmul peak in the chosen precision (MFU). The FLOPs count is the same
formula for both: 2N per token of every forward (generation: prompt + completion per sequence;
the reference pass) and 6N per token of the policy's forward + backward, N = parameters; it ignores
attention's T^2 term (sequences are ~100 tokens) and the fact that LoRA's backward skips the
frozen weights' gradients, so it is a convention, the same for both, not a hardware count.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine  # benchmarks/machine.py (this folder is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = ("Show your reasoning inside <think></think> tags, then give the final answer inside "
          "<answer></answer> tags.")


def problems(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        out.append({"question": f"What is {a} + {b}?", "answer": str(a + b)})
    return out


def peak_flops(threads: int, bf16: bool = True) -> float:
    """Best of a few 1024^3 matmuls in bf16 (or float32): the machine's practical matmul peak with `threads`."""
    import torch

    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if bf16 else torch.float32
    a = torch.randn(1024, 1024, dtype=dtype)
    b = torch.randn(1024, 1024, dtype=dtype)
    for _ in range(3):
        a @ b
    best = min(_timed(lambda: a @ b) for _ in range(10))
    return 2 * 1024**3 / best


def _timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def step_flops(n_params: int, prompt_tokens: float, completion_tokens: float, sequences: int) -> float:
    """The convention of the module docstring: 2N (generation) + 2N (reference) + 6N (policy) per token."""
    tokens = sequences * (prompt_tokens + completion_tokens)
    return (2 + 2 + 6) * n_params * tokens


# --------------------------------------------------------------------------------------------
# workers: one run of one trainer; print one JSON line

def run_groupo(steps: int, workdir: Path, creep: int = 0, bf16: bool = True, new_tokens: int = 64,
               memory: bool = False, packing: bool = False) -> dict:
    from groupo.config import load_config
    from groupo.trainer.loop import train

    data = workdir / "sums.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in problems(2000)))
    small = creep > 0  # the memory-creep check: many short steps
    over = {"model.name": "smollm2-135m-instruct", "model.autocast": "bf16" if bf16 else "none",
            "lora.rank": 16, "lora.alpha": 16,
            # plain style: the question alone as the user turn, after SYSTEM (the r1 style would append
            # its instruction to the question, a longer prompt than TRL's)
            "task.name": str(data), "task.prompt_style": "plain", "task.system_prompt": SYSTEM, "task.eval_size": 1,
            "rewards.funcs": json.dumps({"accuracy": 1.0, "format": 1.0}),
            "rollout.group_size": 4 if small else 8, "rollout.max_new_tokens": 16 if small else new_tokens,
            "model.gradient_checkpointing": str(memory).lower(),
            # speed mode: the update's attention written out (short sequences; groupo.models.attention)
            "model.update_attention": "sdpa" if memory else "eager",
            "train.packing": str(packing).lower(),  # +packing: padding-free update passes
            "rollout.temperature": 1.0, "algorithm.beta": 0.04, "train.lr": 1e-5,
            "train.prompts_per_step": 2 if small else 4, "train.micro_batch_size": 16,
            "train.steps": creep or steps, "train.save_every": 0, "run.progress": "off",
            "run.samples_per_step": 0}
    cfg = load_config(None, [f"{k}={v}" for k, v in over.items()])
    run = workdir / "run"
    cpu = _cpu_clock_on_update()
    t0 = time.perf_counter()
    train(cfg, run)
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {"trainer": "groupo", "wall_s": wall, "peak_rss_mb": _peak_rss_mb(),
            "step_s": [r["time/step_s"] for r in rows], "gen_s": [r["time/gen_s"] for r in rows],
            "update_s": [r["time/update_s"] for r in rows], "update_cpu_s": cpu[-len(rows):],
            "completion_tokens": [r["completion/len_mean"] for r in rows], "reward": [r["reward/mean"] for r in rows],
            "rss_mb": [r["memory/host_peak_rss_mb"] for r in rows],
            "prompt_tokens": _prompt_tokens(), "sequences": 2 * 4 if small else 32}


def _cpu_clock_on_update() -> list[float]:
    """The process's CPU seconds in each step's prepare + update stages (reference and old-policy
    passes, forward, backward, optimizer), appended per step: on a machine other jobs share, CPU time
    moves less with their load than wall time does."""
    import groupo.trainer.loop as loop

    out: list[float] = []
    prepare, update = loop.prepare, loop.update

    def timed_prepare(*a, **kw):
        t = time.process_time()
        batch = prepare(*a, **kw)
        out.append(time.process_time() - t)
        return batch

    def timed_update(*a, **kw):
        t = time.process_time()
        metrics = update(*a, **kw)
        out[-1] += time.process_time() - t
        return metrics

    loop.prepare, loop.update = timed_prepare, timed_update
    return out


def run_trl(steps: int, workdir: Path, bf16: bool = True, new_tokens: int = 64) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from groupo.models.load import resolve_model
    from groupo.rewards.format import format_reward
    from groupo.rewards.math import accuracy_reward

    torch.manual_seed(0)
    path = resolve_model("smollm2-135m-instruct", None)
    ds = Dataset.from_list([{"prompt": [{"role": "system", "content": SYSTEM},
                                        {"role": "user", "content": p["question"]}], "answer": p["answer"]}
                            for p in problems(2000)])

    def accuracy(prompts, completions, answer, **kw):
        return accuracy_reward(completion_texts(completions), answer)

    def fmt(prompts, completions, **kw):
        return format_reward(completion_texts(completions))

    args = GRPOConfig(output_dir=str(workdir / "trl"), use_cpu=True, bf16=bf16, learning_rate=1e-5, beta=0.04,
                      num_generations=8, per_device_train_batch_size=16, gradient_accumulation_steps=2,
                      max_completion_length=new_tokens, temperature=1.0, max_steps=steps, logging_steps=1,
                      report_to="none", save_strategy="no", gradient_checkpointing=False, seed=0,
                      dataloader_num_workers=0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    clock = step_clock()
    trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=[accuracy, fmt], args=args,
                          train_dataset=ds, callbacks=[clock],
                          peft_config=LoraConfig(r=16, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                      "o_proj"]))
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    logs = [x for x in clock.logs if "completions/mean_length" in x]
    return {"trainer": "trl", "wall_s": wall, "peak_rss_mb": _peak_rss_mb(), "step_s": clock.steps,
            "completion_tokens": [x["completions/mean_length"] for x in logs],
            "reward": [x.get("reward") for x in logs], "prompt_tokens": _prompt_tokens(), "sequences": 32}


def completion_texts(completions) -> list[str]:
    """The text of each completion as TRL hands them to reward functions (message lists or strings)."""
    return [c[-1]["content"] if isinstance(c, list) else c for c in completions]


def step_clock():
    """A TrainerCallback that times each optimizer step from the start of training (`steps`, seconds)
    and keeps TRL's logged records (`logs`)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.t, self.steps, self.logs = time.perf_counter(), [], []

        def on_train_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            self.steps.append(now - self.t)
            self.t = now

        def on_log(self, args, state, control, logs=None, **kw):
            self.logs.append(dict(logs or {}))

    return StepClock()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _prompt_tokens() -> float:
    from groupo.data.prompts import encode_prompt
    from groupo.models import load_model

    _, tok = load_model("smollm2-135m-instruct")
    ps = problems(64)
    return statistics.mean(len(encode_prompt(tok, [{"role": "system", "content": SYSTEM},
                                                   {"role": "user", "content": p["question"]}])) for p in ps)


# --------------------------------------------------------------------------------------------
# the driver: alternate runs, summarise

def _launch(trainer: str, steps: int, threads: int, creep: int = 0, bf16: bool = True, new_tokens: int = 64,
            mode: str = "speed") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--worker", trainer, "--steps", str(steps), "--workdir", tmp,
               "--threads", str(threads), "--creep", str(creep), "--precision", "bf16" if bf16 else "fp32",
               "--new-tokens", str(new_tokens), "--modes", mode]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode or not lines:
        raise SystemExit(f"{trainer} run failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(lines[-1])


def summarise(run: dict, n_params: int, peak: float) -> dict:
    steps = run["step_s"][1:] or run["step_s"]  # the first step warms up
    step_s = statistics.median(steps)
    tokens = statistics.mean(run["completion_tokens"])
    flops = step_flops(n_params, run["prompt_tokens"], tokens, run["sequences"])
    gen, upd, cpu = run.get("gen_s"), run.get("update_s"), run.get("update_cpu_s")
    return {"step_s": step_s, "gen_s": statistics.median(gen[1:] or gen) if gen else float("nan"),
            "update_s": statistics.median(upd[1:] or upd) if upd else float("nan"),
            "update_cpu_s": statistics.median(cpu[1:] or cpu) if cpu else float("nan"),
            "completions_per_s": run["sequences"] / step_s,
            "tokens_per_s": run["sequences"] * tokens / step_s, "tokens_per_completion": tokens,
            "peak_rss_gb": run["peak_rss_mb"] / 1024, "tflop_per_step": flops / 1e12, "mfu": flops / step_s / peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--runs", type=int, default=2, help="runs per trainer, alternating")
    ap.add_argument("--only", choices=["groupo", "trl"])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--creep", type=int, default=0, help="groupo only: this many short steps, RSS slope")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                    help="both trainers' precision; auto = bf16 where the CPU has native bf16, else fp32")
    ap.add_argument("--new-tokens", type=int, default=64, help="most new tokens per completion, both trainers")
    ap.add_argument("--modes", nargs="+", choices=["speed", "memory", "speed+packing", "memory+packing"],
                    default=["speed"], help="groupo's modes to run (memory: activation checkpointing; "
                                            "+packing: train.packing=true)")
    ap.add_argument("--worker", choices=["groupo", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.precision == "auto":
        from groupo.models.precision import native_half

        args.precision = "bf16" if native_half("bf16") else "fp32"
    bf16 = args.precision == "bf16"
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        work = Path(args.workdir)
        mode, _, extra = args.modes[0].partition("+")
        res = (run_groupo(args.steps, work, args.creep, bf16, args.new_tokens, mode == "memory", extra == "packing")
               if args.worker == "groupo" else run_trl(args.steps, work, bf16, args.new_tokens))
        print(json.dumps(res), flush=True)
        return

    print(f"CPU: {machine()}; torch threads {args.threads}; precision {args.precision} for both; "
          f"at most {args.new_tokens} new tokens")
    peak = peak_flops(args.threads, bf16)
    print(f"measured {args.precision} matmul peak: {peak / 1e12:.2f} TFLOP/s")
    if args.creep:
        run = _launch("groupo", 0, args.threads, creep=args.creep, bf16=bf16)
        rss = run["rss_mb"]
        half = rss[len(rss) // 2:]
        slope = (half[-1] - half[0]) / max(1, len(half) - 1)
        print(f"groupo, {len(rss)} short steps: peak RSS {rss[0]:.0f} MB at step 1, {rss[len(rss) // 2]:.0f} at "
              f"{len(rss) // 2 + 1}, {rss[-1]:.0f} at {len(rss)}; slope over the second half {slope:.2f} MB/step")
        return
    from groupo.models import load_model

    model, _ = load_model("smollm2-135m-instruct")
    n_params = sum(p.numel() for p in model.parameters())
    del model
    kinds = [f"groupo-{m}" for m in args.modes] if args.only != "trl" else []
    kinds += ["trl"] if args.only != "groupo" else []
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    for _ in range(args.runs):  # alternating: one run of each kind, then again
        for kind in kinds:
            trainer, _, mode = kind.partition("-")
            run = _launch(trainer, args.steps, args.threads, bf16=bf16, new_tokens=args.new_tokens,
                          mode=mode or "speed")
            s = summarise(run, n_params, peak)
            results[kind].append(s)
            print(f"{kind:13s} run {len(results[kind])}: {s['step_s']:.1f} s/step"
                  + (f" ({s['gen_s']:.1f} s generation, {s['update_s']:.1f} s update, "
                     f"{s['update_cpu_s']:.1f} CPU s)" if s["gen_s"] == s["gen_s"] else "")
                  + f", {s['tokens_per_s']:.0f} tokens/s, "
                  f"{s['completions_per_s']:.2f} completions/s, {s['tokens_per_completion']:.0f} tokens/completion, "
                  f"peak RSS {s['peak_rss_gb']:.2f} GB, {s['tflop_per_step']:.2f} TFLOP/step, MFU {s['mfu']:.1%}; "
                  f"steps {[round(x, 1) for x in run['step_s']]}"
                  + (f", updates {[round(x, 1) for x in run['update_s']]} s, "
                     f"{[round(x, 1) for x in run['update_cpu_s']]} CPU s" if run.get("update_cpu_s") else "")
                  + f", tokens/completion {[round(x) for x in run['completion_tokens']]}"
                  f", rewards {[_r(x) for x in run['reward']]}",
                  flush=True)
    med = {k: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for k, rs in results.items() if rs}
    for kind, m in med.items():
        print(f"median {kind:13s}: {m['step_s']:.1f} s/step (update {m['update_s']:.1f} s, "
              f"{m['update_cpu_s']:.1f} CPU s), "
              f"{m['tokens_per_s']:.0f} tokens/s, "
              f"peak RSS {m['peak_rss_gb']:.2f} GB, MFU {m['mfu']:.1%}")
    if "trl" in med:
        t = med["trl"]
        for kind in (k for k in med if k != "trl"):
            g = med[kind]
            print(f"{kind} / TRL: {g['tokens_per_s'] / t['tokens_per_s']:.2f}x generated tokens/s, "
                  f"{g['completions_per_s'] / t['completions_per_s']:.2f}x completions/s, "
                  f"{g['peak_rss_gb'] / t['peak_rss_gb']:.0%} of TRL's peak RSS (medians over runs)")


def _r(x):
    return None if x is None else round(x, 2)


if __name__ == "__main__":
    main()
