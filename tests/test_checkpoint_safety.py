"""Checkpoints never unpickle, carry a manifest, fall back past damage, and survive failed saves."""

import errno
import hashlib
import json
import logging
import os
import pickle
from pathlib import Path

import pytest
import torch
from faults import read_only, small_disk

from groupo.trainer import checkpoint as ck
from groupo.trainer.checkpoint import CheckpointError, TrainerState, load_latest, save_checkpoint
from groupo.trainer.dcp_safe import load_metadata
from groupo.trainer.manifest import write_manifest
from groupo.trainer.update import build_optimizer


def _trained(seed: int, size: int = 4):
    """(model, optimizer, scheduler) after one AdamW step on seeded data: state worth saving."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(size, size)
    opt, sched = build_optimizer(model, 1e-2, 0.0, [0.9, 0.99], 0, 10, "constant")
    model(torch.randn(3, size)).square().sum().backward()
    opt.step()
    sched.step()
    return model, opt, sched


def _fresh(size: int = 4):
    model = torch.nn.Linear(size, size)
    opt, sched = build_optimizer(model, 1e-2, 0.0, [0.9, 0.99], 0, 10, "constant")
    return model, opt, sched


def _save(run: Path, step: int, seed: int | None = None, size: int = 4, keep: int = 5):
    model, opt, sched = _trained(seed if seed is not None else step, size)
    save_checkpoint(run, model, opt, sched, TrainerState(step, 2 * step, 1.5 * step), keep=keep)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_manifest_lists_every_file_with_its_size_and_sha256(tmp_path):
    _save(tmp_path, 1)
    ckpt = tmp_path / "checkpoints" / "step-1"
    manifest = json.loads((ckpt / "manifest.json").read_text())
    names = {"trainable.safetensors", "optimizer.pt", "state.json"}
    assert set(manifest["files"]) == names
    for name in names:
        data = (ckpt / name).read_bytes()
        assert manifest["files"][name] == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_load_latest_restores_the_newest_checkpoint(tmp_path):
    _save(tmp_path, 1)
    saved = _save(tmp_path, 2)
    model, opt, sched = _fresh()
    got = load_latest(tmp_path, model, opt, sched)
    assert got.path.name == "step-2" and got.skipped == []
    assert (got.state.step, got.state.data_position, got.state.elapsed_s) == (2, 4, 3.0)
    for k, v in _weights(model).items():
        assert torch.equal(v, saved[k])
    assert load_latest(tmp_path / "empty", *_fresh()) is None  # no checkpoint at all: a fresh start


class _RunsCode:
    """Unpickling this creates `path`: what a crafted checkpoint would do with a shell command."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


@pytest.mark.parametrize("with_manifest", [True, False])
def test_optimizer_pt_that_would_run_code_is_refused_and_nothing_runs(tmp_path, with_manifest):
    _save(tmp_path, 1)
    ckpt = tmp_path / "checkpoints" / "step-1"
    marker = tmp_path / "pwned"
    real = torch.load(ckpt / "optimizer.pt", weights_only=True)
    torch.save({**real, "extra": _RunsCode(marker)}, ckpt / "optimizer.pt")
    assert not marker.exists()
    (ckpt / "manifest.json").unlink()
    if with_manifest:  # whoever can write the run directory can rewrite the manifest too
        write_manifest(ckpt)
    with pytest.raises(CheckpointError, match=r"refused to load .*optimizer\.pt.*could run code") as e:
        load_latest(tmp_path, *_fresh())
    assert "\n" not in str(e.value)
    assert not marker.exists()


