"""A checkpoint's `manifest.json`: every file's size and SHA-256, written last.

The manifest is written after every other file of the checkpoint has been written and flushed,
and before the folder is renamed into place, so a checkpoint whose files no longer match it
(truncated by a full disk or a copy cut short, a file deleted, bits flipped) is found before any
of it is loaded, and the loader can fall back to an older one naming the damaged file.

It guards against damage, not against an attacker: whoever can rewrite a file can rewrite the
manifest too. Safety against hostile files comes from never unpickling them (see checkpoint.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

NAME = "manifest.json"
FORMAT = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != NAME)


def write_manifest(folder: Path) -> Path:
    """Record the size and SHA-256 of every file under `folder` in `folder/manifest.json`."""
    files = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in _files(folder)}
    out = folder / NAME
    out.write_text(json.dumps({"format": FORMAT, "files": files}, indent=1) + "\n", encoding="utf-8")
    return out


def has_manifest(folder: Path) -> bool:
    return (folder / NAME).exists()


def check_manifest(folder: Path) -> str | None:
    """None when every file listed in the manifest is there with its size and checksum, else
    what is wrong, naming the file (the first problem found; sizes are compared before hashing)."""
    path = folder / NAME
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        entries = [(name, int(e["bytes"]), str(e["sha256"])) for name, e in files.items()]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{path} is unreadable or damaged ({type(e).__name__})"
    for name, size, _ in entries:
        f = folder / name
        if not f.is_file():
            return f"{f} is missing"
        if f.stat().st_size != size:
            return f"{f} has {f.stat().st_size} bytes, the manifest says {size} (truncated or damaged)"
    for name, _, digest in entries:
        if _sha256(folder / name) != digest:
            return f"{folder / name} does not match its checksum in {NAME} (damaged)"
    return None
