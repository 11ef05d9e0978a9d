"""The installed versions of groupo's runtime dependencies, checked against the ranges it supports.

One source of truth: the ranges are `[project].dependencies` in pyproject.toml, read back from the
metadata pip recorded when it installed groupo (`importlib.metadata.requires("groupo")`), so a
range changed there is the range checked here. Run at start-up, an older transformers already in
the environment is one line naming the package, the version found and the range, instead of an
ImportError or AttributeError deep inside a training step.

A source checkout used through PYTHONPATH without being installed has no metadata: nothing is
checked then. GROUPO_SKIP_VERSION_CHECK=1 skips the check for someone trying a version outside the
tested ranges on purpose.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import metadata

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

SKIP_ENV = "GROUPO_SKIP_VERSION_CHECK"


class VersionError(RuntimeError):
    """An installed dependency is outside the range groupo supports (or missing)."""


def declared(dist: str = "groupo") -> list[Requirement]:
    """The runtime requirements `dist` declares (extras left out); [] when it is not installed."""
    try:
        lines = metadata.requires(dist) or []
    except metadata.PackageNotFoundError:
        return []
    reqs = [Requirement(line) for line in lines]
    # Extras (vllm, trl, wandb ...) carry the marker `extra == "..."`: false for a plain install.
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]


def installed(name: str) -> str | None:
    """The installed version of distribution `name`, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def within(found: str, req: Requirement) -> bool:
    """Whether version `found` satisfies `req`'s range.

    Compared on the release number alone: a CUDA build (2.11.0+cu130) or a nightly or vendor build
    (2.11.0a0+git1234, as NVIDIA's containers ship torch) is the release it was cut from. A version
    string that is not PEP 440 cannot be compared and passes.
    """
    try:
        release = Version(found).base_version
    except InvalidVersion:
        return True
    return req.specifier.contains(release, prereleases=True)


def problems(reqs: list[Requirement], version_of: Callable[[str], str | None] | None = None) -> list[str]:
    """One message per requirement that the environment does not meet, naming the fix.

    version_of: name -> installed version or None (default: `installed`, looked up at call time).
    """
    version_of = version_of or installed
    out = []
    for req in reqs:
        wanted = f"{req.name}{req.specifier}"
        found = version_of(req.name)
        if found is None:
            out.append(f"{req.name} is not installed; groupo needs {wanted}: pip install '{wanted}'")
        elif not within(found, req):
            out.append(f"{req.name} {found} is installed; groupo supports {wanted}: pip install '{wanted}'")
    return out


def check_versions(reqs: list[Requirement] | None = None,
                   version_of: Callable[[str], str | None] | None = None) -> None:
    """Raise VersionError (one line, every problem) when an installed dependency is out of range.

    reqs: the requirements to check (default: groupo's own, from its installed metadata).
    """
    if os.environ.get(SKIP_ENV, "") not in ("", "0"):
        return
    found = problems(declared() if reqs is None else reqs, version_of)
    if found:
        raise VersionError("; ".join(found) + f" (or set {SKIP_ENV}=1 to run outside the tested ranges)")
