"""Tables printed by the CLI."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

from groupo.algorithms.presets import preset_rows


def print_presets(console: Console | None = None) -> None:
    """Every preset as a column, every setting as a row (fits a terminal), then each paper."""
    rows = preset_rows()
    table = Table(title="groupo presets", caption="override any setting with algorithm.<setting>=VALUE",
                  box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    table.add_column("setting", style="bold", no_wrap=True)
    for row in rows:
        table.add_column(str(row["preset"]), overflow="fold")
    for key in rows[0]:
        if key not in ("preset", "paper"):
            table.add_row(key, *["-" if row[key] is None else str(row[key]) for row in rows])
    console = console or Console()
    console.print(table)
    for row in rows:
        console.print(f"  [bold]{row['preset']}[/]: {row['paper']}")
