"""Synthetic tasks, prompts, the task registry and splits (no data files needed)."""

import json
import random

import pytest
from tiny import make_tokenizer

from groupo.config import TaskConfig
from groupo.data import TASKS, DataError, arithmetic, countdown, load_task
from groupo.data.prompts import R1_SYSTEM_PROMPT, STYLES, Example, build_messages, encode_prompt, render_plain
from groupo.rewards import REWARDS, accuracy_reward, countdown_reward
from groupo.rewards.countdown import evaluate_expression


# --- arithmetic -------------------------------------------------------------------------------
@pytest.mark.parametrize("level", arithmetic.LEVELS)
def test_arithmetic_answers_are_right(level):
    """Recompute every answer from the question text's numbers with a second method."""
    rng = random.Random(7)
    for _ in range(200):
        p = arithmetic.make_problem(rng, level)
        assert isinstance(p.answer, int)
        value, used = evaluate_expression(p.expression)
        assert value == p.answer
        # every operand of the expression appears in the question text
        assert all(str(n) in p.question for n in used)


def test_arithmetic_level_ranges():
    rng = random.Random(0)
    lvl1 = [arithmetic.make_problem(rng, 1) for _ in range(300)]
    assert all(0 <= p.answer <= 18 for p in lvl1)                      # one-digit + and -, never negative
    assert {p.expression.split()[1] for p in lvl1} == {"+", "-"}
    lvl2 = [arithmetic.make_problem(rng, 2) for _ in range(300)]
    assert {p.expression.split()[1] for p in lvl2} == {"+", "-", "*"}
    assert any(p.answer < 0 for p in (arithmetic.make_problem(rng, 5) for _ in range(100)))


def test_arithmetic_wordings_vary():
    train, _ = arithmetic.splits(2, seed=1)
    starts = {p.question.split()[0] for p in train[:300]}
    assert len(starts) >= 10                                            # not one template


def test_arithmetic_deterministic_and_disjoint():
    train_a, test_a = arithmetic.splits(3, seed=5)
    train_b, test_b = arithmetic.splits(3, seed=5)
    assert test_a == test_b and train_a[:50] == train_b[:50] and train_a[9999] == train_b[9999]
    assert train_a[10] == train_a[10:11][0]                              # index and slice agree
    assert arithmetic.splits(3, seed=6)[1] != test_a                   # another seed, another set
    held = {p.expression for p in test_a}
    assert len(held) == len(test_a) == 500
    assert not any(p.expression in held for p in train_a[:3000])
    # level 1 has only 155 expressions (100 sums + 55 non-negative differences): 40% of each
    # operation held out (40 + 22), the other 60 sums and 33 differences all trained on
    train1, test1 = arithmetic.splits(1, seed=0)
    held1 = {p.expression for p in test1}
    assert len(held1) == 62 and not any(p.expression in held1 for p in train1[:2000])
    assert sum("-" in e for e in held1) == 22
    trained = {p.expression for p in train1[:2000]}
    assert len(trained) == 155 - 62 and sum("-" in e for e in trained) == 33
    assert 0.4 < sum("-" in p.expression for p in train1[:1000]) / 1000 < 0.6  # both operations drawn


def test_arithmetic_task_rewards_signal_untagged_answers():
    task = load_task(TaskConfig(name="arithmetic", difficulty=1, eval_size=10))
    assert len(task.train) == arithmetic.TRAIN_LEN and len(task.test) == 10
    p = task.train[3]
    assert p.columns["answer"] == p.answer and p.id == "arithmetic-d1-train-3"
    # an untagged completion is credited through its last number
    assert accuracy_reward([f"the result is {p.answer}"], [p.answer]) == [1.0]
    assert task.eval_reward == "accuracy" and task.rewards == {"accuracy": 1.0, "answer_format": 0.1}


