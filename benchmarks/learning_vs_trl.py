"""The same learning, side by side: groupo against TRL's GRPOTrainer, at equal settings.

    pip install 'trl==1.16.0'                          # benchmark-only; never a groupo dependency
    python benchmarks/learning_vs_trl.py               # 20 steps each, held-out accuracy before and after
    python benchmarks/learning_vs_trl.py --steps 1 --eval-size 4        # a quick end-to-end check
    python benchmarks/learning_vs_trl.py --only trl --out trl.json

benchmarks/vs_trl.py compares speed; this compares what is learnt. Both trainers run the
quickstart's settings (groupo/quickstart.yaml) for `--steps` steps:

  model    the built-in SmolLM2-135M-Instruct in float32, bf16 autocast where this CPU runs bf16
           natively (`groupo.models.precision.native_half`), float32 elsewhere; TRL loads the same
           folder (`resolve_model`) with AutoModelForCausalLM
  LoRA     r=16, alpha=32, dropout 0 on q/k/v/o, made by the same peft call (groupo.models.lora.
           apply_lora) after the same seed, so both start from the same adapter (checked: the
           workers report a checksum of the initial adapter); TRL gets the PeftModel itself
  task     the built-in arithmetic task, difficulty 1, prompt style plain (the question as the
           only user turn); the reward is the task's own, groupo's accuracy reward (TRL calls it
           through a wrapper that reads its message-list completions)
  data     groupo draws its training problems in stream order, 8 per step; TRL gets the first
           8 x steps of them, as the chat messages groupo builds, in the same order
           (`shuffle_dataset=False`), so step k of each trainer sees the same 8 problems
  sampling 8 completions per problem, at most 48 new tokens, temperature 0.7, top-p 1, no top-k
  loss     GRPO without KL (groupo's `grpo` preset with beta 0): token ratio clipped at 1 +- 0.2,
           advantages (r - group mean) / (group std + 1e-4) with the unbiased std, per-sequence
           token means averaged over the 64 completions, truncated completions kept, one update
           per batch. TRL: loss_type="grpo", scale_rewards="group", epsilon=0.2, beta=0,
           num_iterations=1, mask_truncated_completions=False
  batch    64 completions per optimizer step in 4 micro-batches of 16 (TRL: per-device batch 16,
           4 accumulation steps, so one generation of 8 x 8 per optimizer step)
  optimizer AdamW, lr 6e-4 constant, no warm-up, weight decay 0, betas (0.9, 0.999), gradient
           norm clipped at 1.0; no gradient checkpointing; seed 0

Held-out accuracy: the task's held-out problems (`--eval-size`, the quickstart's 100), greedy, at
most 48 new tokens, scored by groupo's `evaluate` with groupo's HFEngine for both. groupo's run
records its own before (step 0) and after in eval.jsonl; the TRL worker calls the same `evaluate`
on the model before training and on TRL's trained PeftModel after, so the two are measured
identically. Per step: the mean training reward (groupo's `reward/mean`, TRL's `reward`; both are
the accuracy reward, so also the training accuracy), the mean completion length and the step time.

Each trainer runs in its own process, one after the other, and prints one JSON line; the driver
prints the curves side by side. Sampling differs between the two (different random streams and
generation code), so the curves are two samples of the same procedure, not the same numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine  # benchmarks/machine.py (this folder is on sys.path when run as a script)
from vs_trl import completion_texts, step_clock  # benchmarks/vs_trl.py

ROOT = Path(__file__).resolve().parents[1]
RESULT = "RESULT "  # marks the worker's JSON line among the trainers' own output
PROMPTS, GROUP, MICRO = 8, 8, 16  # prompts per step, completions per prompt, sequences per forward pass


def config(steps: int, eval_size: int, precision: str):
    """The quickstart's configuration with this benchmark's changes: a fixed step count (no time
    budget), no checkpoints along the way, no alarms, quiet, on the CPU."""
    from groupo.config import QUICKSTART_YAML, load_config

    over = {"train.steps": steps, "train.max_minutes": 0, "train.save_every": 0, "task.eval_size": eval_size,
            "model.autocast": precision, "run.device": "cpu", "run.progress": "off", "run.samples_per_step": 0,
            "run.tensorboard": "false", "run.alarms": "false"}
    cfg = load_config(QUICKSTART_YAML, [f"{k}={v}" for k, v in over.items()])
    T, R, A = cfg.train, cfg.rollout, cfg.algorithm
    assert (T.prompts_per_step, R.group_size, T.micro_batch_size) == (PROMPTS, GROUP, MICRO), "quickstart changed"
    assert A.preset == "grpo" and A.beta == 0 and A.num_iterations == 1, "quickstart changed"
    return cfg


def adapter_checksum(model) -> float:
    """Sum of |w| over the LoRA weights: equal for two adapters made alike."""
    return float(sum(p.detach().abs().sum() for n, p in model.named_parameters() if "lora_" in n))


def initial_adapter(cfg) -> float:
    """The checksum of the adapter groupo's train starts from: the same seed, load and LoRA call."""
    import torch

    from groupo.models import load_model
    from groupo.models.lora import apply_lora

    torch.manual_seed(cfg.train.seed)
    model, _ = load_model(cfg.model.name, cfg.model.revision, cfg.model.dtype)
    return adapter_checksum(apply_lora(model, cfg.lora))


