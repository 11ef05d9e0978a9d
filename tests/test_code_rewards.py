"""Correctness tables for the code rewards, and the code tasks on the real datasets.

Expected values are worked out by hand next to each row; the dataset tests use the datasets' own
reference solutions as the second implementation (they must pass their own tests).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from groupo.config import RewardsConfig, SandboxConfig, TaskConfig
from groupo.data import DataError, load_task
from groupo.rewards import (
    REWARDS,
    code_format_reward,
    code_tags_reward,
    compiles_reward,
    lint_clean_reward,
    python_number_reward,
    python_output_reward,
    python_runs_reward,
    resolve_rewards,
    tests_all_pass_reward,
    tests_pass_reward,
)
from groupo.rewards.base import RewardError
from groupo.rewards.code import code_blocks, extract_code

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="needs the shared datasets")


def py(code: str) -> str:
    return f"```python\n{code}\n```"


# ---------------------------------------------------------------------------------------------
# Math answered by a program

OUTPUT_TABLE = [  # (completion, reference answer, expected python_output)
    (py("print(16 - 3 - 4)"), "9", 1.0),                                  # 16 - 3 - 4 = 9
    (py("eggs = 16 - 3 - 4\nprint(eggs * 2)"), "18", 1.0),                # 9 * 2 = 18
    (py("print(36 / 2)"), "18", 1.0),                                     # prints 18.0 = 18
    (py("print(1 / 4)"), "1/4", 1.0),                                     # 0.25 = 1/4
    (py("print(2 * 1000)"), "2,000", 1.0),                                # 2000 = 2,000
    (py("print(0.1 + 0.2)"), "0.3", 1.0),                                 # 0.30000000000000004 ~ 0.3
    (py("print('answer:')\nprint(18)"), "18", 1.0),                       # the last line counts
    ("```py\nprint(18)\n```", "18", 1.0),                                 # ```py tag
    ("```python\nprint(18)\n", "18", 1.0),                                # cut off before the closing fence
    (py("print(9)") + "\nor better:\n" + py("print(18)"), "18", 1.0),     # the last block runs
    (py("print(17)"), "18", 0.0),                                         # wrong number
    (py("print(18)\nprint('done')"), "18", 0.0),                          # last line is not the answer
    (py("print(18)\nraise ValueError('late')"), "18", 0.0),               # crashed after printing
    (py("x = 18"), "18", 0.0),                                            # printed nothing
    (py("print(18"), "18", 0.0),                                          # syntax error
    ("print(18)", "18", 0.0),                                             # no code block
    ("```bash\necho 18\n```", "18", 0.0),                                 # not Python
]


def test_python_output_table():
    completions, answers, expected = zip(*OUTPUT_TABLE, strict=True)
    assert python_output_reward(completions=list(completions), answer=list(answers)) == list(expected)


def test_python_output_is_importable_and_checks_its_reference():
    from groupo.rewards import python_output_reward as imported

    assert imported(completions=[py("print(6 * 7)")], answer=["42"]) == [1.0]
    with pytest.raises(RewardError, match="sample 1 has no reference"):
        python_output_reward(completions=[py("print(1)"), py("print(2)")], answer=["1", ""])
    with pytest.raises(RewardError, match="2 completions but 1 answers"):
        python_output_reward(completions=[py("print(1)"), py("print(2)")], answer=["1"])


def test_partial_credit_tables():
    completions = [
        py("print(18)"),                        # runs, number
        py("print('eighteen')"),                # runs, not a number
        py("print(18)\nimport sys\nsys.exit(0)"),  # exit status 0 is a clean run
        py("print(18)\nimport sys\nsys.exit(2)"),  # exit status 2 is not
        py("1 / 0"),                            # ZeroDivisionError
        "no code at all",
    ]
    assert python_runs_reward(completions=completions) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert python_number_reward(completions=completions) == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0]


def test_format_tables():
    good = "<think>\n16 - 3 - 4 = 9 eggs, 9 * 2 dollars\n</think>\n" + py("print(9 * 2)")
    rows = [  # (completion, code_format, code_tags: 0.25 per <think>, </think>, ```python, closing ```)
        (good, 1.0, 1.0),
        ("  " + good + "\n\n", 1.0, 1.0),                      # surrounding whitespace is fine
        (good + "\nThe answer is 18.", 0.0, 1.0),              # prose after the block
        ("<think></think>\n" + py("print(1)"), 0.0, 1.0),      # empty reasoning
        (py("print(18)"), 0.0, 0.5),                           # no think block: 2 of 4 tags
        ("<think>x</think>\n```python\nprint(1)\n", 0.0, 0.75),  # block never closed: 3 of 4
        ("<think>x</think>\n" + py("print(1)") + "\n" + py("print(2)"), 0.0, 0.5),  # two python blocks
        ("<think>a<think>b</think>\n" + py("print(1)"), 0.0, 0.75),  # <think> twice
        ("<think>x</think>" + py("print(1)"), 0.0, 0.5),       # fence not at a line start: no block
        ("just text", 0.0, 0.0),
    ]
    completions = [r[0] for r in rows]
    assert code_format_reward(completions=completions) == [r[1] for r in rows]
    assert code_tags_reward(completions=completions) == [r[2] for r in rows]


def test_code_extraction():
    text = "intro\n```python\na = 1\n```\n```bash\nls\n```\n```\nb = 2\n```\ntail"
    assert code_blocks(text) == [("python", "a = 1\n", True), ("bash", "ls\n", True), ("", "b = 2\n", True)]
    assert extract_code(text) == "b = 2\n"  # the last Python-or-untagged block
    assert extract_code("```bash\nls\n```") is None
    assert extract_code("def f(): pass", fallback_to_text=True) == "def f(): pass"


# ---------------------------------------------------------------------------------------------
# Code as the answer


def test_compiles_table():
    rows = [
        ("def f(x):\n    return x\n", 1.0),
        (py("print(1)") + "\nSome prose after the block.", 1.0),  # only the block is compiled
        ("def f(x)\n    return x\n", 0.0),                         # missing colon
        ("return 5", 0.0),                                         # parses, but compile() rejects it
        ("x = 1\x00", 0.0),                                        # a null byte
        ("(" * 1000 + ")" * 1000, 0.0),                            # too deeply nested for the parser
        ("", 0.0),
    ]
    assert compiles_reward(completions=[r[0] for r in rows]) == [r[1] for r in rows]


def test_lint_clean_table():
    rows = [
        ("x = 1\n", 1.0),
        (py("import os\nprint(os.sep)"), 1.0),
        ("import os\n", 0.0),                       # F401 unused import
        ("print(undefined_name)\n", 0.0),           # F821 undefined name
        ("x = None\nif x == None:\n    pass\n", 0.0),  # E711 comparison to None
        ("x = 1; y = 2\n", 0.0),                    # E702 two statements on a line
        ("def f(:\n", 0.0),                         # syntax error
    ]
    assert lint_clean_reward(completions=[r[0] for r in rows]) == [r[1] for r in rows]


ADD_TESTS = ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(-1, 1) == 0"]
TESTS_TABLE = [  # (completion, fraction of ADD_TESTS passed)
    (py("def add(a, b):\n    return a + b"), 3 / 3),
    ("def add(a, b):\n    return a + b\n", 3 / 3),          # no fence: the text is the code
    (py("def add(a, b):\n    return 3"), 1 / 3),            # 3 == 3; 3 != 4; 3 != 0
    (py("def add(a, b):\n    return abs(a) + b"), 2 / 3),   # 3, 4 right; abs(-1) + 1 = 2 != 0
    (py("def add(a, b) return a + b"), 0.0),                # syntax error
    (py("import sys\nsys.exit(0)"), 0.0),                   # leaves before any test runs
    (py("import os\nos._exit(0)"), 0.0),
    (py("raise ImportError('nope')"), 0.0),
    (py("def add(a, b):\n    while True:\n        pass"), 0.0),  # hangs in the first test
    (py("import builtins\nbuiltins.exec = lambda *a, **k: None\nprint('deadbeef 0')"), 0.0),  # forgeries
]


def test_tests_pass_table():
    completions = [r[0] for r in TESTS_TABLE]
    tests = [ADD_TESTS] * len(completions)
    assert tests_pass_reward(completions=completions, tests=tests, timeout_s=1.0) == [r[1] for r in TESTS_TABLE]
    assert tests_all_pass_reward(completions=completions, tests=tests, timeout_s=1.0) == [
        float(r[1] == 1.0) for r in TESTS_TABLE]


def test_tests_pass_setup_and_humaneval_prefix():
    prefix = 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum."""\n'
    check = "def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n\ncheck(total)\n"
    completions = ["    return sum(xs)\n",                                   # body only: prompt + body
                   py("def total(xs: List[int]) -> int:\n    return sum(xs)"),  # whole function: + imports
                   "    return 0\n"]                                          # wrong: [1, 2] -> 0 != 3
    got = tests_pass_reward(completions=completions, tests=[[check]] * 3, entry_point=["total"] * 3,
                            code_prefix=[prefix] * 3)
    assert got == [1.0, 1.0, 0.0]
    # test_setup runs between the candidate and the tests: it may use the candidate's names
    got = tests_pass_reward(completions=[py("class Box:\n    def __init__(self, n):\n        self.n = n")],
                            tests=[["assert doubled.n == 12"]], test_setup=["doubled = Box(2 * 6)"])
    assert got == [1.0]  # Box(12).n == 12
    with pytest.raises(RewardError, match="sample 0 needs a non-empty list"):
        tests_pass_reward(completions=["x"], tests=[[]])


