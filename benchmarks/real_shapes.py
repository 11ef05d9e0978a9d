"""The seeds' models at their real shapes: a few steps of their recipes on this machine in each
memory mode, against `groupo plan`.

    python benchmarks/real_shapes.py                                   # every model and mode, 3 steps
    python benchmarks/real_shapes.py --models qwen2.5-0.5b --modes bf16 packing --steps 2

Models: the config.json of Qwen2.5-0.5B-Instruct, Llama-3.2-1B-Instruct (the LoRA + GRPO write-up's)
and Qwen2.5-Coder-1.5B-Instruct (the code-reward reproduction's), written out below from their
published configurations, with random bfloat16 weights saved beside it once (`--dir`): no download.
The tokenizer is the built-in SmolLM2's (49,152 tokens, ChatML); each model keeps its own vocabulary
size, so its embedding and output head have their real shapes, and sampled ids the tokenizer does
not have decode to nothing.

Recipes, each as its YAML says but shrunk to `--prompts` prompts x `--group` samples x
`--new-tokens` tokens and the bundled sample data (as --smoke points them): configs/gsm8k.yaml for
Qwen2.5-0.5B (its header names it for GPUs), configs/unsloth_lora_grpo.yaml for Llama-3.2-1B,
configs/code_solver.yaml for Qwen2.5-Coder-1.5B. Their micro-batch sizes, LoRA settings, KL term
(beta 0.04: a reference pass) and bfloat16 weights are kept.

Lengths: a randomly initialised model almost never samples EOS, so every completion would run to
the limit: equal lengths, where packing cannot pay. A stop string (`--stop`, default "b") ends a
completion at the first sampled token containing it (3,738 of the tokenizer's 49,152 tokens do: 2.5%
of Qwen2.5's vocabulary, 2.9% of Llama 3's; near-uniform sampling then stops a completion within
64 tokens four times in five, after ~30 tokens on average), so lengths vary as in training.

Modes: bf16 (the recipe as it is: bfloat16 weights, bf16 autocast where the CPU has it), checkpointing
(`model.gradient_checkpointing=true`), packing (`train.packing=true`), nf4 (`model.quantization=nf4`,
where this groupo has that key). Each run is `groupo train` in its own process (its peak RSS is its
own); measured: medians of time/step_s, time/gen_s, time/update_s after the first step, the run's
peak RSS and its mean completion length. Then `groupo plan --json` of the same configuration, with
`--mean-completion-tokens` at the run's mean under packing; errors are (plan - run) / run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine  # benchmarks/machine.py

ROOT = Path(__file__).resolve().parents[1]
GROUPO = [sys.executable, "-m", "groupo"]

# From the models' published config.json (Hugging Face hub), the fields that set shapes and numerics.
QWEN2 = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu", "attention_dropout": 0.0,
         "rope_theta": 1000000.0, "rms_norm_eps": 1e-06, "max_position_embeddings": 32768, "use_sliding_window": False,
         "sliding_window": 32768, "tie_word_embeddings": True, "vocab_size": 151936, "initializer_range": 0.02}
MODELS = {
    "qwen2.5-0.5b": {**QWEN2, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "max_window_layers": 21},
    "llama-3.2-1b": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
                     "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
                     "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
                     "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                      "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                     "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False,
                     "initializer_range": 0.02},
    "qwen2.5-coder-1.5b": {**QWEN2, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                           "num_attention_heads": 12, "num_key_value_heads": 2, "max_window_layers": 21},
}
RECIPES = {"qwen2.5-0.5b": "configs/gsm8k.yaml", "llama-3.2-1b": "configs/unsloth_lora_grpo.yaml",
           "qwen2.5-coder-1.5b": "configs/code_solver.yaml"}
MODES = {"bf16": [], "checkpointing": ["model.gradient_checkpointing=true"], "packing": ["train.packing=true"],
         "nf4": ["model.quantization=nf4"]}


def model_folder(name: str, root: Path) -> Path:
    """`root/name`: config.json, random bfloat16 weights and the built-in tokenizer, made once."""
    folder = root / name
    if (folder / "model.safetensors").exists() or (folder / "model.safetensors.index.json").exists():
        return folder
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from groupo.models import load_model

    folder.mkdir(parents=True, exist_ok=True)
    _, tok = load_model("smollm2-135m-instruct")
    fields = dict(MODELS[name])
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    # the special tokens are the tokenizer's (shapes do not depend on them)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def overrides(name: str, mode: str, folder: Path, args) -> list[str]:
    from groupo.config import load_config
    from groupo.smoke import smoke_settings

    data = smoke_settings(load_config(str(ROOT / RECIPES[name])))["task.path"]  # the bundled sample files
    return [f"model.name={folder}", f"task.path={data}", "task.eval_size=1",
            f"train.prompts_per_step={args.prompts}", f"rollout.group_size={args.group}",
            f"rollout.max_new_tokens={args.new_tokens}", f"rollout.stop={json.dumps([args.stop])}",
            "train.save_every=0", "train.eval_every=0", "train.max_minutes=0", "train.warmup_steps=0",
            "run.progress=off", "run.samples_per_step=0", "run.tensorboard=false", *MODES[mode]]


def train(recipe: str, over: list[str], steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        t0 = time.perf_counter()
        out = subprocess.run([*GROUPO, "train", recipe, *over, f"train.steps={steps}", f"run.dir={run}"],
                             capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            return {"error": (out.stderr or out.stdout).strip().splitlines()[-1]}
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    later = rows[1:] or rows
    med = lambda k: statistics.median(r[k] for r in later)
    return {"step_s": med("time/step_s"), "gen_s": med("time/gen_s"), "update_s": med("time/update_s"),
            "peak_mb": max(r["memory/host_peak_rss_mb"] for r in rows), "wall_s": time.perf_counter() - t0,
            "len_mean": statistics.mean(r["completion/len_mean"] for r in later),  # the measured steps'
            "lens": [round(r["completion/len_mean"], 1) for r in rows],
            "steps": [round(r["time/step_s"], 1) for r in rows]}


def plan(recipe: str, over: list[str], new_tokens: int, mean: float | None) -> dict:
    extra = ["--completion-tokens", str(new_tokens)] + (["--mean-completion-tokens", str(round(mean))] if mean else [])
    out = subprocess.run([*GROUPO, "plan", recipe, *over, "--json", *extra], capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": (out.stderr or out.stdout).strip().splitlines()[-1]}


def err(p: float, m: float) -> str:
    return f"{(p - m) / m:+.0%}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=["bf16", "checkpointing", "packing", "nf4"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--stop", default="b", help="the stop string that makes completion lengths vary")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "groupo-real-shapes",
                    help="where the models' folders (config.json, random weights, tokenizer) are kept")
    args = ap.parse_args()
    print(f"CPU: {machine()}; {time.strftime('%Y-%m-%d')}; {args.prompts} prompts x {args.group} samples x at most "
          f"{args.new_tokens} tokens, stop string {args.stop!r}, {args.steps} steps (medians of steps 2-{args.steps})",
          flush=True)
    print("| model, recipe | mode | | step | generation | update (+ reference) | peak memory | completion tokens |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    mb = 2**20
    for name in args.models:
        folder = model_folder(name, args.dir)
        recipe = str(ROOT / RECIPES[name])
        for mode in args.modes:
            over = overrides(name, mode, folder, args)
            run = train(recipe, over, args.steps)
            label = f"{name}, {Path(recipe).name}"
            if "error" in run:
                print(f"| {label} | {mode} | not run: {run['error']} | | | | | |", flush=True)
                continue
            print(f"| {label} | {mode} | measured | {run['step_s']:.1f} s | {run['gen_s']:.1f} s | "
                  f"{run['update_s']:.1f} s | {run['peak_mb']:,.0f} MiB | mean {run['len_mean']:.1f} "
                  f"(steps {run['lens']}) |", flush=True)
            p = plan(recipe, over, args.new_tokens, run["len_mean"] if mode == "packing" else None)
            if "error" in p:
                print(f"| | | plan failed: {p['error']} | | | | | |", flush=True)
                continue
            upd = p["update_s"] + p["reference_s"]
            print(f"| | | plan | {p['step_s']:.1f} s ({err(p['step_s'], run['step_s'])}) | "
                  f"{p['gen_s']:.1f} s ({err(p['gen_s'], run['gen_s'])}) | {upd:.1f} s ({err(upd, run['update_s'])}) | "
                  f"{p['peak_bytes'] / mb:,.0f} MiB ({err(p['peak_bytes'] / mb, run['peak_mb'])}) | "
                  f"{p['completion_tokens']}, update {p['update_completion_tokens']} |", flush=True)
            print(f"<!-- {name} {mode}: step times {run['steps']}, wall {run['wall_s']:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
