"""pass@k / maj@k against hand-computed values, `evaluate` with a scripted engine, and the eval CLI
on a tiny random model."""

import argparse
import json
from math import comb

import pytest
from tiny import make_tokenizer, save_tiny

from groupo.config import TaskConfig
from groupo.data import Task, load_task
from groupo.data.prompts import encode_prompt
from groupo.data.task import to_problem
from groupo.engines import Engine
from groupo.eval import evaluate, majority_correct, pass_at_k
from groupo.rewards import accuracy_reward
from groupo.rollout import Sampler
from groupo.types import Completion


@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (5, 2, 1, 2 / 5),                       # pass@1 = c / n
    (5, 2, 2, 1 - 3 / 10),                  # 1 - C(3,2)/C(5,2)
    (10, 3, 5, 1 - 21 / 252),               # 1 - C(7,5)/C(10,5)
    (5, 0, 3, 0.0), (5, 5, 1, 1.0),
    (4, 3, 2, 1.0),                         # n - c < k: every 2-subset holds a correct one
    (200, 1, 100, 0.5),                     # 1 - C(199,100)/C(200,100) = 1 - 100/200
])
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_binomial_formula():
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)
    assert 0.0 <= pass_at_k(1000, 3, 500) <= 1.0                        # large n stays finite
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_majority_vote():
    assert majority_correct(["5", "5", "3"], [True, True, False])
    assert not majority_correct(["1", "7", "1"], [False, True, False])
    assert majority_correct(["2", "3", None, None], [False, True, False, False]) is False   # tie: first seen
    assert majority_correct([None, None], [False, False]) is False


class ScriptedEngine(Engine):
    """Returns fixed completion texts: `greedy[i]` at temperature 0, else `sampled[i]` (k texts)."""

    def __init__(self, prompt_index, greedy, sampled):
        self.prompt_index, self.greedy, self.sampled = prompt_index, greedy, sampled
        self.calls = []

    def generate(self, prompts, params):
        self.calls.append((len(prompts), params.n, params.temperature))
        out = []
        for ids in prompts:
            i = self.prompt_index[tuple(ids)]
            texts = [self.greedy[i]] if params.temperature == 0 else self.sampled[i]
            assert len(texts) == params.n
            out.append([Completion(list(ids), [7] * len(t), [0.0] * len(t), t, "stop") for t in texts])
        return out

    def sync_weights(self):
        pass


def test_evaluate_scripted():
    tok = make_tokenizer()
    cfg = TaskConfig(prompt_style="plain")
    problems = [to_problem({"question": f"q{i}", "answer": a}, cfg, [], f"p{i}") for i, a in enumerate("579")]
    task = Task("toy", problems, problems, {"accuracy": 1.0})
    index = {tuple(encode_prompt(tok, p.messages)): i for i, p in enumerate(problems)}
    engine = ScriptedEngine(index, greedy=["5", "1", "9"], sampled=[
        ["5", "5", "3", "<answer>5</answer>"],   # c = 3, majority 5 (right)
        ["1", "7", "1", "2"],                    # c = 1, majority 1 (wrong)
        ["0", "0", "0", "0"],                    # c = 0
    ])
    res = evaluate(Sampler(engine, tok), task, problems, samples=4, temperature=1.0, batch_size=8)
    assert res.n == 3 and res.accuracy == pytest.approx(2 / 3)           # greedy: 5 ok, 1 wrong, 9 ok
    # pass@1 = mean(c/n) = (3/4 + 1/4 + 0)/3; pass@2 = (1 + (1 - C(3,2)/C(4,2)) + 0)/3; pass@4 = 2/3
    assert res.pass_at_k == pytest.approx({1: 1 / 3, 2: 0.5, 4: 2 / 3})
    assert res.maj_at_k == pytest.approx(1 / 3)
    assert res.mean_at_k == pytest.approx(4 / 12)  # 3 + 1 + 0 of the 12 samples are right: pass@1's value
    assert len(res.records) == 3 + 12 and sum(r["greedy"] for r in res.records) == 3
    rec = next(r for r in res.records if not r["greedy"] and r["id"] == "p0" and r["sample"] == 3)
    assert rec["extracted"] == "5" and rec["correct"] and rec["rewards"] == {"accuracy": 1.0}
    # batch_size 8 sequences with k = 4 -> 2 prompts per generate call for the sampled pass
    assert [c for c in engine.calls if c[2] > 0] == [(2, 4, 1.0), (1, 4, 1.0)]


def test_evaluate_rejects_greedy_samples():
    with pytest.raises(ValueError, match="temperature > 0"):
        evaluate(None, None, [], samples=4, temperature=0.0)


def _hf_engine_available():
    try:
        import groupo.engines.hf  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.mark.skipif(not _hf_engine_available(), reason="needs the HF rollout engine")
def test_eval_cli_on_tiny_model(tmp_path):
    from groupo.commands.eval import add_arguments, run

    model_dir = save_tiny(tmp_path / "tiny")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "eval.jsonl"
    args = parser.parse_args(["--model", str(model_dir), "--task", "arithmetic", "--limit", "4",
                              "--max-new-tokens", "6", "--device", "cpu", "--out", str(out),
                              "--set", "model.autocast=none"])
    assert run(args) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["n"] == 4 and len(records) == 4 and all(r["tokens"] <= 6 for r in records)
    # the records' grades agree with a fresh accuracy_reward over the same texts
    test = load_task(TaskConfig(eval_size=4)).test
    assert [r["answer"] for r in records] == [p.answer for p in test]
    fresh = accuracy_reward([r["completion"] for r in records], [r["answer"] for r in records])
    assert [float(r["correct"]) for r in records] == fresh
    assert summary["accuracy"] == pytest.approx(sum(fresh) / 4)


@pytest.mark.skipif(not _hf_engine_available(), reason="needs the HF rollout engine")
def test_eval_cli_run_dir_uses_the_runs_settings(tmp_path):
    """--run reads the run's config.yaml: its model, task, prompt style and eval size; --base
    evaluates the base model, without it the run's final/ weights."""
    from groupo.commands.eval import add_arguments, run
    from groupo.config import Config, LoraConfig, dump_yaml
    from groupo.models import load_model, load_policy_from, save_policy

    model_dir = save_tiny(tmp_path / "tiny")
    cfg = Config()
    cfg.model.name, cfg.model.autocast = str(model_dir), "none"
    cfg.task.prompt_style, cfg.task.eval_size, cfg.task.difficulty = "plain", 3, 1
    cfg.rollout.max_new_tokens = 4
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    model, tok = load_model(str(model_dir))
    save_policy(load_policy_from(model, tok, LoraConfig(rank=2, alpha=4.0), beta=0.0,
                                 base_name=str(model_dir)), run_dir / "final")

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    expected_prompts = [p.messages[-1]["content"] for p in load_task(cfg.task).test]
    assert expected_prompts[0] == load_task(cfg.task).test[0].columns["question"]   # plain: no instruction
    for extra in (["--base"], []):
        out = tmp_path / f"eval{len(extra)}.jsonl"
        assert run(parser.parse_args(["--run", str(run_dir), "--device", "cpu", "--out", str(out), *extra])) == 0
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["prompt"] for r in records] == expected_prompts
        assert all(r["tokens"] <= 4 for r in records)
        summary = json.loads(out.with_suffix(".summary.json").read_text())
        assert summary["n"] == 3 and summary["model"].endswith("(base)" if extra else "(final)")
