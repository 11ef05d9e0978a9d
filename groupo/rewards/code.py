"""Rewards that run or check model-written Python (text in, float out; never raise on model output).

Math solved with code (the "write a program that prints the answer" recipe of configs/code_solver.yaml, with its
softer partial rewards), where the program is the completion's last ```python block:

    python_output    1.0 iff the program runs cleanly in the sandbox and its last printed line
                     equals the reference `answer` numerically ("18.0" = "18"; 1e-9 relative)
    python_runs      1.0 iff the program runs cleanly (exit status 0, no limit hit)
    python_number    1.0 iff it runs cleanly and its last printed line is a number
    code_format      1.0 iff the completion is <think>...</think> followed by one ```python block
    code_tags        0.25 for each of: one <think>, one </think>, one ```python, a closing ``` after it

Code as the answer (the last fenced block, or the whole completion when it has none):

    compiles         1.0 iff the code compiles (a syntax check in-process: nothing is executed)
    lint_clean       1.0 iff ruff finds nothing with rules E4, E7, E9, F (pyflakes and pycodestyle
                     errors, ruff's classic default; project settings ignored)
    tests_pass       the fraction of the sample's `tests` that pass (MBPP asserts, HumanEval check)
    tests_all_pass   1.0 iff every test passes

Programs run in `groupo.sandbox.run` (see there what it protects against). A completion's
program runs once per batch however many of these rewards use it (results are cached by text).

What a program cannot forge: python_output's verdict is the trainer's comparison of the printed
line with a reference answer that never enters the sandbox. tests_pass runs the tests in
`groupo.sandbox.tests_runner`, a process apart from the candidate's that the candidate cannot read or
write: the tests, their setup and a per-run nonce reach only the runner, every comparison runs on
the runner's own builtin objects, and only lines carrying the nonce count. Exiting early, patching
helpers or `unittest`, objects whose == is always true, printing or writing guessed markers to any
descriptor, and reading the caller's frames all score 0 (see tests_runner.py for why).
"""

from __future__ import annotations

import json
import marshal
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from groupo.rewards.base import RewardError, completion_text
from groupo.rewards.extract import parse_number
from groupo.rewards.math import check_reference, is_equivalent
from groupo.sandbox import Limits, Result, runner_program, shared_sandbox

PYTHON_TAGS = ("python", "py", "python3", "")
_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[ \t]*$")
_STRICT = re.compile(r"\s*<think>(?:(?!</?think>).)+</think>[ \t]*\n\s*```python[ \t]*\n(?:(?!```).)+\n[ \t]*```\s*",
                     re.DOTALL)


# ---------------------------------------------------------------------------------------------
# Finding the code


def code_blocks(text: str) -> list[tuple[str, str, bool]]:
    """Fenced blocks of `text` as (language tag, code, closed?); a final unclosed fence (a
    completion cut off by the length limit) counts as a block that runs to the end."""
    blocks, lang, lines = [], None, []
    for line in text.splitlines():
        m = _FENCE.match(line)
        if lang is None and m:
            lang, lines = m.group(1).lower(), []
        elif lang is not None and m and not m.group(1):
            blocks.append((lang, "\n".join(lines) + "\n", True))
            lang = None
        elif lang is not None:
            lines.append(line)
    if lang is not None:
        blocks.append((lang, "\n".join(lines) + "\n", False))
    return blocks


def extract_code(text: str, fallback_to_text: bool = False) -> str | None:
    """The last ```python (or ```py, or untagged) block; else the whole text if
    `fallback_to_text` (completion-style code), else None."""
    for lang, code, _ in reversed(code_blocks(text)):
        if lang in PYTHON_TAGS:
            return code
    return text if fallback_to_text and text.strip() else None


# ---------------------------------------------------------------------------------------------
# Running programs (cached, so that several rewards share one execution)

_CACHE: OrderedDict[tuple[str, Limits], Result] = OrderedDict()
_CACHE_SIZE = 1024
KEEP_CHARS = 4096  # of each stream in cached results (the rewards read the last line): <= 8 MB in all
_cache_lock = threading.Lock()


def run_programs(codes: Sequence[str | None], limits: Limits, workers: int = 0) -> list[Result | None]:
    """Each program's `Result` (None where there is no program), `workers` at a time (0 = one per
    CPU). A program already run with these limits is not run again (python_output, python_runs
    and python_number on one batch share runs); its result keeps the last KEEP_CHARS characters
    of stdout and stderr."""
    with _cache_lock:
        found = {c: _CACHE[(c, limits)] for c in codes if c is not None and (c, limits) in _CACHE}
    todo = list(dict.fromkeys(c for c in codes if c is not None and c not in found))
    if todo:
        fresh = shared_sandbox(workers).run_many(todo, limits=limits)
        fresh = [replace(r, stdout=r.stdout[-KEEP_CHARS:], stderr=r.stderr[-KEEP_CHARS:]) for r in fresh]
        with _cache_lock:
            for code, result in zip(todo, fresh, strict=True):
                _CACHE[(code, limits)] = result
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        found.update(zip(todo, fresh, strict=True))
    return [None if c is None else found[c] for c in codes]


