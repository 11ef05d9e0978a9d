"""Tasks answered with code: math solved by a Python program, and the code benchmarks.

    gsm8k_code   GSM8K (task.path as for `gsm8k`), English instruction
    mgsm_code    MGSM in `task.language` (a test set); Chinese instruction for zh, else English
    cmath_code   CMATH (a test set), Chinese instruction
    code_math    bilingual mix from a data root holding gsm8k/, mgsm/ and cmath/ (the layout of
                 the project's shared data): train = GSM8K train (en) + CMATH dev (zh), shuffled;
                 test = GSM8K test (en) and MGSM-zh (zh) alternating
    code_math_zh Chinese only, from a data root holding cmath/ and mgsm/: train = CMATH dev,
                 test = MGSM-zh (GSM8K's test problems in Chinese), both with the Chinese instruction
    mbpp         MBPP (mbpp.jsonl or sanitized-mbpp.json); splits by the upstream task ids:
                 prompt 1-10, test 11-510, validation 511-600, train 601-974
    humaneval    HumanEval.jsonl (test only)

The math tasks ask for <think> reasoning then a ```python block whose last printed line is the
answer (the format of the blog post configs/code_solver.yaml cites), rewarded by `python_output`
plus the format and partial rewards.
With task.prompt_style=python_tool they are asked as episodes with the `python` tool instead
(configs/code_solver_tir.yaml): think, run a program and read what it prints, then answer in
<answer></answer>, rewarded by `accuracy` on that answer.
The code benchmarks are rewarded by the fraction of tests passed and evaluated on all passing.
Code tasks have no worked code solutions, so `task.few_shot` must be 0.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

from groupo.data.builtin import NoSplit, file_task
from groupo.data.loaders import read_cmath, read_gsm8k, read_mgsm, read_records
from groupo.data.task import DataError, Task, subsample
from groupo.types import Message, Problem

MATH_INSTRUCTIONS = {
    "en": ("Solve this problem by writing a Python program that prints the answer. First think "
           "inside <think></think> tags, then write the program in a ```python code block; its last "
           "printed line must be the final answer, a number only. Format:\n"
           "<think>\nyour reasoning\n</think>\n```python\nyour code\n```"),
    "zh": ("请思考并写代码解决上面的数学问题，并在最后使用`print`函数打印答案（最后一行只打印一个数字）。格式：\n"
           "<think>\n你的思考过程\n</think>\n```python\n你的代码\n```"),
}
MATH_REWARDS = {"python_output": 1.0, "code_format": 0.2, "python_number": 0.1, "code_tags": 0.1}
# task.prompt_style=python_tool: the same problems as episodes (episodes.tool_format=python_block):
# think, run a program and see what it prints, then answer; rewarded on the answer.
TOOL_INSTRUCTIONS = {
    "en": ("Solve this problem with Python. First think inside <think></think> tags, then write a program in a "
           "```python code block that prints what you need; you will see what it prints. Then give the final "
           "answer, a number only, inside <answer></answer> tags."),
    "zh": ("请先在<think></think>中思考，然后在```python代码块中写代码并用`print`打印需要的结果，"
           "你会看到代码打印的内容。最后把最终答案（只写一个数字）写在<answer></answer>中。"),
}
TOOL_REWARDS = {"accuracy": 1.0, "answer_format": 0.1}


def math_setup(cfg, language: str) -> tuple[str, dict[str, float], str]:
    """(instruction, default rewards, evaluation reward) of a math-with-code task: the program's
    printed answer, or with task.prompt_style=python_tool the answer after running it as a tool."""
    if cfg.prompt_style == "python_tool":
        return TOOL_INSTRUCTIONS[language], dict(TOOL_REWARDS), "accuracy"
    return MATH_INSTRUCTIONS[language], dict(MATH_REWARDS), "python_output"
MBPP_INSTRUCTION = "Write the function in a ```python code block."
HUMANEVAL_INSTRUCTION = "Complete the following Python function. Write the whole function in a ```python code block."
CODE_REWARDS = {"tests_pass": 1.0}
MBPP_SPLITS = {"prompt": range(1, 11), "test": range(11, 511), "validation": range(511, 601),
               "train": range(601, 975)}


def messages(question: str, instruction: str, system_prompt: str | None) -> list[Message]:
    """[system?] + the user turn: the question, then the instruction (as in groupo.data.prompts)."""
    turns: list[Message] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*turns, {"role": "user", "content": f"{question}\n{instruction}"}]


def _no_few_shot(name: str, cfg) -> None:
    if cfg.few_shot:
        raise DataError(f"task {name!r} has no worked code solutions for few-shot prompts; set task.few_shot=0")


# ---------------------------------------------------------------------------------------------
# Math with code


def _as_code_task(name: str, task: Task, cfg, language: str) -> Task:
    """`task` (built by the math loaders) with the solve-with-Python prompt and rewards."""
    instruction, rewards, eval_reward = math_setup(cfg, language)

    def convert(p: Problem) -> Problem:
        return replace(p, messages=messages(p.columns["question"], instruction, cfg.system_prompt))

    train = task.train if isinstance(task.train, NoSplit) else [convert(p) for p in task.train]
    return replace(task, name=name, train=train, test=[convert(p) for p in task.test],
                   rewards=rewards, eval_reward=eval_reward)


def gsm8k_code_task(cfg) -> Task:
    _no_few_shot("gsm8k_code", cfg)
    return _as_code_task("gsm8k_code", file_task("gsm8k", cfg, read_gsm8k), cfg, "en")


def mgsm_code_task(cfg) -> Task:
    _no_few_shot("mgsm_code", cfg)
    base = file_task(f"mgsm-{cfg.language}", cfg, read_mgsm, f"mgsm_{cfg.language}.tsv", test_only=True)
    return _as_code_task(f"mgsm_code-{cfg.language}", base, cfg, "zh" if cfg.language == "zh" else "en")


def cmath_code_task(cfg) -> Task:
    _no_few_shot("cmath_code", cfg)
    base = file_task("cmath", cfg, read_cmath, "cmath_dev.jsonl", test_only=True)
    return _as_code_task("cmath_code", base, cfg, "zh")


def _problem(row: dict, instruction: str, cfg, pid: str, **extra) -> Problem:
    columns = {k: v for k, v in row.items() if not k.startswith("_")} | extra
    return Problem(messages(row["question"], instruction, cfg.system_prompt), str(row["answer"]), columns, pid)


def code_math_task(cfg) -> Task:
    _no_few_shot("code_math", cfg)
    if not cfg.path:
        raise DataError("task 'code_math' reads a data folder holding gsm8k/, mgsm/ and cmath/: set task.path")
    root = Path(cfg.path).expanduser()
    files = {"gsm8k_train": root / "gsm8k" / "train.jsonl", "gsm8k_test": root / "gsm8k" / "test.jsonl",
             "mgsm_zh": root / "mgsm" / "mgsm_zh.tsv", "cmath": root / "cmath" / "cmath_dev.jsonl"}
    absent = [str(p) for p in files.values() if not p.is_file()]
    if absent:
        raise DataError(f"task 'code_math': missing data file(s) under {root}: {', '.join(absent)}")
    skip = cfg.skip_bad_rows
    (en, rewards, eval_reward), (zh, _, _) = math_setup(cfg, "en"), math_setup(cfg, "zh")
    train = ([(r, en, "en") for r in read_gsm8k(files["gsm8k_train"], skip)]
             + [(r, zh, "zh") for r in read_cmath(files["cmath"], skip)])
    random.Random(f"code_math/{cfg.seed}").shuffle(train)
    train = subsample(train, cfg.train_size, cfg.seed)
    tests_en, tests_zh = read_gsm8k(files["gsm8k_test"], skip), read_mgsm(files["mgsm_zh"], skip)
    pairs = zip([(r, en, "en") for r in tests_en], [(r, zh, "zh") for r in tests_zh], strict=False)
    test = [item for pair in pairs for item in pair][: cfg.eval_size or None]

    def problems(items: list, split: str) -> list[Problem]:
        return [_problem(r, ins, cfg, f"code_math-{split}-{i}", language=lang)
                for i, (r, ins, lang) in enumerate(items)]

    return Task("code_math", problems(train, "train"), problems(test, "test"), rewards, eval_reward)


def code_math_zh_task(cfg) -> Task:
    _no_few_shot("code_math_zh", cfg)
    if not cfg.path:
        raise DataError("task 'code_math_zh' reads a data folder holding cmath/ and mgsm/: set task.path")
    root = Path(cfg.path).expanduser()
    files = {"cmath": root / "cmath" / "cmath_dev.jsonl", "mgsm_zh": root / "mgsm" / "mgsm_zh.tsv"}
    absent = [str(p) for p in files.values() if not p.is_file()]
    if absent:
        raise DataError(f"task 'code_math_zh': missing data file(s) under {root}: {', '.join(absent)}")
    zh, rewards, eval_reward = math_setup(cfg, "zh")
    train = subsample(read_cmath(files["cmath"], cfg.skip_bad_rows), cfg.train_size, cfg.seed)
    test = read_mgsm(files["mgsm_zh"], cfg.skip_bad_rows)[: cfg.eval_size or None]
    return Task("code_math_zh",
                [_problem(r, zh, cfg, f"code_math_zh-train-{i}", language="zh") for i, r in enumerate(train)],
                [_problem(r, zh, cfg, f"code_math_zh-test-{i}", language="zh") for i, r in enumerate(test)],
                rewards, eval_reward)


# ---------------------------------------------------------------------------------------------
# Code benchmarks


def read_mbpp(path: str | Path) -> list[dict]:
    """MBPP rows (mbpp.jsonl, or sanitized-mbpp.json): question (the task with its tests shown, as
    in the MBPP paper's prompt), answer (the reference code), tests, test_setup, task_id."""
    rows = []
    for r in read_records(path):
        text, tests = r.get("text") or r.get("prompt"), r.get("test_list")
        if not isinstance(text, str) or not isinstance(tests, list) or not tests:
            raise DataError(f"{r['_where']}: an MBPP row needs 'text' (or 'prompt') and a non-empty 'test_list'")
        setup = r.get("test_setup_code") or "\n".join(r.get("test_imports") or [])
        question = f"{text}\nYour code should pass these tests:\n" + "\n".join(tests)
        rows.append({"question": question, "answer": r.get("code", ""), "tests": list(tests),
                     "test_setup": setup, "task_id": r.get("task_id"), "_where": r["_where"]})
    return rows


def read_humaneval(path: str | Path) -> list[dict]:
    """HumanEval rows: question (the prompt in a code block), answer (prompt + canonical solution),
    tests ([test + check(entry_point)]), entry_point, code_prefix (the prompt), task_id."""
    rows = []
    for r in read_records(path):
        missing = [k for k in ("prompt", "test", "entry_point") if not isinstance(r.get(k), str)]
        if missing:
            raise DataError(f"{r['_where']}: a HumanEval row needs {', '.join(missing)}")
        rows.append({"question": f"```python\n{r['prompt']}```",
                     "answer": r["prompt"] + r.get("canonical_solution", ""),
                     "tests": [f"{r['test']}\ncheck({r['entry_point']})\n"], "entry_point": r["entry_point"],
                     "code_prefix": r["prompt"], "task_id": r.get("task_id"), "_where": r["_where"]})
    return rows


def _benchmark_file(name: str, cfg, default: str) -> Path:
    if not cfg.path:
        raise DataError(f"task {name!r} reads a file: set task.path to {default} or its folder")
    path = Path(cfg.path).expanduser()
    path = path / default if path.is_dir() else path
    if not path.is_file():
        raise DataError(f"task {name!r}: data file not found: {path}")
    return path


def mbpp_task(cfg) -> Task:
    _no_few_shot("mbpp", cfg)
    path = _benchmark_file("mbpp", cfg, "mbpp.jsonl")
    rows = read_mbpp(path)

    def split(name: str) -> list[dict]:
        if name == "all":
            return rows
        if name not in MBPP_SPLITS:
            raise DataError(f"task 'mbpp': split {name!r} is unknown; valid: {', '.join(MBPP_SPLITS)}, all")
        return [r for r in rows if r["task_id"] in MBPP_SPLITS[name]]

    train = subsample(split(cfg.split), cfg.train_size, cfg.seed)
    test = split(cfg.eval_split)[: cfg.eval_size or None]
    return Task("mbpp", [_problem(r, MBPP_INSTRUCTION, cfg, f"mbpp-{r['task_id']}") for r in train],
                [_problem(r, MBPP_INSTRUCTION, cfg, f"mbpp-{r['task_id']}") for r in test],
                dict(CODE_REWARDS), "tests_all_pass")


def humaneval_task(cfg) -> Task:
    _no_few_shot("humaneval", cfg)
    path = _benchmark_file("humaneval", cfg, "HumanEval.jsonl")
    problems = [_problem(r, HUMANEVAL_INSTRUCTION, cfg, r["task_id"] or f"humaneval-{i}")
                for i, r in enumerate(read_humaneval(path))]
    if cfg.split not in ("test", "all"):
        train: list[Problem] | NoSplit = NoSplit(
            f"task 'humaneval': {path} is a test set and has no {cfg.split!r} split; set task.split=test "
            "to train on it anyway")
    else:
        train = subsample(problems, cfg.train_size, cfg.seed)
    return Task("humaneval", train, problems[: cfg.eval_size or None], dict(CODE_REWARDS), "tests_all_pass")


CODE_TASKS = {
    "gsm8k_code": gsm8k_code_task,
    "mgsm_code": mgsm_code_task,
    "cmath_code": cmath_code_task,
    "code_math": code_math_task,
    "code_math_zh": code_math_zh_task,
    "mbpp": mbpp_task,
    "humaneval": humaneval_task,
}
