"""Atomic checkpoints: a run killed at any moment resumes from the newest complete one.

Layout of `RUN/checkpoints/step-N/`:
    trainable.safetensors   the trained parameters (LoRA adapter weights, or all weights)
    optimizer.pt            AdamW and LR-scheduler state
    state.json              step, data position, RNG states, wall time spent so far

A checkpoint is written into `checkpoints/.tmp-step-N/`, flushed to disk, then renamed to
`step-N` in one `os.rename`: a crash while writing leaves only a `.tmp-*` folder, which is
ignored and removed by the next save, so every `step-*` folder is complete.
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
                    keep: int = 2) -> Path:
    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    for stale in ckpt_root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = ckpt_root / f"step-{state.step}"
    tmp = ckpt_root / f".tmp-step-{state.step}"
    tmp.mkdir()
    save_file(trainable_state(model), tmp / "trainable.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    payload = {"step": state.step, "data_position": state.data_position, "elapsed_s": state.elapsed_s,
               "rng": _rng_state()}
    (tmp / "state.json").write_text(json.dumps(payload, default=_json_default))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. Ctrl-C right after a periodic save)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(ckpt_root)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


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


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler) -> TrainerState:
    """Restore weights, optimizer, scheduler and RNG from `path`; return the trainer state."""
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
    raw = json.loads((path / "state.json").read_text())
    _set_rng_state(raw["rng"])
    return TrainerState(step=raw["step"], data_position=raw["data_position"], elapsed_s=raw["elapsed_s"],
                        rng=raw["rng"])