def _limits(timeout_s: float, sandbox_memory_mb: int) -> Limits:
    return Limits(wall_s=timeout_s, cpu_s=timeout_s, memory_mb=sandbox_memory_mb)


def last_line(result: Result | None) -> str | None:
    """The last non-empty line a program that ran cleanly printed, else None."""
    if result is None or not result.ok:
        return None
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    return lines[-1] if lines else None


def _results(completions: list, timeout_s: float, sandbox_memory_mb: int,
             sandbox_workers: int) -> list[Result | None]:
    codes = [extract_code(completion_text(c)) for c in completions]
    return run_programs(codes, _limits(timeout_s, sandbox_memory_mb), sandbox_workers)


# ---------------------------------------------------------------------------------------------
# Math answered by a program


def python_output_reward(completions: list, answer: list, prompts: list | None = None, *,
                         timeout_s: float = 5.0, sandbox_memory_mb: int = 1024, sandbox_workers: int = 0,
                         **kwargs: Any) -> list[float]:
    """1.0 where the program's last printed line equals the reference `answer`, else 0.0.

    TRL-compatible: `python_output_reward(completions=["```python\\nprint(6*7)\\n```"], answer=["42"])`.
    timeout_s: wall-clock and CPU limit per program; sandbox_memory_mb: its address-space limit;
    sandbox_workers: programs run in parallel (0 = one per CPU).
    """
    if len(answer) != len(completions):
        raise RewardError(f"python_output_reward: {len(completions)} completions but {len(answer)} answers")
    refs = [check_reference(a, i, "python_output_reward") for i, a in enumerate(answer)]
    results = _results(completions, timeout_s, sandbox_memory_mb, sandbox_workers)
    out = []
    for result, ref in zip(results, refs, strict=True):
        printed = last_line(result)
        out.append(1.0 if printed is not None and is_equivalent(printed, ref, symbolic=False) else 0.0)
    return out


def python_runs_reward(completions: list, prompts: list | None = None, *, timeout_s: float = 5.0,
                       sandbox_memory_mb: int = 1024, sandbox_workers: int = 0, **kwargs: Any) -> list[float]:
    results = _results(completions, timeout_s, sandbox_memory_mb, sandbox_workers)
    return [1.0 if r is not None and r.ok else 0.0 for r in results]


def python_number_reward(completions: list, prompts: list | None = None, *, timeout_s: float = 5.0,
                         sandbox_memory_mb: int = 1024, sandbox_workers: int = 0, **kwargs: Any) -> list[float]:
    out = []
    for result in _results(completions, timeout_s, sandbox_memory_mb, sandbox_workers):
        printed = last_line(result)
        out.append(1.0 if printed is not None and parse_number(printed) is not None else 0.0)
    return out


def code_format_reward(completions: list, prompts: list | None = None, **kwargs: Any) -> list[float]:
    return [1.0 if _STRICT.fullmatch(completion_text(c)) else 0.0 for c in completions]


def code_tags_reward(completions: list, prompts: list | None = None, **kwargs: Any) -> list[float]:
    out = []
    for c in completions:
        text = completion_text(c)
        opened = [b for b in code_blocks(text) if b[0] == "python"]
        hits = [text.count("<think>") == 1, text.count("</think>") == 1, len(opened) == 1,
                len(opened) == 1 and opened[0][2]]
        out.append(0.25 * sum(hits))
    return out


# ---------------------------------------------------------------------------------------------
# Code as the answer


def compiles_reward(completions: list, prompts: list | None = None, **kwargs: Any) -> list[float]:
    out = []
    for c in completions:
        code = extract_code(completion_text(c), fallback_to_text=True)
        try:
            # compile() only parses and builds bytecode (constant folding is size-capped by
            # CPython), so unlike running, it is safe in the trainer's process.
            ok = code is not None and compile(code, "<completion>", "exec") is not None
        except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
            ok = False
        out.append(1.0 if ok else 0.0)
    return out


def ruff_command() -> list[str]:
    """How to run ruff: the one installed next to this Python, on PATH, or as a module."""
    beside = Path(sys.executable).with_name("ruff")
    if beside.is_file():
        return [str(beside)]
    if found := shutil.which("ruff"):
        return [found]
    try:
        import ruff  # noqa: F401
    except ImportError:
        raise RewardError(f"lint_clean needs the ruff linter: pip install ruff (none next to "
                          f"{sys.executable}, on PATH, or importable)") from None
    return [sys.executable, "-m", "ruff"]


LINT_RULES = ("E4", "E7", "E9", "F")


