"""rewards.judge against an OpenAI-compatible server (a stand-in in this process, tests/fake_judge.py)
and in this process on groupo's engine: scores, identical requests asked once, time limits,
retries, unreachable servers and garbage replies that never stop a step, group mode, the record
a resumed run replays, and an API key that ends up nowhere but the request header."""

import json
import os
import time
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from fake_judge import FakeJudge, free_port, verdict
from test_trainer import _overrides
from tiny import save_tiny

from groupo.config import ConfigError, load_config
from groupo.judges import build_judge, model_rewards
from groupo.judges.client import ChatClient
from groupo.judges.judge import Judge, LocalBackend, Record, RemoteBackend
from groupo.rewards import score
from groupo.rewards.judging import TEMPLATES, parse_rule
from groupo.rewards.trl_compat import RewardLog, RewardState
from groupo.trainer.loop import train
from groupo.types import Completion

PROMPT = [{"role": "user", "content": "What is 3 + 4?"}]
TEXTS = ["7", "It is 7.", "3 + 4 = 7, so 7", "7"]  # the last repeats the first
SECRET = "sk-test-SECRET-b7e1c9d2"


@pytest.fixture
def server(request):
    fake = FakeJudge(getattr(request, "param", "ok"))
    yield fake
    fake.close()


def _judge(url: str, *, group=False, timeout_s=5.0, retries=0, key=None, record=None, max_concurrency=8):
    client = ChatClient(url, api_key=key, timeout_s=timeout_s)
    backend = RemoteBackend(client, "", max_tokens=32, temperature=0.0, retries=retries,
                            max_concurrency=max_concurrency, backoff_s=0.01)
    return Judge(backend, template=TEMPLATES["rank" if group else "quality"], rule=parse_rule("number[0,10]"),
                 group=group, record=record)


def _score(judge, texts=TEXTS, prompts=None, step=None):
    state = RewardState(step, 10) if step is not None else None
    log = RewardLog()
    _, per_fn = score({"judge": (judge, 1.0)}, prompts or [PROMPT] * len(texts), texts,
                      [{"answer": "7"}] * len(texts), trainer_state=state, log=log)
    return per_fn["judge"], defaultdict(float, log.counters["judge"])


def test_scores_come_from_the_replies_and_identical_requests_are_asked_once(server):
    scores, counts = _score(_judge(server.url))
    assert scores == pytest.approx([verdict(t) / 10 for t in TEXTS])
    assert len(server.requests) == 3 and all(r["path"] == "/v1/chat/completions" for r in server.requests)
    assert server.requests[0]["body"]["model"] == "fake-judge"  # the server's first model, asked at /v1/models
    assert (counts["requests"], counts["cached"], counts["failures"], counts["unparsed"]) == (3, 1, 0, 0)
    assert (counts["prompt_tokens"], counts["completion_tokens"]) == (300, 30)


@pytest.mark.parametrize("server", ["hang"], indirect=True)
def test_a_server_that_hangs_costs_its_time_limit_not_the_run(server):
    start = time.monotonic()
    scores, counts = _score(_judge(server.url, timeout_s=0.5, retries=1))
    assert time.monotonic() - start < 2.9  # two tries of 0.5 s, in parallel, well before the server's 3 s
    assert scores == [None] * 4 and counts["failures"] == 3


@pytest.mark.parametrize("server", ["garbage"], indirect=True)
def test_garbage_is_retried_then_counted(server):
    scores, counts = _score(_judge(server.url, retries=2), texts=["7"])
    assert scores == [None] and counts["failures"] == 1 and len(server.requests) == 3


@pytest.mark.parametrize("server", ["flaky"], indirect=True)
def test_a_500_is_retried_after_a_backoff(server):
    scores, counts = _score(_judge(server.url, retries=1), texts=["7", "8 is wrong"])
    assert scores == pytest.approx([verdict("7") / 10, verdict("8 is wrong") / 10])
    assert counts["failures"] == 0 and len(server.requests) == 4


