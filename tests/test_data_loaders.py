"""Each loader on the real files in shared/data: row counts (from the folders' READMEs) and one
parsed example checked against the raw file. Skipped where the data folder is absent."""

import json
from pathlib import Path

import pytest

from groupo.config import TaskConfig
from groupo.data import DataError, load_task
from groupo.data.countdown import read_countdown
from groupo.data.loaders import (
    normalize_reference,
    read_cmath,
    read_gsm8k,
    read_math,
    read_metamath,
    read_mgsm,
    read_svamp,
)
from groupo.rewards import accuracy_reward, countdown_reward

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"no shared data at {DATA}")


def test_gsm8k():
    train, test = read_gsm8k(DATA / "gsm8k/train.jsonl"), read_gsm8k(DATA / "gsm8k/test.jsonl")
    assert (len(train), len(test)) == (7473, 1319)
    row = test[0]
    assert row["question"].startswith("Janet’s ducks lay 16 eggs per day.") and row["answer"] == "18"
    assert "<<" not in row["solution"] and row["solution"].endswith("$18 every day at the farmer’s market.")
    # thousands separators are stripped: every answer is a plain integer string
    raw = [json.loads(line)["answer"].split("####")[-1].strip() for line in
           (DATA / "gsm8k/test.jsonl").read_text(encoding="utf-8").splitlines()]
    assert any("," in a for a in raw)
    assert [r["answer"] for r in test] == [a.replace(",", "") for a in raw]


def test_gsm8k_task_folder_splits():
    task = load_task(TaskConfig(name="gsm8k", path=str(DATA / "gsm8k"), eval_size=0, few_shot=1))
    assert len(task.train) == 7473 and len(task.test) == 1319
    assert task.test[0].answer == "18" and task.test[0].messages[-1]["content"].startswith("Janet")


def test_math500_and_math():
    m500 = read_math(DATA / "math500/test.jsonl")
    assert len(m500) == 500
    assert m500[0]["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)" and m500[0]["subject"] == "Precalculus"
    math = read_math(DATA / "math/test.jsonl")
    assert len(math) == 5000
    # MATH has no answer field: the last \boxed{} of the solution, brace-matched
    row = next(r for r in math if r["question"] == "Evaluate $\\log_327$.")
    assert row["answer"] == "3"
    assert sum("\\frac" in r["answer"] for r in math) > 300                  # nested braces survive
    assert all(r["answer"].count("{") == r["answer"].count("}") for r in math)


def test_math500_is_test_only():
    task = load_task(TaskConfig(name="math500", path=str(DATA / "math500"), eval_size=0))
    assert len(task.test) == 500
    with pytest.raises(DataError, match="has no 'train' split"):
        len(task.train)
    # a reference LaTeX answer grades its own boxed form as correct (symbolic path)
    assert accuracy_reward(["\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}"], [task.test[0].answer]) == [1.0]


def test_svamp():
    rows = read_svamp(DATA / "svamp/SVAMP.json")
    assert len(rows) == 1000
    assert rows[0]["question"] == ("Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars "
                                   "on each pack How much do you have to pay to buy each pack?")
    assert rows[0]["answer"] == "51" and rows[0]["solution"] == "( 76 - 25 ) = 51"   # 51.0 -> "51"


@pytest.mark.parametrize("lang", ["bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh"])
def test_mgsm_all_languages(lang):
    rows = read_mgsm(DATA / f"mgsm/mgsm_{lang}.tsv")
    assert len(rows) == 250
    assert rows[0]["answer"] == "18"
    en = read_mgsm(DATA / "mgsm/mgsm_en.tsv")
    assert [r["answer"] for r in rows] == [r["answer"] for r in en]        # parallel files


def test_mgsm_zh_task_and_separators():
    task = load_task(TaskConfig(name="mgsm", path=str(DATA / "mgsm"), language="zh", eval_size=0))
    assert len(task.test) == 250 and task.name == "mgsm-zh"
    assert task.test[0].columns["question"].startswith("珍妮特的鸭子每天下 16 颗蛋")
    raw = (DATA / "mgsm/mgsm_en.tsv").read_text(encoding="utf-8")
    assert "\t2,125\n" in raw or "\t276,000\n" in raw
    answers = {r["answer"] for r in read_mgsm(DATA / "mgsm/mgsm_en.tsv")}
    assert "2125" in answers or "276000" in answers
    # a Chinese completion with full-width digits and punctuation is graded right
    assert accuracy_reward(["她每天赚１８美元。答案是：１８"], ["18"]) == [1.0]


def test_cmath():
    dev, dis = read_cmath(DATA / "cmath/cmath_dev.jsonl"), read_cmath(DATA / "cmath/distractor.jsonl")
    assert (len(dev), len(dis)) == (600, 360)
    assert dev[0]["question"] == "芳芳买了一本书有99页，看了90页，她还剩多少页没有看？" and dev[0]["answer"] == "9"
    assert dev[0]["grade"] == 1
    # golden "2/6" (unreduced) is normalised to 1/3 and still matches "2/6" and "1/3"
    assert normalize_reference("2/6") == "1/3"
    assert accuracy_reward(["答案是2/6", "1/3"], ["1/3", "1/3"]) == [1.0, 1.0]


def test_countdown_file():
    rows = read_countdown(DATA / "countdown/countdown_cd3_test.jsonl")
    assert len(rows) == 256
    assert rows[0]["numbers"] == [30, 100, 93] and rows[0]["target"] == 23 and rows[0]["answer"] == "23"
    # 100 - 93 = 7 ... 30 - 7 = 23
    assert countdown_reward(["<answer>30 - (100 - 93)</answer>"], [23], [[30, 100, 93]]) == [1.0]
    task = load_task(TaskConfig(name="countdown", path=str(DATA / "countdown/countdown_cd3_test.jsonl"),
                                eval_size=0))
    assert len(task.test) == 256
    held = {(*sorted(r["numbers"]), r["target"]) for r in rows}
    assert not any((*sorted(p.columns["numbers"]), p.columns["target"]) in held for p in task.train[:1000])


def test_metamath_style(tmp_path):
    f = tmp_path / "mm.jsonl"
    f.write_text(json.dumps({"query": "What is 6 * 7?", "response": "6 * 7 = 42.\nThe answer is: 42",
                             "type": "GSM_Rephrased"}) + "\n", encoding="utf-8")
    rows = read_metamath(f)
    assert rows[0]["question"] == "What is 6 * 7?" and rows[0]["answer"] == "42"
    assert rows[0]["solution"] == "6 * 7 = 42."


def test_bad_gsm8k_row_names_file_line_and_field(tmp_path):
    f = tmp_path / "g.jsonl"
    f.write_text(json.dumps({"question": "a", "answer": "x\n#### 5"}) + "\n"
                 + json.dumps({"question": "b", "answer": "no final line"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"g\.jsonl:2: field 'answer'"):
        read_gsm8k(f)
    assert [r["answer"] for r in read_gsm8k(f, skip_bad=True)] == ["5"]