def test_rewards_are_registered_and_get_the_run_settings():
    names = {"python_output", "python_runs", "python_number", "code_format", "code_tags", "compiles",
             "lint_clean", "tests_pass", "tests_all_pass"}
    assert names <= set(REWARDS)
    resolved = resolve_rewards(RewardsConfig(timeout_s=1.5), {"python_output": 1.0, "code_format": 0.2},
                               sandbox=SandboxConfig(workers=3, memory_mb=512))
    fn, weight = resolved["python_output"]
    assert weight == 1.0 and fn.keywords["timeout_s"] == 1.5  # rewards.timeout_s bounds each program
    assert (fn.keywords["sandbox_workers"], fn.keywords["sandbox_memory_mb"]) == (3, 512)  # the sandbox section


# ---------------------------------------------------------------------------------------------
# Tasks on the real datasets


def task(name: str, path: Path, **kw):
    return load_task(TaskConfig(name=name, path=str(path), eval_size=0, **kw))


@needs_data
def test_math_code_tasks():
    gsm = task("gsm8k_code", DATA / "gsm8k")
    assert (len(gsm.train), len(gsm.test)) == (7473, 1319)
    first = gsm.test[0]
    assert first.answer == "18" and first.messages[-1]["content"].startswith("Janet")
    assert "```python" in first.messages[-1]["content"] and "<think>" in first.messages[-1]["content"]
    assert gsm.eval_reward == "python_output" and gsm.rewards["python_output"] == 1.0

    zh = task("mgsm_code", DATA / "mgsm", language="zh", split="test")
    assert len(zh.test) == 250 and zh.test[0].answer == "18"
    assert "请思考并写代码" in zh.test[0].messages[-1]["content"]

    cmath = task("cmath_code", DATA / "cmath", split="test")
    assert len(cmath.test) == 600 and "print" in cmath.test[0].messages[-1]["content"]

    mix = task("code_math", DATA, train_size=0)
    assert len(mix.train) == 7473 + 600  # GSM8K train + CMATH dev
    assert {p.columns["language"] for p in mix.train} == {"en", "zh"}
    # test alternates GSM8K test and MGSM-zh, whose row i is GSM8K test row i translated
    assert [p.columns["language"] for p in mix.test[:4]] == ["en", "zh", "en", "zh"]
    assert mix.test[0].answer == mix.test[1].answer == "18"


