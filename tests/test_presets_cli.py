"""`groupo presets` fits an 80-column terminal; `groupo presets NAME` shows that preset's settings."""

import re
from dataclasses import fields

import pytest

from groupo.algorithms.presets import PRESETS, LossSettings
from groupo.cli import main


@pytest.fixture(autouse=True)
def _eighty_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.delenv("FORCE_COLOR", raising=False)


def _lines(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_presets_table_fits_80_columns_one_row_per_preset(capsys):
    assert main(["presets"]) == 0
    lines = _lines(capsys)
    assert lines and all(len(line) <= 80 for line in lines)
    rows = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in PRESETS}
    assert list(rows) == list(PRESETS)
    # each row starts with the preset's own first change from the defaults, whole, and its arXiv id
    assert "beta=0.04" in rows["grpo"] and "2402.03300" in rows["grpo"]
    assert "eps_high=0.28" in rows["dapo"] and "2503.14476" in rows["dapo"]
    assert "adv_scale=none" in rows["dr_grpo"] and "ratio_level=sequence " in rows["gspo"]


def test_presets_dapo_shows_every_setting(capsys):
    assert main(["presets", "dapo"]) == 0
    lines = _lines(capsys)
    assert all(len(line) <= 80 for line in lines)
    assert "DAPO, Yu et al. 2025, arXiv:2503.14476" in lines[0]
    shown = {}
    for line in lines:
        m = re.match(r"^\s*(\w+)\s+(\S+)(?:\s+(\S+))?\s*$", line)
        if m and m.group(1) in {f.name for f in fields(LossSettings)}:
            shown[m.group(1)] = (m.group(2), m.group(3))
    # by hand from groupo/algorithms/presets.py: clip-higher, token mean, no KL, dynamic sampling
    assert shown["eps_low"] == ("0.2", None)
    assert shown["eps_high"] == ("0.28", "0.2")                        # value, then the default it changes
    assert shown["aggregation"] == ("token_mean", "seq_mean_token_mean")
    assert shown["beta"] == ("0.0", None)
    assert shown["dynamic_sampling"] == ("True", "False")
    assert shown["ratio_level"] == ("token", None) and shown["loss_type"] == ("clip", None)
    assert shown["dual_clip"] == ("-", None) and shown["kl_estimator"] == ("k3", None)
    assert len(shown) == len(fields(LossSettings))                   # every setting


def test_unknown_preset_is_a_clear_error(capsys):
    assert main(["presets", "dapoo"]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'dapoo'" in err and "dapo" in err and "gspo_token" in err