# --------------------------------------------------------------------------------------------
# workers: one training run each; print one JSON line

def run_groupo(steps: int, eval_size: int, precision: str, workdir: Path) -> dict:
    from groupo.trainer.loop import train

    cfg = config(steps, eval_size, precision)
    checksum = initial_adapter(cfg)
    run = workdir / "run"
    t0 = time.perf_counter()
    summary = train(cfg, run)
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [json.loads(x) for x in (run / "eval.jsonl").read_text().splitlines()]
    return {"trainer": "groupo", "steps": len(rows), "reward": [r["reward/mean"] for r in rows],
            "accuracy_train": [r["accuracy/train"] for r in rows],
            "completion_len": [r["completion/len_mean"] for r in rows],
            "step_s": [r["time/step_s"] for r in rows], "train_s": sum(r["time/step_s"] for r in rows),
            "before": evals[0]["accuracy"], "after": evals[-1]["accuracy"], "eval_n": evals[-1]["n"],
            "eval_s": [e["seconds"] for e in evals], "wall_s": wall, "adapter_init": checksum,
            "stopped_early": summary.get("stopped_early", False)}


def run_trl(steps: int, eval_size: int, precision: str, workdir: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from groupo.data import load_task
    from groupo.engines.hf import HFEngine
    from groupo.eval.evaluate import evaluate
    from groupo.models.load import prepare_tokenizer, resolve_model
    from groupo.models.lora import apply_lora
    from groupo.rewards import resolve_rewards
    from groupo.rollout import Sampler

    cfg = config(steps, eval_size, precision)
    T, R = cfg.train, cfg.rollout
    bf16 = precision == "bf16"
    task = load_task(cfg.task)
    reward_fns = resolve_rewards(cfg.rewards, task, max_completion_length=R.max_new_tokens)
    assert list(reward_fns) == ["accuracy"], reward_fns
    accuracy_fn = reward_fns["accuracy"][0]  # groupo's accuracy reward with the run's options bound
    train_problems = [task.train[i] for i in range(steps * PROMPTS)]  # groupo's draws, in order
    held_out = task.test[:eval_size]
    ds = Dataset.from_list([{"prompt": p.messages, "answer": p.answer} for p in train_problems])

    def accuracy(prompts, completions, answer, **kw):
        return accuracy_fn(completions=completion_texts(completions), answer=answer)

    # The model as groupo's train makes it: seed, float32 weights (SDPA attention), LoRA.
    torch.manual_seed(T.seed)
    path = resolve_model(cfg.model.name, cfg.model.revision)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(path), model)
    model = apply_lora(model, cfg.lora)
    checksum = adapter_checksum(model)

    def held_out_accuracy(m) -> tuple[float, int, float]:
        t = time.perf_counter()
        engine = HFEngine(m, tok, batch_size=R.batch_size, autocast=precision)
        res = evaluate(Sampler(engine, tok), task, held_out, samples=1, temperature=0.0,
                       max_new_tokens=R.max_new_tokens, batch_size=R.batch_size, reward_fns=reward_fns)
        return res.accuracy, res.n, time.perf_counter() - t

    before, n_eval, eval_before_s = held_out_accuracy(model)

    args = GRPOConfig(
        output_dir=str(workdir / "trl"), use_cpu=True, bf16=bf16, seed=T.seed, report_to="none",
        save_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
        max_steps=steps, learning_rate=T.lr, lr_scheduler_type="constant", warmup_steps=T.warmup_steps,
        weight_decay=T.weight_decay, adam_beta1=T.adam_betas[0], adam_beta2=T.adam_betas[1],
        max_grad_norm=T.max_grad_norm, gradient_checkpointing=False,
        per_device_train_batch_size=MICRO, gradient_accumulation_steps=PROMPTS * GROUP // MICRO,
        num_generations=GROUP, shuffle_dataset=False,
        max_completion_length=R.max_new_tokens, temperature=R.temperature, top_p=R.top_p, top_k=R.top_k,
        repetition_penalty=1.0, beta=0.0, epsilon=0.2, epsilon_high=0.2, num_iterations=1, loss_type="grpo",
        scale_rewards="group", importance_sampling_level="token", mask_truncated_completions=False)
    assert args.steps_per_generation * MICRO == PROMPTS * GROUP  # one generation per optimizer step
    clock = step_clock()
    trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=[accuracy], args=args, train_dataset=ds,
                          callbacks=[clock])
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    trained = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    after, _, eval_after_s = held_out_accuracy(trained)
    logs = [x for x in clock.logs if "reward" in x]
    return {"trainer": "trl", "steps": len(clock.steps), "reward": [x["reward"] for x in logs],
            "accuracy_train": [x.get("rewards/accuracy/mean") for x in logs],
            "completion_len": [x.get("completions/mean_length") for x in logs],
            "step_s": clock.steps, "train_s": sum(clock.steps), "before": before, "after": after, "eval_n": n_eval,
            "eval_s": [round(eval_before_s, 1), round(eval_after_s, 1)], "wall_s": wall, "adapter_init": checksum,
            "stopped_early": False}


