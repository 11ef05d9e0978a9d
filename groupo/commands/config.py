"""`groupo config [CONFIG.yaml | RUN_DIR] [--smoke] [key=value ...]`"""

from __future__ import annotations

import argparse

from groupo.commands.resolve import resolve_config, split_items
from groupo.commands.train import SMOKE_HELP

HELP = "print the resolved configuration"
DESCRIPTION = ("Load the YAML file (none: the quickstart, as `groupo train` does; a run directory: its saved "
               "config), the overrides, validate them, and print the resolved config: what `train` would run "
               "and save to the run directory.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("items", nargs="*", metavar="[CONFIG.yaml|RUN_DIR] key=value")
    p.add_argument("--smoke", action="store_true", help=SMOKE_HELP)


def run(args: argparse.Namespace) -> int:
    from groupo.config import dump_yaml

    print(dump_yaml(resolve_config(*split_items(args.items), smoke=args.smoke)), end="")
    return 0
