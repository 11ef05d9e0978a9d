"""`groupo report RUN_DIR [RUN_DIR ...]`: write the HTML report of finished, stopped or running runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from groupo.config import ConfigError
from groupo.report.html import write_page


def run(args: argparse.Namespace) -> int:
    dirs = [Path(r) for r in args.runs]
    for d in dirs:
        if not (d / "metrics.jsonl").is_file():
            raise ConfigError(f"{d}: no metrics.jsonl there (is it a groupo run directory?)")
    out = Path(args.out) if args.out else (dirs[0] / "report.html" if len(dirs) == 1 else Path("report.html"))
    print(write_page(dirs, out))
    return 0