# --------------------------------------------------------------------------------------------
# the driver

def launch(trainer: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--worker", trainer, "--steps", str(args.steps), "--eval-size",
               str(args.eval_size), "--threads", str(args.threads), "--precision", args.precision, "--workdir", tmp]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
    lines = [ln[len(RESULT):] for ln in out.stdout.splitlines() if ln.startswith(RESULT)]
    if out.returncode or not lines:
        raise SystemExit(f"{trainer} run failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    res = json.loads(lines[-1])
    res["process_s"] = wall
    return res


def _f(x, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def report(results: dict[str, dict]) -> None:
    names = list(results)
    n = max(len(r["reward"]) for r in results.values())
    print("\ntraining reward per step (mean over 64 completions; the accuracy reward, so also train accuracy)")
    print("step " + "".join(f"{k + ' reward':>15s}{k + ' s':>10s}" for k in names))
    for i in range(n):
        cells = ""
        for k in names:
            r = results[k]
            cells += (f"{_f(r['reward'][i] if i < len(r['reward']) else None):>15s}"
                      f"{_f(r['step_s'][i] if i < len(r['step_s']) else None, '.1f'):>10s}")
        print(f"{i + 1:4d} " + cells)
    print()
    for k in names:
        r = results[k]
        first, last = r["reward"][: max(1, n // 4)], r["reward"][-max(1, n // 4):]
        mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
        print(f"{k:7s} held-out greedy accuracy {r['before']:.1%} -> {r['after']:.1%} on {r['eval_n']} problems "
              f"({100 * (r['after'] - r['before']):+.1f} points); training reward, first quarter {mean(first):.3f}, "
              f"last quarter {mean(last):.3f}; {r['steps']} steps, {r['train_s']:.0f} s of training "
              f"({r['train_s'] / max(1, r['steps']):.1f} s/step), evaluations {r['eval_s']} s, "
              f"process {r['process_s']:.0f} s" + (" (stopped early)" if r["stopped_early"] else ""))
    if len(names) == 2:
        a, b = (results[k]["adapter_init"] for k in names)
        print(f"initial LoRA adapter checksums: {a:.6f} / {b:.6f} ({'equal' if abs(a - b) < 1e-6 else 'DIFFERENT'}); "
              "held-out accuracy before training (same model, same evaluation): "
              + " / ".join(f"{results[k]['before']:.1%}" for k in names)
              + (" (equal)" if len({results[k]["before"] for k in names}) == 1 else " (DIFFERENT)"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--eval-size", type=int, default=100, help="held-out problems (greedy), both trainers")
    ap.add_argument("--only", choices=["groupo", "trl"])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--precision", choices=["auto", "bf16", "none"], default="auto",
                    help="autocast of both trainers; auto = bf16 where the CPU has native bf16, else none (float32)")
    ap.add_argument("--out", help="write the per-step curves and results here (JSON)")
    ap.add_argument("--worker", choices=["groupo", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.precision == "auto":
        from groupo.models.precision import native_half

        args.precision = "bf16" if native_half("bf16") else "none"
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        run = run_groupo if args.worker == "groupo" else run_trl
        res = run(args.steps, args.eval_size, args.precision, Path(args.workdir))
        print(RESULT + json.dumps(res), flush=True)
        return

    cpu = machine()
    print(f"CPU: {cpu}; torch threads {args.threads}; autocast {args.precision} for both; {args.steps} steps of "
          f"{PROMPTS} prompts x {GROUP} completions; held-out {args.eval_size} problems, greedy", flush=True)
    results: dict[str, dict] = {}
    for trainer in [t for t in ("groupo", "trl") if args.only in (None, t)]:
        results[trainer] = launch(trainer, args)
        r = results[trainer]
        print(f"{trainer}: done in {r['process_s']:.0f} s; held-out {r['before']:.1%} -> {r['after']:.1%}", flush=True)
    report(results)
    if args.out:
        Path(args.out).write_text(json.dumps({"cpu": cpu, "threads": args.threads, "autocast": args.precision,
                                              "steps": args.steps, "eval_size": args.eval_size,
                                              "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