def test_dcp_metadata_is_read_without_unpickling_other_objects(tmp_path):
    import warnings

    import torch.distributed.checkpoint as dcp

    model, opt, _ = _trained(0)
    from torch.distributed.checkpoint.state_dict import get_state_dict
    msd, osd = get_state_dict(model, opt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp_path / "dcp"))
    meta = load_metadata((tmp_path / "dcp" / ".metadata").read_bytes())  # what dcp.save writes: accepted
    assert meta.state_dict_metadata["model.weight"].size == torch.Size([4, 4])
    marker = tmp_path / "pwned"
    with pytest.raises(pickle.UnpicklingError, match="open is not a type"):
        load_metadata(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(pickle.UnpicklingError, match="is not a type"):  # a module's imports are not reachable
        load_metadata(_stack_global(b"torch.distributed.checkpoint.metadata", b"os.system"))
    assert not marker.exists()


def _stack_global(module: bytes, name: bytes) -> bytes:
    """A protocol-4 pickle of the global `module`.`name` (dotted names are looked up attribute by attribute)."""
    return b"\x80\x04\x8c" + bytes([len(module)]) + module + b"\x8c" + bytes([len(name)]) + name + b"\x93."


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


DAMAGE = {
    "truncated trainable.safetensors": ("trainable.safetensors", _truncate),
    "missing optimizer.pt": ("optimizer.pt", Path.unlink),
    "truncated optimizer.pt": ("optimizer.pt", _truncate),
    "truncated state.json": ("state.json", _truncate),
    "missing state.json": ("state.json", Path.unlink),
}


@pytest.mark.parametrize("with_manifest", [True, False], ids=["manifest", "pre-manifest"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, damage, with_manifest):
    step1 = _save(tmp_path, 1)
    _save(tmp_path, 2)
    name, hurt = DAMAGE[damage]
    ckpt2 = tmp_path / "checkpoints" / "step-2"
    if not with_manifest:  # written before manifests existed: best-effort checks only
        for c in ("step-1", "step-2"):
            (tmp_path / "checkpoints" / c / "manifest.json").unlink()
    hurt(ckpt2 / name)
    model, opt, sched = _fresh()
    with caplog.at_level(logging.WARNING, logger="groupo"):
        got = load_latest(tmp_path, model, opt, sched)
    assert got.path.name == "step-1" and got.state.step == 1
    assert len(got.skipped) == 1 and str(ckpt2 / name) in got.skipped[0]
    assert any(str(ckpt2 / name) in r.getMessage() for r in caplog.records)
    for k, v in _weights(model).items():
        assert torch.equal(v, step1[k])


def test_flipped_byte_in_weights_is_caught_by_the_checksum(tmp_path):
    step1 = _save(tmp_path, 1)
    _save(tmp_path, 2)
    f = tmp_path / "checkpoints" / "step-2" / "trainable.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x01  # inside the tensor data: the file still parses
    f.write_bytes(bytes(data))
    model, opt, sched = _fresh()
    got = load_latest(tmp_path, model, opt, sched)
    assert got.path.name == "step-1" and "checksum" in got.skipped[0]
    assert torch.equal(model.weight, step1["weight"])


def test_every_checkpoint_damaged_is_one_clear_error(tmp_path):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    for c in ("step-1", "step-2"):
        _truncate(tmp_path / "checkpoints" / c / "trainable.safetensors")
    with pytest.raises(CheckpointError, match=r"no intact checkpoint .*step-2.*step-1") as e:
        load_latest(tmp_path, *_fresh())
    assert "\n" not in str(e.value)


def _assert_step1_intact(run: Path, step1: dict) -> None:
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-1"]  # no .tmp-* left
    model, opt, sched = _fresh(step1["weight"].shape[0])
    got = load_latest(run, model, opt, sched)
    assert got.path.name == "step-1" and got.skipped == []
    assert torch.equal(model.weight, step1["weight"])


@pytest.mark.parametrize("where", ["save_file", "torch.save", "torch.save short write"])
def test_full_disk_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where):
    step1 = _save(tmp_path, 1)

    def full(*args, **kwargs):
        if where == "torch.save":  # what torch's writer raises on ENOSPC
            raise RuntimeError("[enforce fail at inline_container.cc:672] . basic_ios::clear: iostream error")
        if where == "torch.save short write":  # and, measured on a full tmpfs, this
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4160 vs 4054")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ck, "save_file" if where == "save_file" else "torch", _Patched(torch, full)
                        if where.startswith("torch.save") else full)
    with pytest.raises(CheckpointError, match=r"step-2 .*\(No space left on device\): the disk is full.*step-1, "
                                              r"is intact") as e:
        _save(tmp_path, 2)
    assert "\n" not in str(e.value) and "enforce fail" not in str(e.value)
    monkeypatch.undo()
    _assert_step1_intact(tmp_path, step1)