@needs_data
def test_mbpp_task_and_its_reference_solutions_pass():
    mbpp = task("mbpp", DATA / "mbpp", split="train", eval_split="test")
    assert (len(mbpp.train), len(mbpp.test)) == (374, 500)  # ids 601-974 and 11-510
    first = mbpp.test[0]
    assert first.id == "mbpp-11" and len(first.columns["tests"]) == 3
    assert all(t in first.messages[-1]["content"] for t in first.columns["tests"])
    # the first 12, and task 367, whose test setup builds trees from the candidate's Node class
    sample = mbpp.test[:12] + [p for p in mbpp.test if p.id == "mbpp-367"]
    assert len(sample) == 13
    got = tests_pass_reward(completions=[py(p.answer) for p in sample],
                            tests=[p.columns["tests"] for p in sample],
                            test_setup=[p.columns["test_setup"] for p in sample])
    assert got == [1.0] * len(sample)
    wrong = tests_pass_reward(completions=[py("def unrelated():\n    pass")], tests=[first.columns["tests"]])
    assert wrong == [0.0]


@needs_data
def test_humaneval_task_and_its_reference_solutions_pass():
    he = task("humaneval", DATA / "humaneval", split="test")
    assert len(he.test) == 164
    sample = he.test[:8]
    cols = {k: [p.columns[k] for p in sample] for k in ("tests", "entry_point", "code_prefix")}
    whole = [py(p.answer) for p in sample]                               # prompt + canonical body
    body = [p.answer[len(p.columns["code_prefix"]):] for p in sample]   # completion-style body
    assert tests_pass_reward(completions=whole, **cols) == [1.0] * len(sample)
    assert tests_pass_reward(completions=body, **cols) == [1.0] * len(sample)
    with pytest.raises(DataError, match="has no 'train' split"):
        len(task("humaneval", DATA / "humaneval").train)


def test_code_tasks_refuse_few_shot(tmp_path):
    with pytest.raises(DataError, match="few_shot=0"):
        task("gsm8k_code", tmp_path, few_shot=2)
    with pytest.raises(DataError, match=r"set task\.path"):
        load_task(TaskConfig(name="mbpp", path=None))


def test_a_batch_runs_each_distinct_program_once(monkeypatch):
    """python_runs then python_number on one batch of 12 completions (6 distinct programs): 6 runs."""
    from groupo.rewards import code as code_rewards

    code_rewards._CACHE.clear()
    box = code_rewards.shared_sandbox()
    ran, real = [], box.run_many
    monkeypatch.setattr(box, "run_many", lambda codes, **kw: ran.append(len(codes)) or real(codes, **kw))
    completions = [py(f"print({i})") for i in range(6)] * 2
    assert python_runs_reward(completions=completions) == [1.0] * 12
    assert python_number_reward(completions=completions) == [1.0] * 12
    assert ran == [6]
