"""`groupo chat RUN_DIR|MODEL [--base]` (the work: groupo.chat)"""

from __future__ import annotations

import argparse
import sys

from groupo import chat
from groupo.chat import chat_loop, load_chat_model
from groupo.config import ConfigError

HELP = "talk to a trained policy (or any model) in the terminal"
DESCRIPTION = "\n\n".join(chat.__doc__.split("\n\n")[:2])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="RUN_DIR|MODEL", help="a training run, or a built-in name, folder, .gguf, hub id")
    p.add_argument("--base", action="store_true", help="with a run: its untrained base model")
    p.add_argument("--system", help="system prompt (default: none)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    if args.max_new_tokens < 1 or args.temperature < 0:
        raise ConfigError("--max-new-tokens must be >= 1 and --temperature >= 0")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, label = load_chat_model(args.model, args.base, device)
    sampler = _tools_of(args.model, model, tokenizer)
    if sampler is not None:
        label += f", with its tools ({sampler.fmt.name}: {', '.join(sampler.toolbox.tools)})"
    interactive = sys.stdin.isatty()
    if interactive:
        Console(stderr=True).print(f"[bold]groupo chat[/]: {label}. /exit or Ctrl-D quits, /reset forgets.")
    chat_loop(model, tokenizer, sys.stdin, sys.stdout, system=args.system, max_new_tokens=args.max_new_tokens,
              temperature=args.temperature, prompt="> " if interactive else "", sampler=sampler)
    return 0


def _tools_of(source: str, model, tokenizer):
    """The episode sampler of a run trained with tools (episodes.tool_format), else None."""
    from pathlib import Path

    if not (Path(source) / "config.yaml").is_file():
        return None
    from groupo.commands.resolve import run_config
    from groupo.engines import EngineContext, build_engine
    from groupo.rollout.sampler import make_sampler

    cfg = run_config(source)
    if not cfg.episodes.tool_format:
        return None
    cfg.rollout.engine = "hf"  # one conversation: the in-process engine on the loaded weights
    return make_sampler(cfg, build_engine(cfg, EngineContext(model, tokenizer, amp=cfg.model.autocast)), tokenizer)