class _Patched:
    """`torch` with `save` replaced."""

    def __init__(self, real, save):
        self._real, self.save = real, save

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_real_full_disk_keeps_the_previous_checkpoint(tmp_path):
    with small_disk(tmp_path / "small", "600k") as run:
        step1 = _save(run, 1, size=192)  # ~0.44 MB a checkpoint: the second does not fit beside it
        with pytest.raises(CheckpointError, match="disk is full") as e:
            _save(run, 2, size=192, keep=1)
        assert "\n" not in str(e.value)
        _assert_step1_intact(run, step1)


def test_read_only_run_directory_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    saved = {}
    with read_only(tmp_path / "ro", lambda run: saved.update(_save(run, 1))) as run:
        with pytest.raises(CheckpointError, match=r"step-2 .*read-only .*step-1, is intact") as e:
            _save(run, 2)
        assert "\n" not in str(e.value)
        _assert_step1_intact(run, saved)


def test_saving_the_same_step_again_replaces_it(tmp_path):
    _save(tmp_path, 1, seed=1)
    again = _save(tmp_path, 1, seed=7)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-1"]
    model, opt, sched = _fresh()
    load_latest(tmp_path, model, opt, sched)
    assert torch.equal(model.weight, again["weight"])


def test_the_manifest_is_written_last_before_the_rename(tmp_path, monkeypatch):
    seen = {}

    def spy(folder):
        seen["folder"] = folder.name
        seen["files"] = {p.name: p.stat().st_size for p in folder.iterdir()}
        return write_manifest(folder)

    monkeypatch.setattr(ck, "write_manifest", spy)
    _save(tmp_path, 3)
    final = tmp_path / "checkpoints" / "step-3"
    assert seen["folder"] == ".tmp-step-3"  # not yet renamed into place
    assert seen["files"] == {p.name: p.stat().st_size for p in final.iterdir() if p.name != "manifest.json"}


def test_resume_through_the_training_loop_refuses_a_crafted_optimizer_pt(tmp_path):
    """The probe's attack end to end: a real run, a crafted optimizer.pt (manifest rewritten), --resume."""
    from tiny import make_tiny, save_tiny

    from groupo.config import load_config
    from groupo.models import load_policy_from
    from groupo.trainer.loop import train

    run = tmp_path / "run"
    overrides = {"model.name": str(save_tiny(tmp_path / "model")), "model.autocast": "none", "lora.rank": 4,
                 "task.name": "arithmetic", "task.difficulty": 1, "task.eval_size": 2, "rollout.group_size": 2,
                 "rollout.max_new_tokens": 4, "train.prompts_per_step": 2, "train.steps": 2, "train.save_every": 1,
                 "train.eval_every": 0, "run.progress": "off", "run.dir": str(run), "run.tensorboard": "false"}
    cfg = load_config(None, [f"{k}={v}" for k, v in overrides.items()])
    model, tok = make_tiny()
    train(cfg, run, policy=load_policy_from(model, tok, cfg.lora, beta=0.0))
    ckpt = run / "checkpoints" / "step-2"
    marker = tmp_path / "pwned"
    torch.save({**torch.load(ckpt / "optimizer.pt", weights_only=True), "x": _RunsCode(marker)}, ckpt / "optimizer.pt")
    (ckpt / "manifest.json").unlink()
    write_manifest(ckpt)
    model, tok = make_tiny()
    with pytest.raises(CheckpointError, match="refused to load"):
        train(cfg, run, resume=True, policy=load_policy_from(model, tok, cfg.lora, beta=0.0))
    assert not marker.exists()