def lint_clean_reward(completions: list, prompts: list | None = None, *, timeout_s: float = 5.0,
                      lint_rules: Sequence[str] = LINT_RULES, **kwargs: Any) -> list[float]:
    """1.0 where ruff reports no finding for `lint_rules` (ruff rule codes or prefixes; explicit,
    because ruff's own default set changes between versions). One ruff run checks the whole
    batch (ruff only parses the files, so it runs outside the sandbox)."""
    codes = [extract_code(completion_text(c), fallback_to_text=True) for c in completions]
    with tempfile.TemporaryDirectory(prefix="groupo-ruff-") as tmp:
        for i, code in enumerate(codes):
            if code is not None:
                Path(tmp, f"c{i}.py").write_text(code, encoding="utf-8")
        cmd = [*ruff_command(), "check", "--isolated", "--no-cache", "--exit-zero", "--output-format",
               "json", "--select", ",".join(lint_rules), "."]
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True,
                                  timeout=max(30.0, timeout_s * len(codes)))
            findings = json.loads(proc.stdout)
        except (subprocess.TimeoutExpired, json.JSONDecodeError) as e:
            raise RewardError(f"lint_clean: ruff failed ({' '.join(cmd)}): {e}") from e
    dirty = {Path(f["filename"]).name for f in findings}
    return [1.0 if code is not None and f"c{i}.py" not in dirty else 0.0 for i, code in enumerate(codes)]


def _with_prefix(code: str, entry_point: str | None, prefix: str | None) -> str:
    """HumanEval: a completion that only writes the body gets the prompt's signature; one that
    writes the whole function gets the prompt's imports (e.g. `from typing import List`)."""
    if not prefix:
        return code
    if entry_point and re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
        imports = [ln for ln in prefix.splitlines() if ln.startswith(("import ", "from "))]
        return "\n".join(imports) + "\n" + code if imports else code
    return prefix + code


def tests_pass_reward(completions: list, tests: list, prompts: list | None = None, *,
                      test_setup: list | None = None, entry_point: list | None = None,
                      code_prefix: list | None = None, all_or_nothing: bool = False,
                      timeout_s: float = 5.0, sandbox_memory_mb: int = 1024, sandbox_workers: int = 0,
                      **kwargs: Any) -> list[float]:
    """The fraction of each sample's `tests` (code snippets, e.g. MBPP asserts or HumanEval's
    `check(f)`) that pass after the completion's code; with `all_or_nothing`, 1.0 only if all pass.

    Columns: tests (list of snippets per sample), optional test_setup (run after the candidate,
    before the tests),
    entry_point and code_prefix (HumanEval: the function name and the prompt).
    """
    n = len(completions)
    if len(tests) != n:
        raise RewardError(f"tests_pass_reward: {n} completions but {len(tests)} test lists")
    runs: dict[tuple, list[int]] = {}  # (code, setup, tests) -> the samples it scores: run once
    counts = []
    for i, c in enumerate(completions):
        sample_tests = tests[i]
        if not sample_tests or isinstance(sample_tests, str):
            raise RewardError(f"tests_pass_reward: sample {i} needs a non-empty list of test snippets, "
                              f"got {sample_tests!r}")
        counts.append(len(sample_tests))
        code = extract_code(completion_text(c), fallback_to_text=True)
        if code is None:
            continue
        code = _with_prefix(code, entry_point[i] if entry_point else None, code_prefix[i] if code_prefix else None)
        setup = test_setup[i] if test_setup and test_setup[i] else ""
        runs.setdefault((code, setup, tuple(str(t) for t in sample_tests)), []).append(i)
    # a nonce per run: one run's verdict lines say nothing about another's. The tests travel on the
    # runner's stdin, never in a file or the launcher's memory (see tests_runner.py)
    nonces = [secrets.token_hex(16) for _ in runs]
    results = shared_sandbox(sandbox_workers).run_many(
        [runner_program()] * len(runs), files=[{"solution.py": code} for code, _, _ in runs],
        limits=_limits(timeout_s, sandbox_memory_mb),
        stdins=[marshal.dumps((nonce, setup, list(t))) for nonce, (_, setup, t) in zip(nonces, runs, strict=True)])
    passed = [0] * n
    for samples, result, nonce in zip(runs.values(), results, nonces, strict=True):
        lines = set(result.stdout.splitlines())
        for i in samples:
            passed[i] = sum(f"{nonce} {j}" in lines for j in range(counts[i]))
    return [float(p == total) if all_or_nothing else p / total for p, total in zip(passed, counts, strict=True)]


def tests_all_pass_reward(completions: list, tests: list, prompts: list | None = None,
                          **kwargs: Any) -> list[float]:
    return tests_pass_reward(completions, tests, prompts, **{**kwargs, "all_or_nothing": True})


# pytest would collect these as tests wherever they are imported (their names start with "test")
tests_pass_reward.__test__ = tests_all_pass_reward.__test__ = False

CODE_REWARDS = {
    "python_output": python_output_reward,
    "python_runs": python_runs_reward,
    "python_number": python_number_reward,
    "code_format": code_format_reward,
    "code_tags": code_tags_reward,
    "compiles": compiles_reward,
    "lint_clean": lint_clean_reward,
    "tests_pass": tests_pass_reward,
    "tests_all_pass": tests_all_pass_reward,
}