def test_arithmetic_train_size_and_few_shot():
    task = load_task(TaskConfig(name="arithmetic", train_size=50, few_shot=2, prompt_style="r1"))
    assert len(task.train) == 50
    msgs = task.train[0].messages
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    shot = msgs[2]["content"]                                           # "<think>\na + b = c.\n</think>..."
    lhs, rhs = shot.split("<think>\n")[1].split(".\n</think>")[0].split(" = ")
    assert evaluate_expression(lhs)[0] == int(rhs) and shot.endswith(f"<answer>{rhs}</answer>")


# --- countdown --------------------------------------------------------------------------------
@pytest.mark.parametrize("level", countdown.LEVELS)
def test_countdown_generated_problems_are_solvable(level):
    rng = random.Random(level)
    for _ in range(100):
        nums, target, expr = countdown.make_problem(rng, level)
        assert len(nums) == countdown.LEVELS[level][0]
        assert countdown_reward([f"<answer>{expr}</answer>"], [target], [nums]) == [1.0]


def test_countdown_task_disjoint_and_rewarded():
    task = load_task(TaskConfig(name="countdown", difficulty=2, eval_size=0))
    assert task.eval_reward == "countdown" and task.rewards["countdown"] == 1.0
    held = {(*sorted(p.columns["numbers"]), p.columns["target"]) for p in task.test}
    assert len(held) == len(task.test) == countdown.TEST_SIZE
    assert not any((*sorted(p.columns["numbers"]), p.columns["target"]) in held for p in task.train[:2000])


# --- prompts ----------------------------------------------------------------------------------
def test_prompt_styles():
    q = "What is 2 + 3?"
    assert build_messages(q, "plain") == [{"role": "user", "content": q}]
    assert "<answer></answer>" in build_messages(q, "answer_tag")[-1]["content"]
    assert "\\boxed{}" in build_messages(q, "boxed")[-1]["content"]
    r1 = build_messages(q, "r1")
    assert r1[0] == {"role": "system", "content": R1_SYSTEM_PROMPT} and "<think>" in r1[1]["content"]
    assert build_messages(q, "r1", system_prompt="")[0]["role"] == "user"       # "" = no system turn
    assert build_messages(q, "plain", system_prompt="Be brief.")[0] == {"role": "system", "content": "Be brief."}
    with pytest.raises(ValueError, match="valid: plain"):
        build_messages(q, "xml")


def test_few_shot_turns_show_the_format():
    ex = Example("What is 1 + 1?", "1 + 1 = 2.", "2")
    expected = {"plain": "1 + 1 = 2. The answer is 2.", "answer_tag": "1 + 1 = 2.\n<answer>2</answer>",
                "r1": "<think>\n1 + 1 = 2.\n</think>\n<answer>2</answer>",
                "boxed": "1 + 1 = 2. The final answer is \\boxed{2}.", "python_tool": "1 + 1 = 2.\n<answer>2</answer>",
                "choice": "1 + 1 = 2.\n<answer>2</answer>"}
    for style in STYLES:
        msgs = build_messages("What is 2 + 2?", style, system_prompt="", examples=[ex])
        assert msgs[1] == {"role": "assistant", "content": expected[style]}


def test_encode_prompt_uses_chat_template():
    tok = make_tokenizer()
    msgs = [{"role": "user", "content": "What is 2+3?"}]
    ids = encode_prompt(tok, msgs)
    assert tok.decode(ids) == "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"


def test_encode_prompt_plain_fallback():
    tok = make_tokenizer()
    tok.chat_template = None
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "What is 2+3?"}]
    assert render_plain(msgs) == "System: S\n\nUser: What is 2+3?\n\nAssistant:"
    assert tok.decode(encode_prompt(tok, msgs)).endswith("User: What is 2+3?\n\nAssistant:")


