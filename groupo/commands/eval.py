"""`groupo eval`: evaluate a model, an adapter, or a training run on a task.

    groupo eval --model NAME_OR_PATH [--adapter RUN_DIR/final] --task gsm8k --path DATA [--split test]
                [--limit N] [--samples K] [--out FILE.jsonl]
    groupo eval --run RUN_DIR [--task TASK] [--base]

With --run, the run's saved config.yaml supplies the model, the task, the prompt style and the
answer parsing, so the evaluation asks and grades exactly as training did; --base evaluates the
untrained base model under the same settings. A run trained with tools (episodes.tool_format) is
evaluated on episodes with the same tools, --base included (the "before" figure); with --model,
`--set episodes.tool_format=python_block` gives any model the python tool. Prints greedy accuracy,
pass@k and maj@k; --out writes one JSON line per sample and the summary next to it (FILE.summary.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from groupo.commands.resolve import run_config
from groupo.config import Config, ConfigError, check_together, parse_override, set_key

HELP = "evaluate a model, an adapter or a training run on a task"
DESCRIPTION = "Greedy accuracy, pass@k and maj@k of a model or a run's final weights."


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("what to evaluate")
    src.add_argument("--model", help="built-in name, local folder, .gguf file or hub id")
    src.add_argument("--adapter", help="a trained policy folder (RUN_DIR/final) to load onto --model")
    src.add_argument("--run", metavar="RUN_DIR", help="a training run: its final weights and its config")
    src.add_argument("--base", action="store_true", help="with --run: evaluate the untrained base model")
    task = p.add_argument_group("task")
    task.add_argument("--task", help="task name or .jsonl path (default: the run's task, else arithmetic)")
    task.add_argument("--path", help="data file or folder for file tasks (task.path)")
    task.add_argument("--split", help="split to evaluate (default: the task's eval split, test)")
    task.add_argument("--limit", type=int, help="evaluate the first N problems (0 = all; default all, "
                      "or the run's task.eval_size)")
    task.add_argument("--prompt-style", choices=["plain", "answer_tag", "r1", "boxed", "python_tool", "choice"])
    task.add_argument("--few-shot", type=int)
    gen = p.add_argument_group("generation")
    gen.add_argument("--samples", type=int, default=1, help="completions per problem (k for pass@k, maj@k)")
    gen.add_argument("--temperature", type=float,
                     help="sampling temperature (default 0 = greedy for --samples 1, else 1.0)")
    gen.add_argument("--max-new-tokens", type=int, help="default: the run's, else 256")
    gen.add_argument("--batch-size", type=int, help="sequences per generation batch")
    gen.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    gen.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write per-sample records (JSONL) here")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config override, e.g. --set rewards.extract_order=[answer_tag]")


def _config(args: argparse.Namespace) -> Config:
    from groupo.config_rules import validate

    if args.run:
        cfg = run_config(args.run)
        if args.limit is None:
            args.limit = cfg.task.eval_size
    else:
        if not args.model:
            raise ConfigError("groupo eval needs --model NAME_OR_PATH or --run RUN_DIR")
        cfg = Config()
        cfg.model.name = args.model
        cfg.rollout.max_new_tokens = 256
    settings = {"task.name": args.task, "task.path": args.path, "task.eval_split": args.split,
                "task.eval_size": 0 if args.limit is None else args.limit,
                "task.prompt_style": args.prompt_style, "task.few_shot": args.few_shot,
                "rollout.max_new_tokens": args.max_new_tokens, "rollout.batch_size": args.batch_size}
    for key, value in settings.items():
        if value is not None:
            set_key(cfg, key, value, source="command line")
    for text in args.overrides:
        set_key(cfg, *parse_override(text), source="command line")
    check_together(cfg)  # the same checks as every command's (groupo.commands.resolve)
    validate(cfg)
    return cfg


def _load(args: argparse.Namespace, cfg: Config, device: str):
    from groupo.models import load_model, load_trained

    if args.run and not args.base:
        return load_trained(args.run, dtype=cfg.model.dtype, device=device)
    if args.adapter:
        return load_trained(args.adapter, base_name=cfg.model.name, dtype=cfg.model.dtype, device=device)
    return load_model(cfg.model.name, cfg.model.revision, cfg.model.dtype, device)


def run(args: argparse.Namespace) -> int:
    import torch

    from groupo.data import load_task
    from groupo.engines import EngineContext, build_engine
    from groupo.eval.evaluate import evaluate
    from groupo.judges import with_model_rewards
    from groupo.rewards import resolve_rewards
    from groupo.rollout.sampler import make_sampler, with_environment_reward

    if args.base and not args.run:
        raise ConfigError("--base needs --run RUN_DIR")
    if args.samples < 1:
        raise ConfigError("--samples must be >= 1")
    cfg = _config(args)
    if args.out:
        check_out(args.out)
    temperature = args.temperature if args.temperature is not None else (0.0 if args.samples == 1 else 1.0)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    task = load_task(cfg.task)
    problems = task.test
    reward_fns = resolve_rewards(cfg.rewards, task, cfg.rollout.max_new_tokens, sandbox=cfg.sandbox)
    t0 = time.monotonic()
    model, tokenizer = _load(args, cfg, device)
    load_s = time.monotonic() - t0
    engine = build_engine(cfg, EngineContext(model, tokenizer, amp=cfg.model.autocast))
    sampler = make_sampler(cfg, engine, tokenizer)  # a run with tools is evaluated on episodes with them
    reward_fns = with_model_rewards(with_environment_reward(reward_fns, sampler), cfg, device=device)
    what = f"{args.run} ({'base' if args.base else 'final'})" if args.run else cfg.model.name
    print(f"evaluating {what} on {task.name} [{cfg.task.eval_split}]: {len(problems)} problems, "
          f"samples={args.samples}, temperature={temperature}, max_new_tokens={cfg.rollout.max_new_tokens}",
          file=sys.stderr)

    def progress(done: int, total: int) -> None:
        print(f"  {done}/{total} prompts ({time.monotonic() - t1:.0f}s)", file=sys.stderr)

    t1 = time.monotonic()
    res = evaluate(sampler, task, problems, samples=args.samples,
                   max_new_tokens=cfg.rollout.max_new_tokens, temperature=temperature,
                   top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k, min_p=cfg.rollout.min_p,
                   repetition_penalty=cfg.rollout.repetition_penalty, batch_size=cfg.rollout.batch_size,
                   reward_fns=reward_fns,
                   seed=args.seed, progress=progress)
    summary = {"model": what, "task": task.name, "split": cfg.task.eval_split, **res.summary(),
               "samples": args.samples, "temperature": temperature,
               "max_new_tokens": cfg.rollout.max_new_tokens, "load_s": round(load_s, 1),
               "eval_s": round(time.monotonic() - t1, 1)}
    print(json.dumps(summary))  # first: a failed --out below must not lose the result
    if args.out:
        try:
            with Path(args.out).open("w", encoding="utf-8") as fh:
                for r in res.records:
                    fh.write(json.dumps(r, ensure_ascii=False) + "\n")
            Path(args.out).with_suffix(".summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        except OSError as e:
            raise ConfigError(_cannot_write(args.out, e)) from None
    return 0


def _cannot_write(out: str, e: OSError) -> str:
    return f"--out {out}: cannot write there ({e.strerror or e}); choose a writable place for --out"


def check_out(out: str) -> None:
    """Fail before the evaluation, not after it, when --out's folder cannot be written."""
    import tempfile

    folder = Path(out).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".groupo-write-test-"):
            pass
    except OSError as e:
        raise ConfigError(_cannot_write(out, e)) from None
