"""`groupo serve [CONFIG.yaml] [key=value ...] [--host H] [--port P] [--dry-run] [-- VLLM_ARGS ...]`"""

from __future__ import annotations

import argparse

from groupo.commands.resolve import resolve_config, split_items

HELP = "start a vLLM server for rollout.vllm.url (vLLM's OpenAI-compatible API)"
DESCRIPTION = ("Start vLLM's OpenAI-compatible server for the config's model, with runtime LoRA loading and the "
               "log-prob settings the trainer needs; arguments after `--` go to vLLM unchanged "
               "(e.g. -- --tensor-parallel-size 2).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("items", nargs="*", metavar="[CONFIG.yaml] key=value")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--dry-run", action="store_true", help="print the command line and exit")
    p.set_defaults(vllm_args=[])


def run(args: argparse.Namespace) -> int:
    from groupo.engines.serve import run_serve

    return run_serve(resolve_config(*split_items(args.items)), host=args.host, port=args.port,
                     extra=args.vllm_args, dry_run=args.dry_run)