def test_an_unreachable_server_fails_fast_and_the_step_goes_on(caplog):
    start = time.monotonic()
    scores, counts = _score(_judge(f"http://127.0.0.1:{free_port()}", retries=3))
    assert scores == [None] * 4 and counts["failures"] == 3
    assert time.monotonic() - start < 2  # no retries, no backoff, against a refused connection
    assert "judge (http://127.0.0.1" in caplog.text and "unreachable" in caplog.text


@pytest.mark.parametrize("server", ["chatty"], indirect=True)
def test_a_reply_without_a_verdict_scores_none_and_is_counted(server):
    scores, counts = _score(_judge(server.url), texts=["7", "8"])
    assert scores == [None, None] and (counts["replies"], counts["unparsed"], counts["failures"]) == (2, 2, 0)


@pytest.mark.parametrize("server", ["group"], indirect=True)
def test_group_mode_asks_once_per_prompt_group(server):
    other = [{"role": "user", "content": "Say hi."}]
    prompts = [PROMPT, PROMPT, other, PROMPT, other]
    texts = ["7", "seven", "hi", "It is 7.", "hello there"]
    scores, counts = _score(_judge(server.url, group=True), texts=texts, prompts=prompts)
    assert scores == pytest.approx([verdict(t) / 10 for t in texts])
    assert counts["requests"] == 2 and len(server.requests) == 2
    asked = sorted(r["body"]["messages"][1]["content"].count("<response-") for r in server.requests)
    assert asked == [2, 3]  # each group's responses in one request


def test_the_record_replays_a_step_a_resumed_run_repeats(tmp_path):
    random_server, ok_server = FakeJudge("random"), FakeJudge("ok")
    try:
        record = Record(tmp_path / "judge" / "replies-rank0.jsonl")
        killed = _judge(random_server.url, record=record)
        first, _ = _score(killed, step=3)
        _score(killed, texts=["other"], step=4)
        # a resumed run (a new judge, the same record) repeats step 3 against a judge that answers otherwise
        resumed = _judge(ok_server.url, record=Record(record.path))
        again, counts = _score(resumed, step=3)
        assert again == first and counts["cached"] == 4 and ok_server.requests == []
        fresh, _ = _score(resumed, step=5)
        assert fresh == pytest.approx([verdict(t) / 10 for t in TEXTS]) and len(ok_server.requests) == 3
        # evaluation's calls (step 0 of 0) are neither cached across calls nor recorded
        _score(resumed)
        assert len(ok_server.requests) == 6
        steps = {json.loads(line)["step"] for line in record.path.read_text().splitlines()}
        assert steps == {3, 4, 5}
        assert Record(record.path).load(4).keys() == {4, 5}  # loading from step 4 keeps steps 4 and on
        assert {json.loads(line)["step"] for line in record.path.read_text().splitlines()} == {4, 5}
    finally:
        random_server.close()
        ok_server.close()


class ScriptedEngine:
    """An engine that writes "Score: <prompt length mod 11>" to each prompt (or `reply`), to check
    the local backend's batching, deduplication and parsing without a model."""

    def __init__(self, reply: str | None = None):
        self.calls, self.prompts, self.limits, self.reply = [], [], [], reply

    def generate(self, prompts, params):
        self.calls.append(len(prompts))
        self.prompts += prompts
        self.limits.append(params.max_new_tokens)
        return [[Completion(p, [1, 2], [0.0, 0.0], self.reply or f"Score: {len(p) % 11}", "stop")] for p in prompts]


