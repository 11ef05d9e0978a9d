"""The arithmetic task's "unseen" split and task.extra_eval_splits: the split's problems, the key's
checks, and a tiny run that evaluates both held-out splits before and after training."""

import json
import re
from pathlib import Path

import pytest
import yaml
from test_trainer import _overrides
from tiny import make_tiny

from groupo.cli import main
from groupo.commands.resolve import resolve_config
from groupo.config import ConfigError, TaskConfig, load_config
from groupo.data import DataError, extra_eval_sets, load_task
from groupo.data.arithmetic import make_problem, splits, unseen_problems
from groupo.models import load_policy_from
from groupo.report.html import run_data
from groupo.trainer import loop
from groupo.trainer.held_out import HeldOut
from groupo.trainer.runlog import RunLog

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "groupo" / "data" / "samples"
TRAIN_NAMES = ["Ana", "Ben", "Chen", "Dara", "Elif", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi", "Luca"]
TRAIN_ITEMS = ["apples", "marbles", "stickers", "books", "coins", "shells", "pencils", "cards"]
UNSEEN_NAMES = ["Maya", "Omar", "Priya", "Quentin", "Rosa", "Sami", "Tariq", "Uma"]
UNSEEN_ITEMS = ["stamps", "buttons", "beads", "cookies", "tickets", "pebbles"]


def template(question: str) -> str:
    return re.sub(r"\d+", "N", question)


def frame(question: str) -> str:
    """The template with names and items too replaced: the wording's skeleton."""
    words = "|".join(TRAIN_NAMES + TRAIN_ITEMS + UNSEEN_NAMES + UNSEEN_ITEMS)
    return re.sub(rf"\b({words})\b", "W", template(question))


# ---------------------------------------------------------------------------------------------
# The split


def test_unseen_split_is_fixed_two_digit_and_correct():
    problems = unseen_problems(1234)
    assert problems == unseen_problems(1234)  # deterministic
    assert unseen_problems(1234) != unseen_problems(99)  # its own seed stream
    assert len(problems) == 100 and len({p.expression for p in problems}) == 100
    ops = []
    for p in problems:
        a, op, b = p.expression.split()
        ops.append(op)
        assert op in "+-" and 10 <= int(a) <= 99 and 10 <= int(b) <= 99
        assert p.answer == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0
        assert sorted(re.findall(r"\d+", p.question)) == sorted([a, b])  # the question shows the operands
    assert ops.count("+") == 50 and ops.count("-") == 50


def test_unseen_wordings_never_occur_in_training():
    """No unseen question could be produced by a training wording: 20,000 training problems of
    levels 1 and 2 (and 4,000 of each harder level) share no template with the split, not even with
    names and items blanked out. Its expressions are NOT kept out of level 2 (not required)."""
    unseen = unseen_problems(1234)
    seen_templates, seen_frames = set(), set()
    for level, n in ((1, 20_000), (2, 20_000), (3, 4_000), (4, 4_000), (5, 4_000)):
        stream, test = splits(level, 1234, length=n)
        for p in [*stream, *test]:
            seen_templates.add(template(p.question))
            seen_frames.add(frame(p.question))
    assert len(seen_frames) > 40  # the training wordings were all drawn
    unseen_templates = {template(p.question) for p in unseen}
    unseen_frames = {frame(p.question) for p in unseen}
    assert len(unseen_frames) >= 15  # several wordings, not one
    assert not unseen_templates & seen_templates
    assert not unseen_frames & seen_frames
    text = " ".join(p.question for p in unseen)
    assert not any(re.search(rf"\b{w}\b", text) for w in TRAIN_NAMES + TRAIN_ITEMS)


def test_training_problems_are_unchanged():
    """Existing runs resume bit for bit: the level-1 and level-2 streams are what they were."""
    import random

    stream, test = splits(1, 1234)
    assert stream[0] == make_problem(random.Random("arithmetic/train/1/1234/0"), 1)
    assert len(test) == 62


def test_eval_split_unseen_gives_the_split_and_unknown_splits_are_named():
    task = load_task(TaskConfig(name="arithmetic", difficulty=1, eval_split="unseen", eval_size=0,
                                prompt_style="plain"))
    unseen = unseen_problems(1234)
    assert [p.answer for p in task.test] == [str(p.answer) for p in unseen]
    assert task.test[3].messages[-1]["content"] == unseen[3].question
    assert task.test[0].id.endswith("-unseen-0")
    assert load_task(TaskConfig(name="arithmetic", difficulty=1)).test[0].id.endswith("-test-0")
    with pytest.raises(DataError, match=r"^task\.eval_split: split 'hard' is unknown for task 'arithmetic'; "
                                        r"valid: test, unseen$"):
        load_task(TaskConfig(name="arithmetic", eval_split="hard"))


# ---------------------------------------------------------------------------------------------
# The config key


def test_extra_eval_splits_round_trip_through_groupo_config(capsys):
    assert main(["config", "task.extra_eval_splits=[unseen]", "task.difficulty=1"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["task"]["extra_eval_splits"] == ["unseen"]
    assert load_config().task.extra_eval_splits == []
    assert resolve_config(None, []).task.extra_eval_splits == ["unseen"]  # the quickstart's


def test_another_tasks_split_is_one_warning_line_and_skipped(caplog):
    # the quickstart lists arithmetic's "unseen": another task on top of it must still train
    cfg = resolve_config(None, ["task.name=countdown"])
    assert cfg.task.extra_eval_splits == ["unseen"]
    with caplog.at_level("WARNING", logger="groupo"):
        assert extra_eval_sets(cfg.task) == {}
    assert [r.getMessage() for r in caplog.records] == ["warning: task.extra_eval_splits: split 'unseen' skipped: "
                                                        "split 'unseen' is unknown for task 'countdown'; valid: test"]
    with pytest.raises(ConfigError, match=r"^task\.extra_eval_splits: split 'test' is already evaluated"):
        resolve_config(None, ["task.extra_eval_splits=[test]"])


@pytest.mark.parametrize("task", ["arithmetic", "countdown", "big_arithmetic"])
def test_a_split_no_generated_task_has_is_a_config_error(task):
    with pytest.raises(ConfigError, match=rf"^task\.extra_eval_splits: split 'nosuch' is unknown for task '{task}'; "
                                          r"valid: test(, unseen)?$"):
        resolve_config(None, [f"task.name={task}", "task.extra_eval_splits=[unseen, nosuch]"])


def test_an_unknown_extra_split_stops_groupo_train_with_one_line(capsys):
    assert main(["train", "task.extra_eval_splits=[nosuch]"]) == 2  # before: 0, and a raw UserWarning
    assert capsys.readouterr().err == ("groupo: error: task.extra_eval_splits: split 'nosuch' is unknown for "
                                       "task 'arithmetic'; valid: test, unseen\n")


def test_a_file_task_without_the_split_is_skipped_naming_the_files_it_has(caplog):
    cfg = TaskConfig(name="gsm8k", path=str(SAMPLES / "gsm8k"), extra_eval_splits=["dev", "train"], eval_size=2)
    with caplog.at_level("WARNING", logger="groupo"):
        sets = extra_eval_sets(cfg)
    msg, = [r.getMessage() for r in caplog.records]
    assert "\n" not in msg and msg.startswith("warning: task.extra_eval_splits: split 'dev' skipped: ")
    assert "test.jsonl, train.jsonl" in msg  # the splits it does have
    assert list(sets) == ["train"] and len(sets["train"]) == 2


# ---------------------------------------------------------------------------------------------
# The trainer


class FakeRun:
    def __init__(self, done: set):
        self.done, self.rows = done, []

    def evaluated_before(self, split=None):
        return split in self.done

    def evaluation(self, step, accuracy, n, seconds, split=None, sampled=None):
        self.rows.append((step, split, n))
        return accuracy


def test_a_resumed_run_evaluates_before_only_the_splits_without_a_first_figure():
    held = HeldOut(lambda problems, sampled: (len(problems) / 10, len(problems), 0.0, {}), [1, 2, 3],
                   {"unseen": [1, 2]})
    run = FakeRun({None})
    assert held.evaluate(run, 0, before=True) is None
    assert run.rows == [(0, "unseen", 2)]
    run = FakeRun({None, "unseen"})
    held.evaluate(run, 0, before=True)
    assert run.rows == []
    assert held.evaluate(run, 5) == pytest.approx(0.3)
    assert run.rows == [(5, None, 3), (5, "unseen", 2)]


def test_tiny_run_evaluates_both_splits_before_and_after(tmp_path, monkeypatch, capsys):
    """The real evaluation runs on both splits; its accuracy (0 for a random tiny model) is replaced
    by a value that names the split and the call, so the rows and the summary can be matched."""
    calls = []
    real = loop.held_out_accuracy

    def traced(sampler, module, task, problems, reward_fns, **kw):
        acc, n, s, sampled = real(sampler, module, task, problems, reward_fns, **kw)
        assert n == len(problems) and 0 <= acc <= 1
        split = problems[0].id.split("-")[-2]
        calls.append(split)
        return {"test": 0.25, "unseen": 0.125}[split] + 0.5 * (len(calls) > 2), n, s, sampled

    monkeypatch.setattr(loop, "held_out_accuracy", traced)
    run_dir = tmp_path / "run"
    cfg = load_config(None, _overrides(tmp_path, 2, **{"run.dir": str(run_dir), "task.eval_size": 3,
                                                       "task.extra_eval_splits": "[unseen]"}))
    model, tok = make_tiny()
    summary = loop.train(cfg, run_dir, policy=load_policy_from(model, tok, cfg.lora, beta=0.0))
    assert calls == ["test", "unseen", "test", "unseen"]
    rows = [json.loads(x) for x in (run_dir / "eval.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("split"), r["n"], r["accuracy"]) for r in rows] == [
        (0, None, 3, 0.25), (0, "unseen", 3, 0.125), (2, None, 3, 0.75), (2, "unseen", 3, 0.625)]
    assert "split" not in rows[0] and "split" not in rows[2]  # the main rows keep their format
    on_disk = json.loads((run_dir / "summary.json").read_text())
    for s in (summary, on_disk):
        assert (s["accuracy_before"], s["accuracy_after"], s["improvement_points"]) == (0.25, 0.75, 50.0)
        assert s["extra_eval"] == {"unseen": {"accuracy_before": rows[1]["accuracy"],
                                              "accuracy_after": rows[3]["accuracy"],
                                              "improvement_points": 50.0, "eval_problems": 3}}
    printed = capsys.readouterr()
    assert "unseen split accuracy: 12.5% -> 62.5% (+50.0 points) on 3 problems" in printed.out + printed.err
    assert "eval step 0: unseen split accuracy 12.5% on 3 problems" in printed.out + printed.err
    run = RunLog.__new__(RunLog)  # the reading methods only, on the finished run's files
    run.main, run.run_dir, run.world = True, run_dir, loop.setup("cpu", "auto")[0]
    assert run.first_accuracy() == 0.25  # the main split's, though an unseen row follows it
    assert run.evaluated_before() and run.evaluated_before("unseen") and not run.evaluated_before("other")
    series = run_data(run_dir)["series"]
    at = {s: i for i, s in enumerate(series["step"])}
    assert series["accuracy/eval"][at[0]] == 0.25 and series["accuracy/eval"][at[2]] == 0.75
    assert series["accuracy/eval_unseen"][at[0]] == 0.125 and series["accuracy/eval_unseen"][at[2]] == 0.625
    assert series["accuracy/eval_unseen"][at[1]] is None


# ---------------------------------------------------------------------------------------------
# task.next_level_share: a share of the training problems one level up


def test_a_next_level_share_draws_that_share_from_the_next_level_and_keeps_all_held_out_sets_out():
    from groupo.data import arithmetic

    plain, test = arithmetic.splits(1, 1234)
    mixed, mixed_test = arithmetic.splits(1, 1234, length=4000, next_level_share=0.3)
    assert [p.expression for p in mixed_test] == [p.expression for p in test]  # the level's own held-out set
    assert [p.question for p in arithmetic.splits(1, 1234, next_level_share=0.0)[0][:50]] == \
        [p.question for p in plain[:50]]  # a share of 0 is the plain stream, bit for bit
    problems = mixed[:]
    # level 1 has one-digit operands only; level 2's are two-digit (or a one-digit multiplier)
    two_digit = [p for p in problems if max(int(t) for t in p.expression.split()[::2]) >= 10]
    assert abs(len(two_digit) / len(problems) - 0.3) < 0.03  # binomial sd at n=4000: 0.007
    held = ({p.expression for p in test} | {p.expression for p in arithmetic.test_problems(2, 1234)}
            | {p.expression for p in arithmetic.unseen_problems(1234)})
    assert not held & {p.expression for p in problems}
    for p in problems:  # answers still right
        a, op, b = p.expression.split()
        assert p.answer == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]


def test_a_next_level_share_is_refused_where_it_cannot_apply():
    with pytest.raises(ConfigError, match=r"^task\.next_level_share applies to the arithmetic task only"):
        resolve_config(None, ["task.name=countdown", "task.next_level_share=0.2", "task.extra_eval_splits=[]"])
    with pytest.raises(ConfigError, match=r"^task\.next_level_share: arithmetic difficulty 5 is the last level"):
        resolve_config(None, ["task.difficulty=5", "task.next_level_share=0.2"])