# --- registry, generic files, splits, bad rows --------------------------------------------------
def test_unknown_task_lists_valid_names():
    with pytest.raises(DataError, match="valid: arithmetic, big_arithmetic, countdown, gsm8k"):
        load_task(TaskConfig(name="gsm9k"))
    assert {"arithmetic", "countdown", "gsm8k", "math", "math500", "svamp", "mgsm", "cmath",
            "metamath", "generic"} <= set(TASKS)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_path_is_a_task(tmp_path):
    rows = [{"question": f"What is {i} + 1?", "answer": f"{i + 1:,}", "level": i % 3} for i in range(998, 1018)]
    f = _write_jsonl(tmp_path / "mine.jsonl", rows)
    task = load_task(TaskConfig(name=str(f), test_fraction=0.25, eval_size=0))
    assert len(task.train) == 15 and len(task.test) == 5                 # 25% of 20 held out
    all_q = {p.columns["question"] for p in [*task.train, *task.test]}
    assert len(all_q) == 20                                             # disjoint and complete
    p = next(p for p in task.test + list(task.train) if p.columns["question"] == "What is 999 + 1?")
    assert p.answer == "1000" and p.columns["level"] == 0               # "1,000" normalised
    again = load_task(TaskConfig(name=str(f), test_fraction=0.25, eval_size=0))
    assert [p.id for p in again.test] == [p.id for p in task.test]       # seeded
    assert [p.question for p in again.train] == [p.question for p in task.train]


