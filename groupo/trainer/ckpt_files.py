"""Reading a checkpoint's files without unpickling, and telling a damaged checkpoint by its file.

Every reader raises `Damaged` naming the file (missing, truncated, not matching the manifest):
the loader then tries an older checkpoint. A file that holds objects other than tensors and plain
values raises CheckpointError at once: groupo never writes one, so the run directory was altered,
and no older checkpoint of it is trusted either.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from groupo.trainer.manifest import check_manifest, has_manifest


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or none in the run directory can be loaded."""


class Damaged(Exception):
    """One checkpoint is unusable; the message names the file."""


def load_pt(path: Path) -> Any:
    """A .pt file's tensors and plain values; never unpickles anything else (which could run code)."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise Damaged(f"{path} is missing") from None
    except pickle.UnpicklingError as e:
        if str(e).startswith("Weights only load failed"):  # an object weights_only does not build
            raise CheckpointError(
                f"refused to load {path}: it holds objects other than tensors and plain values, and "
                "unpickling them could run code; a file groupo wrote never does, so the run directory was "
                "altered: do not resume it") from None
        raise Damaged(f"{path} is damaged ({type(e).__name__})") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise Damaged(f"{path} is truncated or damaged ({type(e).__name__})") from None


def check_dcp_metadata(f: Path) -> None:
    """Read DCP's pickled `.metadata` with the unpickler that builds DCP's own classes only."""
    from groupo.trainer.dcp_safe import load_metadata

    try:
        load_metadata(f.read_bytes())
    except FileNotFoundError:
        raise Damaged(f"{f} is missing") from None
    except pickle.UnpicklingError as e:
        if "is not a type" in str(e):
            raise CheckpointError(f"refused to load {f}: {e}, and unpickling it could run code; a file groupo "
                                  "wrote never holds it, so the run directory was altered: do not resume it") from None
        raise Damaged(f"{f} is truncated or damaged (UnpicklingError)") from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise Damaged(f"{f} is truncated or damaged ({type(e).__name__})") from None


def check_files(path: Path) -> None:
    """Damaged when the checkpoint's files do not match its manifest (none to check without one)."""
    if has_manifest(path) and (problem := check_manifest(path)):
        raise Damaged(problem)


def check_sharded(path: Path) -> dict[str, Any]:
    """state.json of a DCP checkpoint whose manifest, state.json, scheduler.pt and DCP metadata pass."""
    check_files(path)
    raw = read_state_json(path)
    load_pt(path / "scheduler.pt")
    check_dcp_metadata(path / "dcp" / ".metadata")
    return raw


def read_state_json(path: Path) -> dict[str, Any]:
    f = path / "state.json"
    try:
        raw = json.loads(f.read_text(encoding="utf-8"))
        if not all(k in raw for k in ("step", "data_position", "elapsed_s", "rng")):
            raise ValueError("keys missing")
        return raw
    except FileNotFoundError:
        raise Damaged(f"{f} is missing") from None
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as e:
        raise Damaged(f"{f} is truncated or damaged ({type(e).__name__})") from None


def read_single(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """(state.json, weights, optimizer.pt) of a one-process checkpoint, all read before any is applied."""
    check_files(path)
    raw = read_state_json(path)
    if raw.get("world_size", 1) != 1:
        return raw, {}, {}
    f = path / "trainable.safetensors"
    try:
        weights = load_file(f)
    except FileNotFoundError:
        raise Damaged(f"{f} is missing") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise Damaged(f"{f} is truncated or damaged ({type(e).__name__})") from None
    opt = load_pt(path / "optimizer.pt")
    if not (isinstance(opt, dict) and "optimizer" in opt and "scheduler" in opt):
        raise Damaged(f"{path / 'optimizer.pt'} lacks the optimizer or scheduler state")
    return raw, weights, opt
