"""Atomic, verified checkpoints: a run killed at any moment resumes from the newest intact one.

Layout of `RUN/checkpoints/step-N/`:
    trainable.safetensors   the trained parameters (LoRA adapter weights, or all weights)
    optimizer.pt            AdamW and LR-scheduler state (tensors and plain values only)
    state.json              step, data position, RNG states, wall time spent so far, adaptive entropy
                            control's coefficient
    manifest.json           every other file's size and SHA-256 (groupo/trainer/manifest.py)

With several processes (torchrun) the weights and the optimizer state are sharded under FSDP2,
so they are written with torch.distributed.checkpoint (DCP) instead: every rank writes its shards
into `dcp/`, and `state.json` holds every rank's RNG state and the world size:
    dcp/                    DCP files: trainable parameters and AdamW state, one shard per rank
    scheduler.pt            LR-scheduler state
    state.json              as above, with "world_size" and one RNG state per rank
    manifest.json           as above, covering dcp/ too
Such a checkpoint resumes at the same world size only (a different one is a clear error): DCP
could reshard the weights, but each rank's sampling seed and data share depend on its rank, so
the run would not continue as it began.

A checkpoint is written into `checkpoints/.tmp-step-N/`, flushed to disk, its manifest written
last, then renamed to `step-N` in one `os.rename`: a crash while writing leaves only a `.tmp-*`
folder, which is ignored and removed by the next save. A save that fails (full disk, read-only
folder) removes its `.tmp-*` folder and raises CheckpointError; the checkpoints already saved
are untouched. With several processes the run directory must be on a filesystem every rank sees.

Loading never unpickles (ckpt_files.py): `.pt` files are read with `torch.load(weights_only=True)`
(tensors, numbers, strings, lists, tuples, dicts: exactly what optimizer and scheduler states
hold) and DCP's pickled `.metadata` with an unpickler that builds DCP's own classes only
(dcp_safe.py); a file holding anything else is refused. `load_latest` verifies the newest checkpoint against its
manifest and falls back to the newest intact one, warning with the damaged file's name.
Checkpoints written before manifests existed are accepted with best-effort checks: every file is
there and parses completely (JSON, safetensors header against the file size, the .pt archive);
damage inside tensor data goes unnoticed in them.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from groupo.config import ConfigError
from groupo.distributed import Dist, barrier, broadcast_object, gather_objects
from groupo.trainer.ckpt_files import CheckpointError, Damaged, check_sharded, load_pt, read_single, read_state_json
from groupo.trainer.manifest import write_manifest

log = logging.getLogger(__name__)


@dataclass
class TrainerState:
    step: int                      # optimizer steps (batches) completed
    data_position: int             # prompts consumed from the training stream
    elapsed_s: float               # training wall time spent before this checkpoint
    rng: dict[str, Any] | None = None
    entropy_control: dict[str, float] | None = None  # adaptive entropy control's state (trainer.update)


@dataclass
class Resumed:
    state: TrainerState
    path: Path                     # the checkpoint loaded
    skipped: list[str] = field(default_factory=list)  # why each newer one was not (damaged file named)


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
    """Write `checkpoints/step-N` atomically. With several processes every rank must call it.

    Raises CheckpointError when the disk is full or the folder is not writable; what was saved
    before stays as it was and the partial folder is removed."""
    ckpt_root = run_dir / "checkpoints"
    final = ckpt_root / f"step-{state.step}"
    tmp = ckpt_root / f".tmp-step-{state.step}"
    try:
        if world.is_main:
            ckpt_root.mkdir(parents=True, exist_ok=True)
            for stale in [*ckpt_root.glob(".tmp-*"), *ckpt_root.glob(".old-*")]:  # left by a killed save
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        payload = {"step": state.step, "data_position": state.data_position, "elapsed_s": state.elapsed_s,
                   "entropy_control": state.entropy_control}
        if world.enabled:
            barrier(world)
            _save_sharded(tmp, model, optimizer, scheduler, payload, world)
            if not world.is_main:
                barrier(world)  # rank 0 verifies, renames and prunes
                return final
        else:
            save_file(trainable_state(model), tmp / "trainable.safetensors")
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                       tmp / "optimizer.pt")
            (tmp / "state.json").write_text(json.dumps({**payload, "rng": _rng_state()}, default=_json_default))
        _fsync_files(tmp)
        _fsync_file(write_manifest(tmp))  # last: a manifest vouches for files already on disk
        _fsync_dir(tmp)
        _replace(tmp, final)
        _fsync_dir(ckpt_root)
    except (OSError, RuntimeError, SafetensorError) as e:  # torch.save reports ENOSPC as a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(_save_failure(ckpt_root, state.step, e, list_checkpoints(run_dir))) from None
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    barrier(world)
    return final


def _fsync_file(f: Path) -> None:
    with open(f, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_files(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            _fsync_file(f)


def _replace(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`; an existing `final` (the same step saved again, e.g. Ctrl-C right
    after a periodic save) is moved aside first and removed only once the new one is in place."""
    aside = final.with_name(f".old-{final.name}")
    if not final.exists():
        os.rename(tmp, final)
        return
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(final, aside)
    try:
        os.rename(tmp, final)
    except OSError:
        os.rename(aside, final)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _save_failure(ckpt_root: Path, step: int, e: Exception, saved: list[Path]) -> str:
    reason = e.strerror if isinstance(e, OSError) and e.strerror else (str(e).strip().splitlines() or
                                                                        [type(e).__name__])[0]
    # safetensors and torch.save report OS errors in their own types: the errno is only in the text.
    # torch's writer reports a full disk as a short write: "[enforce fail at inline_container.cc:672]
    # . unexpected pos 4160 vs 4054".
    code = getattr(e, "errno", None)
    full = code in (errno.ENOSPC, errno.EDQUOT) or any(
        t in reason for t in ("os error 28", "iostream error", "unexpected pos"))
    if full:
        reason = os.strerror(errno.ENOSPC)  # what happened, not the writer's wording of it
    locked = code in (errno.EACCES, errno.EPERM, errno.EROFS) or any(
        t in reason for t in ("os error 13", "os error 30", "os error 1)"))
    hint = ("the disk is full: free space there" if full else
            "the folder is read-only or not yours: make it writable or choose another run.dir" if locked else
            "check the disk and the folder's permissions")
    kept = f"the newest saved checkpoint, {saved[-1].name}, is intact" if saved else "no checkpoint was saved before"
    return (f"could not save checkpoint step-{step} in {ckpt_root} ({reason}): {hint}; {kept}, and "
            "`groupo train --resume` continues from it")


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
    """Checkpoints renamed into place (complete when written), oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def _check_world(path: Path, raw: dict[str, Any], world: Dist) -> None:
    saved_world = raw.get("world_size", 1)
    if saved_world != world.world_size:
        raise ConfigError(f"{path} was written by {saved_world} process(es) and this run has "
                          f"{world.world_size}: resume with the same number (torchrun --nproc_per_node "
                          "times the number of machines)")


def _read(path: Path, world: Dist) -> tuple:
    """Everything rank 0 can check before anything is applied: (state.json, weights, optimizer.pt)
    of a one-process checkpoint; a DCP one's state.json (its shards are read by every rank)."""
    if world.enabled:
        return check_sharded(path), None, None
    return read_single(path)