def test_generic_field_mapping_and_folder_splits(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", [{"q": "a?", "a": "#### 5"}, {"q": "b?", "a": "\\boxed{7}"}])
    _write_jsonl(tmp_path / "test.jsonl", [{"q": "c?", "a": "9"}])
    task = load_task(TaskConfig(name="generic", path=str(tmp_path), question_field="q", answer_field="a"))
    assert sorted(p.answer for p in task.train) == ["5", "7"] and [p.answer for p in task.test] == ["9"]
    with pytest.raises(DataError, match=r"no field 'question' or 'answer'.*fields: q, a"):
        load_task(TaskConfig(name=str(tmp_path / "train.jsonl")))


def test_bad_rows_named_or_skipped(tmp_path):
    f = _write_jsonl(tmp_path / "bad.jsonl", [{"question": "ok?", "answer": "1"}, {"question": "no answer"},
                                              {"question": "", "answer": "2"}, {"question": "ok2?", "answer": "3"}])
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'answer' is missing"):
        load_task(TaskConfig(name=str(f)))
    task = load_task(TaskConfig(name=str(f), skip_bad_rows=True, split="all", eval_split="all"))
    assert len(task.train) == 2
    (tmp_path / "broken.jsonl").write_text('{"question": "a", "answer": "1"}\n{oops\n')
    with pytest.raises(DataError, match=r"broken.jsonl:2: not valid JSON"):
        load_task(TaskConfig(name=str(tmp_path / "broken.jsonl")))


def test_file_task_without_path_is_a_clear_error():
    with pytest.raises(DataError, match=r"set task\.path"):
        load_task(TaskConfig(name="gsm8k"))


# --- recipe configs -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gsm8k", "math", "countdown"])
def test_recipe_configs_load(name):
    from pathlib import Path

    from groupo.config import load_config

    cfg = load_config(Path(__file__).parents[1] / "configs" / f"{name}.yaml")
    assert cfg.task.name == name
    assert set(cfg.rewards.funcs) <= set(REWARDS)
    if name == "countdown":                                             # needs no files: builds
        task = load_task(cfg.task)
        assert task.eval_reward == "countdown" and len(task.test) == cfg.task.eval_size


def test_hub_dataset_id_with_field_mapping(monkeypatch):
    """A hub id goes through `datasets.load_dataset(id, split=...)` (stubbed: no network here)."""
    import sys
    import types

    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return [{"problem": f"{split} {i}?", "solution": f"... #### {i},000"} for i in range(3)]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    task = load_task(TaskConfig(name="generic", path="someone/some-math", question_field="problem",
                                answer_field="solution"))
    assert calls == [("someone/some-math", "train"), ("someone/some-math", "test")]
    assert [p.answer for p in task.test] == ["0", "1000", "2000"]
    assert sorted(p.columns["question"] for p in task.train) == ["train 0?", "train 1?", "train 2?"]


def test_a_file_that_is_not_utf8_is_one_line_naming_file_line_and_offset(tmp_path):
    good = json.dumps({"question": "What is 1 + 1?", "answer": "2"}) + "\n"
    latin1 = tmp_path / "latin1.jsonl"  # "café" in Latin-1 on line 2: byte 0xe9 is not UTF-8
    latin1.write_bytes(good.encode() + '{"question": "café?", "answer": "1"}\n'.encode("latin-1"))
    offset = len(good.encode()) + len('{"question": "caf')
    with pytest.raises(DataError) as e:
        load_task(TaskConfig(name=str(latin1)))
    assert str(e.value).startswith(f"{latin1}:2: not UTF-8 text (byte offset {offset}: ")
    assert "iconv" in str(e.value) and "\n" not in str(e.value)
    for name, raw in (("bom.csv", b"\xff\xfequestion,answer\n"), ("noise.tsv", b"a\tb\n\x80\n")):
        (tmp_path / name).write_bytes(raw)
        line = raw.count(b"\n", 0, raw.index(b"\xff" if name == "bom.csv" else b"\x80")) + 1
        with pytest.raises(DataError, match=rf"{name}:{line}: not UTF-8 text"):
            load_task(TaskConfig(name=str(tmp_path / name)))


def test_a_task_with_no_training_rows_is_refused_with_the_counts(tmp_path):
    from groupo.data import require_train

    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    task = load_task(TaskConfig(name=str(empty)))
    with pytest.raises(DataError, match=rf"'empty': {empty} has no rows to train on \(0 read\); add rows$"):
        require_train(task)
    one = _write_jsonl(tmp_path / "one.jsonl", [{"question": "What is 1 + 1?", "answer": "2"}])
    task = load_task(TaskConfig(name=str(one)))  # 10% of 1 row, rounded up to 1, is held out
    assert len(task.test) == 1  # evaluation still has its row
    with pytest.raises(DataError, match=r"one.jsonl has no rows to train on \(1 read, task.test_fraction=0.1 "
                                        r"held 1 out for evaluation\); add rows, or lower task.test_fraction"):
        require_train(task)
    require_train(load_task(TaskConfig(name=str(one), test_fraction=0.0)))  # all of it trains: fine
    (tmp_path / "split").mkdir()
    _write_jsonl(tmp_path / "split" / "train.jsonl", [])
    _write_jsonl(tmp_path / "split" / "test.jsonl", [{"question": "q?", "answer": "1"}])
    with pytest.raises(DataError, match=r"split/train.jsonl has no rows to train on \(0 read\)"):
        require_train(load_task(TaskConfig(name="generic", path=str(tmp_path / "split"))))
    with pytest.raises(DataError, match=r"has no rows to train on"):  # what the loop's len() meets too
        len(load_task(TaskConfig(name=str(empty))).train)


def test_a_file_task_in_python_tool_style_shows_a_worked_episode_of_the_tool(tmp_path, caplog):
    """A file's rows have no programs: their worked example would answer without the tool (a tools
    run scored 0% on the user's own file). The python_tool style shows big_arithmetic's episodes."""
    path = tmp_path / "my.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is {a} * 7?", "answer": str(a * 7)}) + "\n"
                            for a in range(100, 120)))
    own = load_task(TaskConfig(name="big_arithmetic", prompt_style="python_tool", few_shot=1, seed=3)).test[0]
    worked = own.messages[1]["content"]  # the worked episode big_arithmetic itself shows, seed 3
    assert worked.startswith("```python\nprint(") and "\n```\n```output\n" in worked and worked.endswith("</answer>")
    with caplog.at_level("INFO", logger="groupo"):
        task = load_task(TaskConfig(name=str(path), prompt_style="python_tool", few_shot=1, seed=3, eval_split="all"))
    assert all(p.messages[:-1] == own.messages[:-1] for p in task.test)  # before: "<answer>707</answer>" alone
    assert [r.getMessage() for r in caplog.records] == [
        "note: task my has no ```python solutions to show, so its 1 worked example(s) for "
        "task.prompt_style=python_tool are big_arithmetic episodes (program, output, answer)"]
    other = load_task(TaskConfig(name=str(path), prompt_style="answer_tag", few_shot=1, seed=3))
    assert other.test[0].messages[1]["content"].startswith("<answer>")  # other styles: the file's own rows