def test_the_local_backend_generates_each_distinct_request_once(tmp_path):
    from tiny import make_tokenizer

    from groupo.data.prompts import encode_prompt
    from groupo.rewards.judging import judge_messages

    tok, engine = make_tokenizer(), ScriptedEngine()
    backend = LocalBackend(engine, tok, max_tokens=8, temperature=0.0)
    judge = Judge(backend, template=TEMPLATES["quality"], rule=parse_rule("number[0,10]"),
                  special_tokens=backend.special_tokens())
    scores, counts = _score(judge)
    rule = parse_rule("number[0,10]")
    chats = [judge_messages(TEMPLATES["quality"], rule, PROMPT[0]["content"], "7", [t], backend.special_tokens())
             for t in TEXTS]
    assert scores == pytest.approx([len(encode_prompt(tok, c)) % 11 / 10 for c in chats])
    assert engine.calls == [3] and counts["completion_tokens"] == 6


def test_without_thinking_the_local_reply_starts_with_the_verdicts_label():
    from tiny import make_tokenizer

    tok, engine = make_tokenizer(), ScriptedEngine(reply="7, clear and right")
    judge = Judge(LocalBackend(engine, tok, max_tokens=64, temperature=0.0), template=TEMPLATES["quality"],
                  rule=parse_rule("number[0,10]"), think=False)
    scores, _ = _score(judge, texts=["7"])
    assert scores == [pytest.approx(0.7)] and engine.limits == [8]
    assert tok.decode(engine.prompts[0]).endswith("Score: N, where N is a number from 0 (worst) to 10 (best)."
                                                  "<|im_end|>\n<|im_start|>assistant\nScore: ")
    assert "Reply with nothing but the line Score: N" in tok.decode(engine.prompts[0])


def test_an_in_process_judge_on_a_tiny_model_runs_and_counts(tmp_path):
    tiny = save_tiny(tmp_path / "judge-model")
    cfg = load_config(None, [f"rewards.judge.model={tiny}", "rewards.judge.max_tokens=4"])
    judge = build_judge(cfg)
    assert not any(p.requires_grad for p in judge.backend.engine.model.parameters())
    before = torch.random.get_rng_state()
    scores, counts = _score(judge, texts=["7", "8"])
    assert torch.equal(before, torch.random.get_rng_state())  # the training run's random stream is untouched
    assert len(scores) == 2 and counts["requests"] == 2 and counts["failures"] == 0  # a random model: no verdict
    assert counts["replies"] == 2 and 0 < counts["completion_tokens"] <= 8


