"""`groupo presets [NAME]`"""

from __future__ import annotations

import argparse

from groupo.config import ConfigError

HELP = "list the algorithm presets, or every setting of one"
DESCRIPTION = "Every preset (a row per paper) and the settings it changes; with NAME, every setting of that preset."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", metavar="NAME",
                   help="a preset: grpo, dr_grpo, dapo, gspo, gspo_token, cispo, sapo")


def run(args: argparse.Namespace) -> int:
    from groupo.algorithms.presets import PRESETS
    from groupo.report.tables import print_preset, print_presets

    if args.name is None:
        print_presets()
    elif args.name in PRESETS:
        print_preset(args.name)
    else:
        raise ConfigError(f"unknown preset {args.name!r}; valid presets: {', '.join(PRESETS)}")
    return 0