def load_latest(run_dir: Path, model: torch.nn.Module, optimizer, scheduler, world: Dist = Dist()) -> Resumed | None:
    """Load the newest intact checkpoint of `run_dir`; None when there is none at all.

    Each newer damaged one is skipped with a warning naming the damaged file. CheckpointError when
    every checkpoint is damaged, or when a file holds objects that loading would have to unpickle
    (then no checkpoint of that run directory is trusted)."""
    skipped: list[str] = []
    chosen, read = None, None
    if world.is_main:
        for path in reversed(list_checkpoints(run_dir)):
            try:
                chosen, read = path, _read(path, world)
                break
            except Damaged as e:
                chosen = None
                skipped.append(str(e))
                log.warning("checkpoint %s skipped: %s", path.name, e)
    chosen, skipped = broadcast_object((chosen, skipped), world)  # every rank loads the same one
    if chosen is None:
        if skipped:
            raise CheckpointError(f"no intact checkpoint in {run_dir / 'checkpoints'}: " + "; ".join(skipped)
                                  + ". Start a new run (another run.dir), or restore the files from a copy")
        return None
    if world.enabled and not world.is_main:
        read = (read_state_json(chosen), None, None)
    state = _apply(chosen, read, model, optimizer, scheduler, world)
    if skipped:
        log.warning("resuming from %s, the newest intact checkpoint", chosen.name)
    return Resumed(state, chosen, skipped)


def _apply(path: Path, read: tuple, model, optimizer, scheduler, world: Dist) -> TrainerState:
    raw, weights, opt = read
    _check_world(path, raw, world)
    if world.enabled:
        return _load_sharded(path, model, optimizer, scheduler, raw, world)
    params = dict(model.named_parameters())
    missing = sorted(set(weights) - set(params))
    if missing:
        raise CheckpointError(f"{path}: the checkpoint has parameters the model lacks, e.g. {missing[:3]}: "
                              "resume with the run's own model and lora settings")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    _set_rng_state(raw["rng"])
    return TrainerState(step=raw["step"], data_position=raw["data_position"], elapsed_s=raw["elapsed_s"],
                        rng=raw["rng"], entropy_control=raw.get("entropy_control"))


def _load_sharded(path: Path, model, optimizer, scheduler, raw: dict, world: Dist) -> TrainerState:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    from groupo.trainer.dcp_safe import SafeReader

    model_sd, optim_sd = _state_dicts(model, optimizer)  # templates: DCP loads into them in place
    dcp.load({"model": model_sd, "optim": optim_sd}, storage_reader=SafeReader(str(path / "dcp")))
    # strict=False: the frozen base weights are not in the checkpoint (they come from the model);
    # every trainable one is, or dcp.load above has already failed naming it.
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
                   options=StateDictOptions(ignore_frozen_params=True, strict=False))
    try:
        scheduler.load_state_dict(load_pt(path / "scheduler.pt"))
    except Damaged as e:
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {e}") from None
    rng = raw["rng"][world.rank]
    _set_rng_state(rng)
    return TrainerState(step=raw["step"], data_position=raw["data_position"], elapsed_s=raw["elapsed_s"], rng=rng,
                        entropy_control=raw.get("entropy_control"))
