"""TRL's own reward functions run unchanged through `rewards.funcs`, called as TRL's trainer calls them.

The reference is TRL itself: `GRPOTrainer._calculate_rewards` (the method that calls reward
functions in TRL's trainer) run on a stand-in trainer object, on the same prompts, completions and
dataset rows. TRL is a test-only dependency (`pip install -e .[trl]`); without it these tests skip.
"""

import json
import math
from types import SimpleNamespace

import pytest
import torch

trl = pytest.importorskip("trl")

from tiny import make_tiny, save_tiny  # noqa: E402
from transformers.trainer_callback import TrainerState  # noqa: E402
from trl.rewards import accuracy_reward, think_format_reward  # noqa: E402
from trl.trainer.grpo_trainer import GRPOTrainer  # noqa: E402

from groupo.config import RewardsConfig, load_config  # noqa: E402
from groupo.models import load_policy_from  # noqa: E402
from groupo.rewards import resolve_rewards, score  # noqa: E402
from groupo.rewards.trl_compat import RewardLog, RewardState  # noqa: E402

PROMPT = [{"role": "system", "content": "Think, then answer."}, {"role": "user", "content": "What is 1/3 + 0?"}]
TEXTS = ["<think>\nadd nothing\n</think>\nThe answer is $\\boxed{\\frac{1}{3}}$",
         "<think>\nhmm\nThe answer is $\\boxed{\\frac{1}{2}}$",
         "no tags, $\\boxed{\\frac{1}{3}}$",
         "<think>a</think><think>b</think> $\\boxed{3}$"]
ROWS = [{"question": "What is 1/3 + 0?", "answer": "$\\frac{1}{3}$", "solution": "add zero", "level": 2}] * 3 \
    + [{"question": "What is 1 + 2?", "answer": "$3$", "solution": "one plus two", "level": 1}]
IDS = [[5, 6, 7], [8], [9, 10], [11, 12, 13, 14]]


def trl_rewards(funcs: list, prompts: list, completions: list, rows: list[dict], completion_ids: list,
                step: int = 0, max_steps: int = 0) -> torch.Tensor:
    """(N, len(funcs)) rewards from TRL's own `GRPOTrainer._calculate_rewards` (None -> NaN)."""
    logged_extra, logged_metrics = {}, {}
    trainer = SimpleNamespace(
        accelerator=SimpleNamespace(device=torch.device("cpu"), is_main_process=True),
        args=SimpleNamespace(report_to=[]), state=TrainerState(global_step=step, max_steps=max_steps),
        reward_funcs=funcs, reward_processing_classes=[None] * len(funcs),
        reward_func_names=[f.__name__ for f in funcs], environments=None,
        _log_completion_extra=lambda c, v: logged_extra.setdefault(c, []).extend(v),
        _log_metric=lambda n, v: logged_metrics.setdefault(n, []).append(v))
    inputs = [{"prompt": p, **r} for p, r in zip(prompts, rows, strict=True)]
    return GRPOTrainer._calculate_rewards(trainer, inputs, prompts, completions, completion_ids)


def test_trl_rewards_through_rewards_funcs_equal_trls_own_call():
    cfg = RewardsConfig(funcs={"trl.rewards:think_format_reward": 1.0, "trl.rewards:accuracy_reward": 0.5},
                        column_aliases={"solution": "answer"})
    fns = resolve_rewards(cfg, {})
    total, per_fn = score(fns, [PROMPT] * 4, TEXTS, ROWS, completion_ids=IDS)

    # TRL: conversational prompts -> completions as one assistant message; `solution` is the column
    completions = [[{"role": "assistant", "content": t}] for t in TEXTS]
    rows = [{**r, "solution": r["answer"]} for r in ROWS]
    expected = trl_rewards([think_format_reward, accuracy_reward], [PROMPT] * 4, completions, rows, IDS)
    assert per_fn["trl.rewards:think_format_reward"] == expected[:, 0].tolist()
    assert per_fn["trl.rewards:accuracy_reward"] == expected[:, 1].tolist()
    # and by hand: tags closed once (1, 0, 0, 0: the last opens <think> twice); 1/3, 1/2, 1/3, 3
    assert per_fn["trl.rewards:think_format_reward"] == [1.0, 0.0, 0.0, 0.0]
    assert per_fn["trl.rewards:accuracy_reward"] == [1.0, 0.0, 1.0, 1.0]
    assert total == [1.5, 0.0, 0.5, 0.5]


