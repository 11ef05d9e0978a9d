"""The multiple-choice task: rows in each accepted layout, the prompt that lists the options, the
task's rewards and evaluation, bad rows named by file and line, and the example set."""

import json
from pathlib import Path

import pytest

from groupo.config import TaskConfig
from groupo.data import DataError, load_task
from groupo.data.mcq import read_mcq, render
from groupo.rewards import resolve_rewards, score

ROOT = Path(__file__).resolve().parents[1]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_every_layout_reads_to_the_same_rows(tmp_path):
    q, opts = "2 + 2 = ?", ["3", "4", "5", "6"]
    layouts = [{"question": q, "options": opts, "answer": "B"},
               {"question": q, "options": {"A": "3", "B": "4", "C": "5", "D": "6"}, "answer": "(b)"},
               {"question": q, "choices": opts, "answer": 1},          # the hub's MMLU: a 0-based index
               {"question": q, "A": "3", "B": "4", "C": "5", "D": "6", "answer": "B."}]
    rows = read_mcq(_jsonl(tmp_path / "q.jsonl", layouts))
    (tmp_path / "q.csv").write_text("question,A,B,C,D,answer\n\"2 + 2 = ?\",3,4,5,6,B\n", encoding="utf-8")
    rows += read_mcq(tmp_path / "q.csv")
    for r in rows:
        assert (r["question"], r["answer"], r["options"], r["stem"]) == ("2 + 2 = ?\n\nA. 3\nB. 4\nC. 5\nD. 6", "B",
                                                                        opts, q)


def test_options_already_lettered_are_not_lettered_twice():
    assert render("Q", ["A. 3", "(B) 4", "C) 5"]) == "Q\n\nA. 3\nB. 4\nC. 5"


@pytest.mark.parametrize(("row", "message"), [
    ({"question": "q", "options": ["1", "2"], "answer": "C"},
     r"field 'answer' = 'C' names none of the 2 options \(a letter A-B"),
    ({"question": "q", "options": ["1", "2"], "answer": 2}, "field 'answer' = 2 names none of the 2 options"),
    ({"question": "q", "options": ["1"], "answer": "A"}, "1 options; 2 to 10 are read"),
    ({"question": "q", "options": ["1", ""], "answer": "A"}, "an option is empty"),
    ({"question": "q", "options": {"A": "1", "C": "2"}, "answer": "A"}, "option keys A, C are not the letters"),
    ({"question": "q", "answer": "A"}, "no field 'options'"),
    ({"question": " ", "options": ["1", "2"], "answer": "A"}, "field 'question' is missing or empty"),
])
def test_a_bad_row_is_named_by_file_and_line(tmp_path, row, message):
    path = _jsonl(tmp_path / "bad.jsonl", [{"question": "ok", "options": ["1", "2"], "answer": "A"}, row])
    with pytest.raises(DataError, match=rf"bad.jsonl:2: {message}"):
        read_mcq(path)
    assert len(read_mcq(path, skip_bad=True)) == 1


def test_the_task_lists_the_options_and_scores_the_letter(tmp_path):
    rows = [{"question": f"Câu {i}: {i} + 1 = ?", "options": [str(i), str(i + 1), str(i + 2)], "answer": "B",
             "language": "vi"} for i in range(6)]
    _jsonl(tmp_path / "train.jsonl", rows[:4])
    _jsonl(tmp_path / "test.jsonl", rows[4:])
    task = load_task(TaskConfig(name="mcq", path=str(tmp_path), prompt_style="choice", few_shot=1))
    assert (len(task.train), len(task.test), task.eval_reward) == (4, 2, "choice")
    assert task.rewards == {"choice": 1.0, "answer_format": 0.1}
    p = task.test[0]
    assert p.messages[-1]["content"] == ("Câu 4: 4 + 1 = ?\n\nA. 4\nB. 5\nC. 6\nThink briefly, then give the letter "
                                         "of the correct option inside <answer></answer> tags, for example "
                                         "<answer>B</answer>.")
    assert p.messages[1]["content"] == "<answer>B</answer>"  # the few-shot answer, in the same form
    assert (p.answer, p.columns["options"], p.columns["language"]) == ("B", ["4", "5", "6"], "vi")
    # three options: "D" is no option of this row, so "the answer is D" is no choice at all
    texts = ["<answer>B</answer>", "Đáp án: B", "the answer is D", "<answer>C</answer>"]
    total, per_fn = score(resolve_rewards({}, task), [p.messages] * 4, texts, [p.columns] * 4)
    assert per_fn == {"choice": [1.0, 1.0, 0.0, 0.0], "answer_format": [1.0, 0.0, 0.0, 1.0]}
    assert total == pytest.approx([1.1, 1.0, 0.0, 0.1])


def test_evaluation_counts_the_chosen_letter():
    from groupo.eval.evaluate import evaluate
    from groupo.types import Completion

    task = load_task(TaskConfig(name="mcq", path=str(ROOT / "groupo/data/samples/mcq"), prompt_style="choice"))
    replies = {p.answer: f"Đáp án: {p.answer}" for p in task.test}  # right on the first, wrong on the second
    replies[task.test[1].answer] = "Answer: A"

    def sample(problems, params):
        return [[Completion([], [1], [0.0], replies[p.answer], "stop")] * params.n for p in problems]

    res = evaluate(sample, task, task.test)
    assert (res.accuracy, [r["extracted"] for r in res.records]) == (0.5, [task.test[0].answer, "A"])


def test_the_example_set_reads_with_vietnamese_questions():
    train, test = read_mcq(ROOT / "examples/mcq/train.jsonl"), read_mcq(ROOT / "examples/mcq/test.jsonl")
    assert (len(train), len(test)) == (24, 8)
    languages = [r["language"] for r in train + test]
    assert languages.count("vi") > len(languages) / 2 and {"en", "zh"} <= set(languages)
    assert {r["answer"] for r in train} == set("ABCD")
