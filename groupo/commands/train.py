"""`groupo train [CONFIG.yaml] [--smoke] [key=value ...] | --resume RUN_DIR`"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

from groupo.commands.resolve import resolve_config, run_config, split_items
from groupo.config import Config, ConfigError

HELP = "train a policy (no arguments: the CPU quickstart)"
DESCRIPTION = ("Train with the given YAML config and key=value overrides. Without a config this runs the "
               "quickstart: the built-in SmolLM2-135M-Instruct with LoRA on the built-in arithmetic task.")
SMOKE_HELP = ("shrink the recipe to a run of seconds on a CPU: the built-in model, 2 steps, tiny groups and "
              "lengths, bundled sample data (groupo/smoke.py); applied before the key=value overrides")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("items", nargs="*", metavar="[CONFIG.yaml] key=value",
                   help="optional YAML config, then dotted overrides such as train.steps=100")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest complete checkpoint")
    p.add_argument("--smoke", action="store_true", help=SMOKE_HELP)


def default_run_dir(cfg: Config) -> Path:
    if cfg.run.dir:
        return Path(cfg.run.dir)
    return Path("runs") / f"{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def holds_run(run_dir: Path) -> bool:
    """Whether `run_dir` holds a run that trained: a checkpoint or a logged step. A start that
    failed before its first step (a bad model path, an interrupt while loading) leaves at most an
    empty metrics.jsonl, and the same run.dir may be used again."""
    metrics = run_dir / "metrics.jsonl"
    logged = metrics.is_file() and metrics.stat().st_size > 0
    return logged or any((run_dir / "checkpoints").glob("step-*"))


def run(args: argparse.Namespace) -> int:
    source, overrides = split_items(args.items)
    if args.resume:
        if args.smoke:
            raise ConfigError("--resume continues the run as configured; --smoke applies to new runs only")
        if source is not None:
            raise ConfigError("--resume takes the run's own config.yaml; pass no config file")
        if overrides:
            raise ConfigError("--resume continues the run exactly as configured; overrides are not allowed")
        cfg = run_config(args.resume)
    else:
        if args.smoke:
            from groupo.smoke import announce, smoke_overrides

            announce(source, smoke_overrides(source), overrides)
        cfg = resolve_config(source, overrides, smoke=args.smoke)
    return start(cfg, Path(args.resume) if args.resume else None)


def start(cfg: Config, resume: Path | None) -> int:
    """Join the process group (under torchrun), settle the run directory, hand over to the loop."""
    from groupo.distributed import barrier, broadcast_object, setup, shutdown
    from groupo.trainer.lock import run_lock
    from groupo.trainer.loop import train  # heavy imports only once the config is valid

    world, _ = setup(cfg.run.device, cfg.train.backend)
    run_dir = resume if resume is not None else broadcast_object(default_run_dir(cfg), world)  # rank 0's timestamp
    # Rank 0 holds the run directory's lock while the run lasts: a second trainer is refused with the
    # holder's PID and host; the kernel drops the lock of a killed process, so --resume is never blocked.
    with run_lock(run_dir) if world.is_main else contextlib.nullcontext():
        if resume is None:
            if holds_run(run_dir):
                raise ConfigError(f"run.dir {run_dir} already holds a run; continue it with "
                                  f"`groupo train --resume {run_dir}` or choose another run.dir")
            barrier(world)  # every rank has checked before rank 0 writes there
            cfg.run.dir = str(run_dir)
        try:
            train(cfg, run_dir, resume=resume is not None)
        except KeyboardInterrupt:
            return 130
    shutdown(world)
    return 0
