"""`groupo train`: resolve the config and the run directory, then hand over to the loop."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from groupo.config import ConfigError, from_dict, load_config, quickstart_config


def resolve_run_dir(cfg) -> Path:
    if cfg.run.dir:
        return Path(cfg.run.dir)
    return Path("runs") / f"{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def train_from_cli(path: str | None, overrides: list[str], resume: str | None = None) -> int:
    from groupo.distributed import barrier, broadcast_object, setup, shutdown
    from groupo.trainer.loop import train  # heavy imports only once the config is valid

    if resume:
        run_dir = Path(resume)
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume {run_dir}: no config.yaml there (is it a groupo run directory?)")
        if path is not None:
            raise ConfigError("--resume takes the run's own config.yaml; pass no config file")
        cfg = from_dict(yaml.safe_load(saved.read_text(encoding="utf-8")))
        if overrides:
            raise ConfigError("--resume continues the run exactly as configured; overrides are not allowed")
    else:
        cfg = load_config(path, overrides) if path is not None else quickstart_config(overrides)
    world, _ = setup(cfg.run.device, cfg.train.backend)  # under torchrun: join the process group
    if not resume:
        run_dir = broadcast_object(resolve_run_dir(cfg), world)  # rank 0's timestamp for every rank
        if (run_dir / "metrics.jsonl").exists():
            raise ConfigError(f"run.dir {run_dir} already holds a run; continue it with "
                              f"`groupo train --resume {run_dir}` or choose another run.dir")
        barrier(world)  # every rank has checked before rank 0 writes there
        cfg.run.dir = str(run_dir)
    try:
        train(cfg, run_dir, resume=bool(resume))
    except KeyboardInterrupt:
        return 130
    shutdown(world)
    return 0