def test_unaliased_accuracy_reads_the_datasets_own_solution_column():
    """Without the alias TRL's accuracy_reward reads the `solution` column as it is: prose that
    math-verify cannot parse, so TRL's rule "unparseable gold -> None" skips every sample."""
    fns = resolve_rewards(RewardsConfig(funcs={"trl.rewards:accuracy_reward": 1.0}), {})
    total, per_fn = score(fns, [PROMPT] * 4, TEXTS, ROWS, completion_ids=IDS)
    completions = [[{"role": "assistant", "content": t}] for t in TEXTS]
    expected = trl_rewards([accuracy_reward], [PROMPT] * 4, completions, ROWS, IDS)
    assert all(math.isnan(x) for x in expected[:, 0].tolist())
    assert per_fn["trl.rewards:accuracy_reward"] == [None] * 4 and total == [0.0] * 4


def test_every_keyword_and_its_value_match_trl(tmp_path):
    """A spy reward run by groupo and by TRL sees the same keywords with the same values (groupo
    adds `completion_lengths`); plain-text prompts give plain-string completions in both."""
    (tmp_path / "spy.py").write_text(
        "SEEN = []\n"
        "def spy(prompts, completions, completion_ids, trainer_state, log_extra, log_metric, **columns):\n"
        "    SEEN.append(dict(prompts=prompts, completions=completions, completion_ids=completion_ids,\n"
        "                     step=(trainer_state.global_step, trainer_state.max_steps), columns=columns))\n"
        "    log_metric('calls', 1.0)\n"
        "    log_extra('note', ['x'] * len(completions))\n"
        "    return [float(len(c)) for c in completions]\n")
    fns = resolve_rewards(RewardsConfig(funcs={f"{tmp_path / 'spy.py'}:spy": 1.0}), {})
    fn = fns[f"{tmp_path / 'spy.py'}:spy"][0]
    seen = fn.__globals__["SEEN"]
    for prompts in ([PROMPT] * 4, ["Q: what is 1/3 + 0?\nA:"] * 4):
        seen.clear()
        log = RewardLog()
        total, _ = score(fns, prompts, TEXTS, ROWS, completion_ids=IDS, trainer_state=RewardState(3, 10), log=log)
        ours = seen.pop()
        conversational = isinstance(prompts[0], list)
        completions = [[{"role": "assistant", "content": t}] for t in TEXTS] if conversational else TEXTS
        expected = trl_rewards([fn], prompts, completions, ROWS, IDS, step=3, max_steps=10)
        theirs = seen.pop()
        assert ours["columns"].pop("completion_lengths") == [3, 1, 2, 4]
        assert ours == theirs
        assert total == expected[:, 0].tolist() == ([1.0] * 4 if conversational else [float(len(t)) for t in TEXTS])
        assert log.metric_means() == {"reward_log/calls": 1.0} and log.extra == {"note": ["x"] * 4}


def test_training_with_trl_rewards_runs_and_logs_them(tmp_path):
    """The user's run: TRL's think_format_reward and accuracy_reward (with the alias) in rewards.funcs,
    beside a probe that reports `trainer_state` through `log_metric`."""
    from groupo.trainer.loop import train

    save_tiny(tmp_path / "model")
    (tmp_path / "probe.py").write_text(
        "def probe(completions, trainer_state, log_metric, **kw):\n"
        "    log_metric('step', trainer_state.global_step)\n"
        "    log_metric('max_steps', trainer_state.max_steps)\n"
        "    return [0.0] * len(completions)\n")
    funcs = {"trl.rewards:think_format_reward": 0.1, "trl.rewards:accuracy_reward": 1.0,
             f"{tmp_path / 'probe.py'}:probe": 0.0}
    overrides = {
        "model.name": str(tmp_path / "model"), "model.autocast": "none", "lora.rank": 4, "lora.alpha": 8,
        "task.difficulty": 1, "task.eval_size": 2, "rollout.group_size": 2, "rollout.max_new_tokens": 4,
        "train.prompts_per_step": 2, "train.steps": 2, "train.save_every": 0, "algorithm.beta": 0.0,
        "run.progress": "plain", "rewards.column_aliases": json.dumps({"solution": "answer"}),
        "rewards.funcs": json.dumps(funcs),
    }
    cfg = load_config(None, [f"{k}={v}" for k, v in overrides.items()])
    model, tok = make_tiny()
    train(cfg, tmp_path / "run", policy=load_policy_from(model, tok, cfg.lora, beta=0.0))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # a random tiny model writes neither tags nor a right answer: both score 0 on every sample
    assert [r["reward/trl.rewards:think_format_reward"] for r in rows] == [0.0, 0.0]
    assert [r["reward/trl.rewards:accuracy_reward"] for r in rows] == [0.0, 0.0]
    # the batch of step k is sampled after k - 1 optimizer steps
    assert [(r["reward_log/step"], r["reward_log/max_steps"]) for r in rows] == [(0.0, 2.0), (1.0, 2.0)]
