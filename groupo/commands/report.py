"""`groupo report RUN_DIR [RUN_DIR ...]`: write the HTML report of finished, stopped or running runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from groupo.config import ConfigError
from groupo.report.html import write_page

HELP = "write the interactive HTML report of one run, or several overlaid"
DESCRIPTION = ("One self-contained report.html (opens offline): curves, alarms, evaluations, samples and config. "
               "Several runs are overlaid on the same plots.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", metavar="FILE",
                   help="default: RUN_DIR/report.html for one run, report.html here for several")


def run(args: argparse.Namespace) -> int:
    dirs = [Path(r) for r in args.runs]
    for d in dirs:
        if not (d / "metrics.jsonl").is_file():
            raise ConfigError(f"{d}: no metrics.jsonl there (is it a groupo run directory?)")
    out = Path(args.out) if args.out else (dirs[0] / "report.html" if len(dirs) == 1 else Path("report.html"))
    print(write_page(dirs, out))
    return 0
