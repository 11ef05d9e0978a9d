"""The start-up version check: installed versions against the declared ranges, one line per problem."""

from __future__ import annotations

import pytest
from packaging.requirements import Requirement

from groupo import versions
from groupo.versions import VersionError, check_versions, declared, problems, within

REQS = [Requirement("transformers>=5.17.0"), Requirement("torch>=2.11"), Requirement("numpy>=1.26.4,<3")]


def lookup(table):
    return lambda name: table.get(name)


@pytest.mark.parametrize(("found", "ok"), [
    ("5.17.0", True), ("5.25.0", True), ("5.16.1", False), ("4.57.1", False),
    ("5.17.0.dev0", True),   # a source build of 5.17 is 5.17
    ("5.17.0rc1", True),
])
def test_within_a_lower_bound(found, ok):
    assert within(found, Requirement("transformers>=5.17.0")) is ok


@pytest.mark.parametrize(("found", "ok"), [
    ("2.11.0+cu130", True),      # a CUDA build is its release
    ("2.11.0a0+git1e2f3a4", True),  # NVIDIA containers' torch: the release it was cut from
    ("2.10.1+cpu", False), ("2.13.0+cpu", True), ("not-a-version", True),
])
def test_within_local_and_vendor_builds(found, ok):
    assert within(found, Requirement("torch>=2.11")) is ok


def test_within_an_upper_bound():
    req = Requirement("numpy>=1.26.4,<3")
    assert [within(v, req) for v in ("1.26.3", "1.26.4", "2.4.6", "3.0.0")] == [False, True, True, False]


def test_everything_in_range_raises_nothing():
    check_versions(REQS, lookup({"transformers": "5.23.0", "torch": "2.13.0+cpu", "numpy": "2.4.6"}))


def test_one_line_names_package_version_found_and_range():
    with pytest.raises(VersionError) as e:
        check_versions(REQS, lookup({"transformers": "5.16.1", "torch": "2.13.0+cpu", "numpy": "2.4.6"}))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("transformers 5.16.1 is installed; groupo supports transformers>=5.17.0: "
                          "pip install 'transformers>=5.17.0'")
    assert "torch" not in msg and "numpy" not in msg
    assert "GROUPO_SKIP_VERSION_CHECK=1" in msg


def test_every_problem_in_the_same_line_and_a_missing_package_named():
    found = problems(REQS, lookup({"transformers": "4.57.1", "numpy": "3.1.0"}))
    assert found == [
        "transformers 4.57.1 is installed; groupo supports transformers>=5.17.0: pip install 'transformers>=5.17.0'",
        "torch is not installed; groupo needs torch>=2.11: pip install 'torch>=2.11'",
        "numpy 3.1.0 is installed; groupo supports numpy<3,>=1.26.4: pip install 'numpy<3,>=1.26.4'",
    ]


def test_the_skip_variable_skips(monkeypatch):
    monkeypatch.setenv("GROUPO_SKIP_VERSION_CHECK", "1")
    check_versions(REQS, lookup({}))
    monkeypatch.setenv("GROUPO_SKIP_VERSION_CHECK", "0")
    with pytest.raises(VersionError):
        check_versions(REQS, lookup({}))


def test_declared_reads_the_metadata_and_leaves_extras_out(monkeypatch):
    lines = ["torch>=2.11", "transformers>=5.17.0", 'wandb; extra == "wandb"', 'pytest==9.2.0; extra == "dev"',
             'tomli>=2; python_version < "3.0"']
    monkeypatch.setattr(versions.metadata, "requires", lambda dist: lines if dist == "groupo" else None)
    assert [str(r) for r in declared()] == ["torch>=2.11", "transformers>=5.17.0"]


def test_no_metadata_means_nothing_to_check(monkeypatch):
    def missing(dist):
        raise versions.metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(versions.metadata, "requires", missing)
    assert declared() == []
    check_versions(version_of=lookup({}))  # nothing declared, nothing missing


def test_installed_finds_distributions_under_any_spelling():
    # PyYAML's distribution is "PyYAML"; requirements spell it pyyaml
    assert installed_same("pyyaml", "PyYAML") and installed_same("math-verify", "math_verify")
    assert versions.installed("no-such-distribution-groupo") is None


def installed_same(a: str, b: str) -> bool:
    return versions.installed(a) is not None and versions.installed(a) == versions.installed(b)


# --- what pyproject.toml declares ------------------------------------------------------------


def _pyproject_requirements() -> list[Requirement]:
    import tomllib
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    return [Requirement(d) for d in tomllib.loads(text)["project"]["dependencies"]]


def test_runtime_dependencies_are_ranges_holding_the_gpu_machines_versions():
    reqs = {r.name: r for r in _pyproject_requirements()}
    assert not [str(r) for r in reqs.values() if any(s.operator in ("==", "===") for s in r.specifier)]
    assert all(any(s.operator == ">=" for s in r.specifier) for r in reqs.values())  # the matrix tests each floor
    assert "accelerate" not in reqs  # nothing imports it (peft brings it)
    # what the GPU check machine has, and what CI runs
    for name, version in [("torch", "2.11.0+cu130"), ("transformers", "5.17.0"), ("torch", "2.13.0+cpu")]:
        assert within(version, reqs[name]), (name, version, str(reqs[name]))


# --- a dependency that is there but cannot be imported ---------------------------------------


def _failing_import(monkeypatch, missing: str):
    import builtins

    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "gguf":
            raise ImportError(f"No module named {missing!r}", name=missing)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)


@pytest.mark.parametrize(("missing", "hint"), [
    ("gguf", "loading m.gguf needs the gguf package: pip install gguf"),
    # gguf 0.10 imports sentencepiece without declaring it
    ("sentencepiece", "loading m.gguf: the gguf package fails to import (No module named 'sentencepiece'): "
                      "pip install sentencepiece, or pip install 'gguf>=0.11'"),
])
def test_gguf_import_failures_name_the_install_command(monkeypatch, tmp_path, missing, hint):
    from groupo.models.gguf import load_gguf

    _failing_import(monkeypatch, missing)
    with pytest.raises(ImportError) as e:
        load_gguf(tmp_path / "m.gguf")
    assert str(e.value) == hint


def test_defaults_read_the_metadata_and_the_installed_versions_at_call_time(monkeypatch):
    monkeypatch.setattr(versions, "declared", lambda dist="groupo": [Requirement("transformers>=5.17.0")])
    monkeypatch.setattr(versions, "installed", lambda name: {"transformers": "5.16.1"}.get(name))
    with pytest.raises(VersionError) as e:
        check_versions()
    assert str(e.value).startswith("transformers 5.16.1 is installed; groupo supports transformers>=5.17.0")


def test_the_command_line_refuses_an_unsupported_version_in_one_line(monkeypatch, capsys):
    from packaging.requirements import Requirement

    from groupo import versions
    from groupo.cli import main

    monkeypatch.delenv("GROUPO_SKIP_VERSION_CHECK", raising=False)
    monkeypatch.setattr(versions, "declared", lambda: [Requirement("transformers>=5.17.0")])
    monkeypatch.setattr(versions, "installed", lambda name: "5.16.1")
    assert main(["presets"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("groupo: error: transformers 5.16.1 is installed; groupo supports transformers>=5.17.0")
    assert err.count("\n") == 1
