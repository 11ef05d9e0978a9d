"""`resolve_config`: the configuration every command acts on, resolved one way.

    None           the quickstart (groupo/quickstart.yaml): what `groupo train` with no file runs
    FILE.yaml      defaults, then the file
    RUN_DIR        the run's saved config.yaml, exactly as it trained
then --smoke's settings (a recipe shrunk to seconds), then the key=value overrides; checked key by
key, across keys, and against the registries (presets, engines, sinks) before anything loads.
"""

from __future__ import annotations

from pathlib import Path

from groupo.config import (
    Config,
    ConfigError,
    check_together,
    from_dict,
    load_config,
    parse_override,
    quickstart_config,
    read_yaml,
    set_key,
)


def split_items(items: list[str]) -> tuple[str | None, list[str]]:
    """[CONFIG.yaml | RUN_DIR] key=value ... -> (the source or None, the overrides)."""
    source, overrides = None, []
    for i, item in enumerate(items):
        if "=" in item:
            overrides.append(item)
        elif i == 0:
            source = item
        else:
            raise ConfigError(f"unexpected argument {item!r}: expected section.key=value "
                              "(only the first argument may be a config file or a run directory)")
    return source, overrides


def run_config(run_dir: str | Path) -> Config:
    """A run directory's saved configuration."""
    saved = Path(run_dir) / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"{run_dir}: no config.yaml there (is it a groupo run directory?)")
    return from_dict(read_yaml(saved))


def resolve_config(source: str | Path | None, overrides: list[str] | tuple[str, ...] = (), *,
                   smoke: bool = False) -> Config:
    """The validated configuration of `source` (None, a YAML file or a run directory), with
    --smoke's settings and then `overrides` applied."""
    from groupo.config_rules import validate

    overrides = list(overrides)
    if source is not None and Path(source).is_dir():
        if smoke:
            raise ConfigError(f"--smoke shrinks a recipe for a new run; {source} is a run directory")
        cfg = run_config(source)
        for text in overrides:
            set_key(cfg, *parse_override(text), source="command line")
        check_together(cfg)
    else:
        if smoke:
            from groupo.smoke import smoke_overrides

            overrides = smoke_overrides(None if source is None else str(source)) + overrides
        cfg = quickstart_config(overrides) if source is None else load_config(source, overrides)
    validate(cfg)
    return cfg
