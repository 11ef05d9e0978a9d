"""Atomic checkpoints: a run killed at any moment resumes from the newest complete one.

Layout of `RUN/checkpoints/step-N/`:
    trainable.safetensors   the trained parameters (LoRA adapter weights, or all weights)
    optimizer.pt            AdamW and LR-scheduler state
    state.json              step, data position, RNG states, wall time spent so far

With several processes (torchrun) the weights and the optimizer state are sharded under FSDP2,
so they are written with torch.distributed.checkpoint (DCP) instead: every rank writes its shards
into `dcp/`, and `state.json` holds every rank's RNG state and the world size:
    dcp/                    DCP files: trainable parameters and AdamW state, one shard per rank
    scheduler.pt            LR-scheduler state
    state.json              as above, with "world_size" and one RNG state per rank
Such a checkpoint resumes at the same world size only (a different one is a clear error): DCP
could reshard the weights, but each rank's sampling seed and data share depend on its rank, so
the run would not continue as it began.

A checkpoint is written into `checkpoints/.tmp-step-N/`, flushed to disk, then renamed to
`step-N` in one `os.rename`: a crash while writing leaves only a `.tmp-*` folder, which is
ignored and removed by the next save, so every `step-*` folder is complete. With several
processes the run directory must be on a filesystem every rank sees (one machine, or a shared
filesystem across machines).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from groupo.config import ConfigError
from groupo.distributed import Dist, barrier, gather_objects


@dataclass
class TrainerState:
    step: int                      # optimizer steps (batches) completed
    data_position: int             # prompts consumed from the training stream
    elapsed_s: float               # training wall time spent before this checkpoint
    rng: dict[str, Any] | None = None


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state().tolist()}


def _set_rng_state(rng: dict[str, Any]) -> None:
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(rng["torch"], dtype=torch.uint8))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer, scheduler, state: TrainerState,
                    keep: int = 2, world: Dist = Dist()) -> Path:
    """Write `checkpoints/step-N` atomically. With several processes every rank must call it."""
    ckpt_root = run_dir / "checkpoints"
    final = ckpt_root / f"step-{state.step}"
    tmp = ckpt_root / f".tmp-step-{state.step}"
    if world.is_main:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        for stale in ckpt_root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    payload = {"step": state.step, "data_position": state.data_position, "elapsed_s": state.elapsed_s}
    if world.enabled:
        barrier(world)
        _save_sharded(tmp, model, optimizer, scheduler, payload, world)
        if not world.is_main:
            barrier(world)  # rank 0 renames and prunes
            return final
    else:
        save_file(trainable_state(model), tmp / "trainable.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                   tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({**payload, "rng": _rng_state()}, default=_json_default))
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. Ctrl-C right after a periodic save)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(ckpt_root)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    barrier(world)
    return final


def _save_sharded(tmp: Path, model, optimizer, scheduler, payload: dict, world: Dist) -> None:
    """Every rank: its DCP shards; rank 0: the scheduler and state.json with every rank's RNG."""
    import torch.distributed.checkpoint as dcp

    model_sd, optim_sd = _state_dicts(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / "dcp"))
    rngs = gather_objects(_rng_state(), world)
    if world.is_main:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "state.json").write_text(json.dumps({**payload, "world_size": world.world_size, "rng": rngs},
                                                   default=_json_default))


def _state_dicts(model, optimizer):
    """(trainable parameters, optimizer state) keyed by parameter name, sharded as the model is."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    if isinstance(o, np.integer):
        return int(o)
    raise TypeError(f"cannot serialise {type(o)}")


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler, world: Dist = Dist()) -> TrainerState:
    """Restore weights, optimizer, scheduler and RNG from `path`; return the trainer state."""
    raw = json.loads((path / "state.json").read_text())
    saved_world = raw.get("world_size", 1)
    if saved_world != world.world_size:
        raise ConfigError(f"{path} was written by {saved_world} process(es) and this run has "
                          f"{world.world_size}: resume with the same number (torchrun --nproc_per_node "
                          "times the number of machines)")
    if world.enabled:
        return _load_sharded(path, model, optimizer, scheduler, raw, world)
    weights = load_file(path / "trainable.safetensors")
    params = dict(model.named_parameters())
    missing = sorted(set(weights) - set(params))
    if missing:
        raise ValueError(f"{path}: checkpoint has parameters the model lacks, e.g. {missing[:3]}")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    opt = torch.load(path / "optimizer.pt", weights_only=False)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    _set_rng_state(raw["rng"])
    return TrainerState(step=raw["step"], data_position=raw["data_position"], elapsed_s=raw["elapsed_s"],
                        rng=raw["rng"])


def _load_sharded(path: Path, model, optimizer, scheduler, raw: dict, world: Dist) -> TrainerState:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    model_sd, optim_sd = _state_dicts(model, optimizer)  # templates: DCP loads into them in place
    dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path / "dcp"))
    # strict=False: the frozen base weights are not in the checkpoint (they come from the model);
    # every trainable one is, or dcp.load above has already failed naming it.
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
                   options=StateDictOptions(ignore_frozen_params=True, strict=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng = raw["rng"][world.rank]
    _set_rng_state(rng)
    return TrainerState(step=raw["step"], data_position=raw["data_position"], elapsed_s=raw["elapsed_s"], rng=rng)
