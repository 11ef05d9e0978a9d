"""The Python examples of the docs run: the functional API snippet (README.md and
docs/algorithms.md, on small tensors of the shapes it names) and the task-builder example of
docs/tasks.md (trained for real, two smoke steps on the tiny model)."""

import re
from pathlib import Path

import pytest
import torch
from tiny import make_tiny

import groupo.trainer.loop as loop
from groupo.config import set_key
from groupo.data import load_task
from groupo.models import load_policy_from
from groupo.smoke import SMOKE

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def test_functional_api_snippet_runs_as_shown():
    blocks = [b for p in (ROOT / "README.md", ROOT / "docs" / "algorithms.md") for b in _python_blocks(p)
              if "policy_loss(" in b]
    assert len(blocks) == 2 and blocks[0] == blocks[1]  # one example, shown twice
    P, G, T = 2, 4, 5
    torch.manual_seed(0)
    logp_BT = torch.randn(P * G, T).clamp(max=0).requires_grad_()
    ns = {"rewards_PG": torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]]), "logp_BT": logp_BT,
          "old_logp_BT": logp_BT.detach() - 0.1, "mask_BT": torch.ones(P * G, T)}  # every ratio exp(0.1)
    exec(blocks[0], ns)
    assert ns["adv_PG"].shape == (P, G) and logp_BT.grad is not None and torch.isfinite(logp_BT.grad).all()
    assert set(ns["out"].metrics) >= {"clip_low_frac", "clip_high_frac", "ratio_mean", "ratio_min", "ratio_max"}
    assert float(ns["out"].metrics["ratio_mean"]) == pytest.approx(torch.exp(torch.tensor(0.1)).item())


def test_task_builder_example_trains(tmp_path, monkeypatch):
    (block,) = [b for b in _python_blocks(ROOT / "docs" / "tasks.md") if 'TASKS["capitals"]' in b]
    calls, real_train = [], loop.train

    def train_smoke(cfg, run_dir):  # the example's own call, shrunk as --smoke shrinks recipes
        for key, value in SMOKE.items():
            if key != "model.name":
                set_key(cfg, key, value)
        set_key(cfg, "run.progress", "plain")
        calls.append(real_train(cfg, tmp_path / run_dir, policy=load_policy_from(*make_tiny(), cfg.lora, beta=0.0)))

    monkeypatch.setattr(loop, "train", train_smoke)
    ns: dict = {}
    exec(block, ns)
    cfg = ns["cfg"]
    task = load_task(cfg.task)
    assert (task.name, len(task.train), [p.answer for p in task.test]) == ("capitals", 3, ["Lima"])
    assert calls and calls[0]["steps"] == 2
    rows = (tmp_path / "runs" / "capitals" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2