def test_api_key_env_must_name_a_variable_and_is_never_echoed(monkeypatch):
    with pytest.raises(ConfigError) as bad:
        load_config(None, ["rewards.judge.url=http://127.0.0.1:9/v1", f"rewards.judge.api_key_env={SECRET}"])
    assert SECRET not in str(bad.value) and "NAME of an environment variable" in str(bad.value)
    from groupo.config_rules import validate

    cfg = load_config(None, ["rewards.judge.url=http://127.0.0.1:9/v1", "rewards.judge.api_key_env=GROUPO_TEST_KEY"])
    monkeypatch.delenv("GROUPO_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="names an environment variable this process does not have"):
        validate(cfg)


def _secret_free(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


def test_a_run_with_a_keyed_judge_writes_the_key_nowhere(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("GROUPO_TEST_JUDGE_KEY", SECRET)
    bad_key, good = FakeJudge("echo_key"), FakeJudge("ok")
    try:
        for fake, steps in ((bad_key, 1), (good, 2)):  # a server that echoes the key in its errors, then a good one
            run = tmp_path / f"run-{fake.mode}"
            over = _overrides(tmp_path, steps, **{"rewards.judge.url": fake.url, "rewards.judge.weight": 0.5,
                                                  "rewards.judge.api_key_env": "GROUPO_TEST_JUDGE_KEY",
                                                  "task.eval_size": 2, "run.dir": str(run)})
            train(load_config(None, over), run)
            assert fake.requests and all(r["headers"]["Authorization"] == f"Bearer {SECRET}" for r in fake.requests)
            assert _secret_free(run) == []
            saved = (run / "config.yaml").read_text()
            assert "api_key_env: GROUPO_TEST_JUDGE_KEY" in saved
        rows = [json.loads(x) for x in (tmp_path / "run-ok" / "metrics.jsonl").read_text().splitlines()]
        assert all(r["judge/failure_frac"] == 0 and r["reward/fn/judge"] is not None for r in rows)
        failed = json.loads((tmp_path / "run-echo_key" / "metrics.jsonl").read_text().splitlines()[0])
        assert failed["judge/failure_frac"] == 1.0 and failed["reward/fn/judge"] is None
        assert any(a["name"] == "judge" for a in failed["alarms"])
        out = capsys.readouterr()
        assert SECRET not in out.out + out.err + caplog.text and "HTTP 401: " in caplog.text
    finally:
        bad_key.close()
        good.close()


def test_a_resumed_run_with_a_judge_that_answers_at_random_ends_as_the_killed_one_would(tmp_path):
    """The killed run's step 2 was judged and recorded; resumed from step 1, the run replays those
    replies, so its step 2 and its weights are the first run's although the judge is random."""
    server = FakeJudge("random")
    try:
        run = tmp_path / "run"
        over = _overrides(tmp_path, 2, **{"rewards.judge.url": server.url, "task.eval_size": 2, "run.dir": str(run),
                                          "train.keep_checkpoints": 2})
        train(load_config(None, over), run)
        first_rows = (run / "metrics.jsonl").read_text().splitlines()
        first = {n: t.clone() for n, t in _final_state(run).items()}
        import shutil

        shutil.rmtree(run / "checkpoints" / "step-2")  # as if killed after judging step 2, before its checkpoint
        asked = len(server.requests)
        train(load_config(None, over), run, resume=True)
        assert len(server.requests) == asked  # step 2 replayed (and held-out evaluation never asks the judge)
        again = (run / "metrics.jsonl").read_text().splitlines()
        keys = ("reward/fn/judge", "reward/mean", "loss/total", "optim/grad_norm")
        assert [json.loads(again[1])[k] for k in keys] == [json.loads(first_rows[1])[k] for k in keys]
        for name, t in _final_state(run).items():
            assert torch.equal(t, first[name]), name
    finally:
        server.close()


def _final_state(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(next((run / "final").glob("*.safetensors")))


def test_model_rewards_adds_the_judge_as_an_async_reward(tmp_path):
    from groupo.rewards import aio

    cfg = load_config(None, [f"rewards.judge.url=http://127.0.0.1:{free_port()}", "rewards.judge.weight=0.3",
                             "rewards.max_concurrency=2", "rewards.async_timeout_s=9"])
    fns = model_rewards(cfg, run_dir=tmp_path, rank=1)
    fn, weight = fns["judge"]
    assert weight == 0.3 and isinstance(fn, aio.Limited) and aio.is_async(fn)
    assert (fn.limits.max_concurrency, fn.limits.timeout_s) == (2, 9.0)
    assert fn.func.record.path == tmp_path / "judge" / "replies-rank1.jsonl"
    assert os.environ.get("GROUPO_TEST_JUDGE_KEY") is None


@pytest.mark.slow
def test_the_built_in_model_judges_in_this_process_and_in_a_smoke_run(tmp_path):
    from groupo.cli import main

    cfg = load_config(None, ["rewards.judge.model=smollm2-135m-instruct", "rewards.judge.think=false"])
    scores, counts = _score(build_judge(cfg))
    assert len(scores) == 4 and counts["failures"] == 0 and counts["requests"] == 3  # the repeated text once
    assert any(s is not None for s in scores) and all(s is None or 0 <= s <= 1 for s in scores)
    run = tmp_path / "run"
    recipe = Path(__file__).resolve().parents[1] / "configs" / "mcq.yaml"
    assert main(["train", str(recipe), "--smoke", "rewards.judge.model=smollm2-135m-instruct",
                 "rewards.judge.think=false", "rewards.judge.weight=0.2", f"run.dir={run}", "run.progress=plain"]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["judge/failure_frac"] == 0 and r["time/reward/judge"] > 0 for r in rows)
