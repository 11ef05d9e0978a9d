"""The built-in SmolLM2 model through two real training steps (slow: loads the real model)."""

import json

import pytest

from groupo.config import quickstart_config
from groupo.trainer.loop import train


@pytest.mark.slow
def test_builtin_model_two_steps(tmp_path):
    cfg = quickstart_config(["train.steps=2", "task.eval_size=4", "train.prompts_per_step=2",
                             "rollout.group_size=4", "rollout.max_new_tokens=16", f"run.dir={tmp_path}"])
    summary = train(cfg, tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["optim/grad_norm"] is not None and r["loss/total"] == r["loss/total"] for r in rows)  # finite, not NaN
    assert summary["steps"] == 2
    assert (tmp_path / "final" / "adapter_model.safetensors").exists()
