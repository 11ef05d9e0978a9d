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
    p.add_argument("--chat-template-kwargs", metavar="JSON",
                   help='arguments to the chat template, a JSON object, e.g. \'{"enable_thinking": false}\' '
                        "(default: a run's rollout.chat_template_kwargs, --base included; else none)")


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    if args.max_new_tokens < 1 or args.temperature < 0:
        raise ConfigError("--max-new-tokens must be >= 1 and --temperature >= 0")
    template_kwargs = _template_kwargs(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, label = load_chat_model(args.model, args.base, device)
    sampler = _tools_of(args.model, model, tokenizer, template_kwargs)
    if sampler is not None:
        label += f", with its tools ({sampler.fmt.name}: {', '.join(sampler.toolbox.tools)})"
    interactive = sys.stdin.isatty()
    if interactive:
        Console(stderr=True).print(f"[bold]groupo chat[/]: {label}. /exit or Ctrl-D quits, /reset forgets.")
    chat_loop(model, tokenizer, sys.stdin, sys.stdout, system=args.system, max_new_tokens=args.max_new_tokens,
              temperature=args.temperature, prompt="> " if interactive else "", sampler=sampler,
              template_kwargs=template_kwargs)
    return 0


def _template_kwargs(args: argparse.Namespace) -> dict:
    """--chat-template-kwargs, else the run's rollout.chat_template_kwargs (a model by name: none)."""
    import json
    from pathlib import Path

    if args.chat_template_kwargs is not None:
        try:
            kwargs = json.loads(args.chat_template_kwargs)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--chat-template-kwargs is not JSON ({e}); give an object, e.g. "
                              '\'{"enable_thinking": false}\'') from None
        if not isinstance(kwargs, dict):
            raise ConfigError(f"--chat-template-kwargs must be a JSON object, not {args.chat_template_kwargs}")
        return kwargs
    if not (Path(args.model) / "config.yaml").is_file():
        return {}
    from groupo.commands.resolve import run_config

    return dict(run_config(args.model).rollout.chat_template_kwargs)


def _tools_of(source: str, model, tokenizer, template_kwargs: dict):
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
    cfg.rollout.chat_template_kwargs = template_kwargs
    return make_sampler(cfg, build_engine(cfg, EngineContext(model, tokenizer, amp=cfg.model.autocast)), tokenizer)
