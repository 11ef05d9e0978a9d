"""Tables printed by the CLI, sized for an 80-column terminal."""

from __future__ import annotations

from dataclasses import fields

from rich import box
from rich.console import Console
from rich.table import Table

from groupo.algorithms.presets import PAPERS, PRESETS, LossSettings, get_preset

_DEFAULTS = LossSettings()
_SETTINGS = [f.name for f in fields(LossSettings)]


def _value(v: object) -> str:
    return "-" if v is None else str(v)


def _arxiv(paper: str) -> str:
    return paper.rsplit("arXiv:", 1)[-1] if "arXiv:" in paper else paper


def print_presets(console: Console | None = None) -> None:
    """Every preset as a row: the settings it changes from the defaults (listed below), its paper."""
    console = console or Console()
    table = Table(title="groupo presets", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, title_justify="left")
    table.add_column("preset", style="bold", no_wrap=True)
    table.add_column("settings that differ from the defaults")
    table.add_column("arXiv", no_wrap=True)
    for name, s in PRESETS.items():
        changed = [f"{k}={_value(getattr(s, k))}" for k in _SETTINGS if getattr(s, k) != getattr(_DEFAULTS, k)]
        table.add_row(name, " ".join(changed) or "(the defaults)", _arxiv(PAPERS[name]))
    console.print(table)
    console.print("defaults: " + " ".join(f"{k}={_value(getattr(_DEFAULTS, k))}" for k in _SETTINGS))
    console.print("[dim]groupo presets NAME: one preset in full. Override any setting with "
                  "algorithm.<setting>=VALUE.[/]")


def print_preset(name: str, console: Console | None = None) -> None:
    """Every setting of one preset, marking those it changes from the defaults. Unknown name: ValueError."""
    s = get_preset(name)
    console = console or Console()
    table = Table(title=f"preset {name}: {PAPERS[name]}", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False,
                  title_justify="left")
    table.add_column("setting", no_wrap=True)
    table.add_column("value", no_wrap=True)
    table.add_column("default", no_wrap=True, style="dim")
    for k in _SETTINGS:
        v, d = getattr(s, k), getattr(_DEFAULTS, k)
        table.add_row(k, f"[bold]{_value(v)}[/]" if v != d else _value(v), "" if v == d else _value(d))
    console.print(table)
    console.print(f"[dim]algorithm.preset={name}; override any setting with algorithm.<setting>=VALUE.[/]")
