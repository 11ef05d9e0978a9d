"""`groupo plan`: a config's step time and peak memory on this machine, before launch.

    groupo plan [CONFIG.yaml] [--smoke] [key=value ...] [--prompt-tokens N] [--completion-tokens N]
                [--mean-completion-tokens N] [--available-gb G] [--json]

Exit status 0 when the run fits in memory, 1 when it does not (the suggestions say which setting
to change), 2 on a bad config.
"""

from __future__ import annotations

import argparse
import json

from groupo.commands.resolve import resolve_config, split_items


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("items", nargs="*", metavar="[CONFIG.yaml] key=value",
                   help="the config to plan, as for `groupo train` (none: the quickstart)")
    p.add_argument("--smoke", action="store_true", help="plan the recipe's --smoke run")
    p.add_argument("--prompt-tokens", type=int, metavar="N",
                   help="longest prompt per batch (default: measured on the task's training prompts)")
    p.add_argument("--completion-tokens", type=int, metavar="N",
                   help="completion length (default rollout.max_new_tokens: the worst case, an upper bound)")
    p.add_argument("--mean-completion-tokens", type=int, metavar="N",
                   help="the completions' mean length, which a padding-free update (train.packing) runs "
                        "(default: --completion-tokens, equal lengths: where packing saves nothing)")
    p.add_argument("--available-gb", type=float, metavar="G",
                   help="plan for this much memory (default: what this machine has free: host RAM, or the GPU's)")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")


HELP = "predict a config's step time and peak memory on this machine"
DESCRIPTION = (__doc__.split("\n\n")[0] + ". The passes run on fake tensors (no weights loaded); this machine's op "
               "costs are measured in a few seconds. Exit status 1 when the run would not fit, with the settings "
               "that would.")


def run(args: argparse.Namespace) -> int:
    from groupo.plan.build import make_plan

    path, overrides = split_items(args.items)
    cfg = resolve_config(path, overrides, smoke=args.smoke)
    available = int(args.available_gb * 2**30) if args.available_gb else None
    plan = make_plan(cfg, args.prompt_tokens, args.completion_tokens, available=available,
                     mean_completion_tokens=args.mean_completion_tokens)
    print(json.dumps(as_dict(plan)) if args.json else describe(plan, path or "the quickstart"))
    return 0 if plan.fits else 1


def as_dict(plan) -> dict:
    m = plan.memory
    return {"device": plan.device, "autocast": plan.amp, "prompt_tokens": plan.prompt_tokens,
            "completion_tokens": plan.completion_tokens, "update_completion_tokens": plan.update_completion_tokens,
            "completions_per_step": plan.rows,
            "step_s": plan.step_s, "gen_s": plan.gen_s, "reference_s": plan.reference_s, "update_s": plan.update_s,
            "peak_bytes": m.peak, "available_bytes": plan.available, "fits": plan.fits,
            "memory": {k: getattr(m, k) for k in ("baseline", "weights", "training_state", "generation", "update",
                                                   "engine")},
            "suggestions": [{"override": o, "peak_bytes": b} for o, b in plan.suggestions], "notes": plan.notes}


def describe(plan, name: str) -> str:
    from groupo.plan.estimate import fmt_s, gib
    from groupo.plan.machine import machine_name

    m = plan.memory
    gen = "not predicted (vLLM schedules its own batches)" if plan.gen_s is None else fmt_s(plan.gen_s)
    lines = [
        f"plan for {name} on {plan.device} ({machine_name(plan.device)}), autocast {plan.amp}",
        f"  assumes  prompts of {plan.prompt_tokens} tokens (the longest per batch, from the task's prompts), "
        f"completions of {plan.completion_tokens} tokens"
        + (f" ({plan.update_completion_tokens} on average in the padding-free update)"
           if plan.update_completion_tokens != plan.completion_tokens else ""),
        f"  step     {fmt_s(plan.step_s)}: generation {gen}, reference {fmt_s(plan.reference_s)}, "
        f"update {fmt_s(plan.update_s)} ({plan.rows} completions)",
        f"  memory   {gib(m.peak)} at its peak, of {gib(plan.available)} available: "
        + ("fits" if plan.fits else "does NOT fit"),
        f"           process {gib(m.baseline)} + weights {gib(m.weights)} + AdamW "
        f"{gib(m.training_state)}" + (f" + vLLM {gib(m.engine)}" if m.engine else "")
        + f" + the larger of generation {gib(m.generation)} and update {gib(m.update)}",
    ]
    if not plan.fits:
        if plan.suggestions:
            lines.append("  to fit, change one of:")
            lines += [f"    {o:40s} peak {gib(b)}" for o, b in plan.suggestions]
        else:
            lines.append("  no single setting tried (micro-batch, gradient checkpointing, rollout batch, LoRA) fits; "
                         "shorten rollout.max_new_tokens or use a smaller model")
    lines += [f"  note: {n}" for n in plan.notes]
    if plan.completion_tokens and plan.gen_s is not None:
        lines.append("  (an upper bound when completions stop before the limit: generation runs until a batch's "
                     "longest completion ends, and each micro-batch is as wide as its longest)")
    return "\n".join(lines)
