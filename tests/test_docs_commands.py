"""Every `groupo ...` command shown in README.md and docs/*.md parses and runs, so none can rot.

Commands are the lines of code blocks (fenced, or indented four spaces) that start with `groupo`
or `torchrun ... -m groupo` (continuation lines joined). Each is run in-process from the
repository root, made cheap where it would be slow:

- `train`: `--smoke` is added (groupo/smoke.py); after the command's own overrides the sizes are
  shrunk again (`SHRUNK`), then come the tiny test model, a fresh `run.dir`, the CPU and plain
  progress; overrides naming the user's own data, device or run directory (`DROPPED`) give way
  to the smoke data. `--resume DIR` resumes a finished smoke run.
- `eval`: the tiny model for `--model`, the smoke run for `--run`, the bundled samples for
  `--path`, 2 problems of at most 8 new tokens.
- `config`, `presets` and other commands: as written, a run directory (`runs/...`, `RUN_DIR`,
  `RUN_A`) standing for a finished smoke run, `CONFIG` for the quickstart recipe, `--out` files
  in a temporary folder; `PARSE_ONLY` commands (interactive ones) are only parsed, `DRY_RUN` ones
  (servers) run with `--dry-run`.
- Commands that need what a CPU test machine lacks (torchrun, rollout.engine=vllm) are parsed and
  their configuration validated (`groupo config` with the same items), not run.

Commands other branches are adding may be documented before their code lands here: they are
listed in `PENDING` (prefixes), and only those may fail to parse (the test then skips, naming it).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest
from tiny import save_tiny

from groupo.cli import _parse, build_parser, main
from groupo.smoke import SAMPLE_DIRS, SAMPLES, SMOKE

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Documented commands whose code is on another branch until it is merged; remove an entry once
# the command exists. A prefix with a trailing space matches only that command with arguments.
PENDING: tuple[str, ...] = ()
# commands whose output is a positional argument: its index in the arguments (0 = the command),
# pointed at the test's folder so nothing is written into the repository
OUTPUT_ARG = {"groupo export": 2}
# train overrides that point at the user's data, device or run folder: the smoke run's own win. A
# judge's server and key give way to the tiny model judging in the test's process.
DROPPED = ("task.path=", "task.mix=", "run.dir=", "run.device=", "model.name=", "rewards.judge=",
           "rewards.judge.url=", "rewards.judge.api_key_env=", "rewards.judge.model=")
CONFIG_ONLY = ("rollout.engine=vllm",)  # needs the vllm extra and a model vLLM can serve
PARSE_ONLY = ("groupo chat",)  # interactive: parsed, not run
# a command holding one of these texts needs that module, from the optional extra named; without it
# the test skips, saying so (.ci/run installs each extra and runs these: pytest tests/test_docs_commands.py
# -k trl, -k quantization)
EXTRAS = {"trl.": ("trl", "trl"), "model.quantization=": ("bitsandbytes", "qlora")}
DRY_RUN = ("groupo serve",)  # long-running servers: run with --dry-run (the command they would start)
RUN_DIR_LIKE = re.compile(r"^(RUN_DIR|RUN_[A-Z]|runs/\S*|/shared/runs/\S*)$")  # stands for a run directory
PLACEHOLDERS = {"CONFIG": "configs/quickstart.yaml", "CONFIG.yaml": "configs/quickstart.yaml"}
# sizes a documented train command may raise (train.steps=200): shrunk again after its overrides
SHRUNK = ("train.steps", "train.prompts_per_step", "rollout.group_size", "rollout.max_new_tokens",
          "task.eval_size", "train.max_minutes")


def documented_commands() -> list[tuple[str, str]]:
    """(file name, command) for every groupo command in a code block of the docs."""
    out = []
    for path in DOCS:
        fenced, lang, pending = False, "", ""
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.lstrip().startswith("```"):
                fenced, lang = not fenced, line.strip()[3:]
                continue
            in_code = (fenced and lang in ("", "bash", "sh", "shell", "console")) or (
                not fenced and line.startswith("    "))
            if not in_code:
                pending = ""
                continue
            text = pending + line.strip()
            if text.endswith("\\"):
                pending = text[:-1] + " "
                continue
            pending = ""
            text = re.sub(r"^\$ ", "", text)
            if text == "groupo" or text.startswith("groupo ") or (
                    text.startswith("torchrun ") and " -m groupo " in f"{text} "):
                out.append((path.name, text))
    return out


def _unique(commands: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The first place each command (comments aside) is shown."""
    seen: dict[str, tuple[str, str]] = {}
    for doc, command in commands:
        seen.setdefault(" ".join(shlex.split(command, comments=True)), (doc, command))
    return list(seen.values())


COMMANDS = _unique(documented_commands())
# `groupo plan` times this machine's matmuls for the real model (10-30 s a command): run by .ci/run
# (pytest -m long) beside the other long tests, not by `make test`.
LONG = ("groupo plan",)


def _words(command: str) -> list[str]:
    return shlex.split(command, comments=True)


def _is_pending(command: str) -> bool:
    return any(command.startswith(p) for p in PENDING)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny model and one finished smoke run (for --resume and --run)."""
    root = tmp_path_factory.mktemp("docs")
    tiny = save_tiny(root / "tiny")
    run = root / "finished-run"
    assert main(["train", "--smoke", f"model.name={tiny}", f"run.dir={run}", "run.progress=plain"]) == 0
    return {"tiny": tiny, "run": run, "root": root}


def _train_args(args: list[str], env: dict, run_dir: Path) -> list[str]:
    if "--resume" in args:
        return ["--resume", str(env["run"])]
    kept = [a for a in args if not a.startswith(DROPPED)]
    smoke = [] if "--smoke" in kept else ["--smoke"]
    # the command's own overrides come after --smoke's; the sizes are shrunk again after them
    sizes = [f"{k}={json.dumps(SMOKE[k])}" for k in SHRUNK]
    judge = ([f"rewards.judge.model={env['tiny']}", "rewards.judge.max_tokens=8"]
             if any(a.startswith("rewards.judge") for a in args) else [])
    return [*kept, *smoke, *sizes, f"model.name={env['tiny']}", *judge, f"run.dir={run_dir}", "run.progress=plain",
            "run.device=cpu"]


def _eval_args(args: list[str], env: dict) -> list[str]:
    out, i = [], 0
    task = args[args.index("--task") + 1] if "--task" in args else None
    while i < len(args):
        a = args[i]
        value_of = {"--model": str(env["tiny"]), "--run": str(env["run"]), "--limit": "2",
                    "--path": str(SAMPLES / SAMPLE_DIRS.get(task or "", "."))}
        if a in value_of:
            out += [a, value_of[a]]
            i += 2
            continue
        out.append(a)
        i += 1
    if "--path" not in out and task in SAMPLE_DIRS:
        out += ["--path", str(SAMPLES / SAMPLE_DIRS[task])]
    if "--limit" not in out:
        out += ["--limit", "2"]
    return [*out, "--max-new-tokens", "8"]


def test_the_docs_show_commands():
    shown = {c for _, c in COMMANDS}
    assert len(shown) >= 20
    for needed in ("groupo train", "groupo presets", "groupo train configs/deepseekmath_grpo.yaml --smoke"):
        assert any(c == needed or c.startswith(needed + " ") for c in shown), needed


@pytest.mark.parametrize(("doc", "command"), [
    pytest.param(d, c, marks=[pytest.mark.long] if c.startswith(LONG) else []) for d, c in COMMANDS],
    ids=[f"{d}: {c}" for d, c in COMMANDS])
def test_documented_command_runs(doc, command, env, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    for text, (module, extra) in EXTRAS.items():
        if text in command and importlib.util.find_spec(module) is None:
            pytest.skip(f"{command!r} needs the {extra} extra: pip install -e '.[{extra}]'")
    words = _words(command)
    if words[0] == "torchrun":
        words = ["groupo", *words[words.index("groupo") + 1:]]
    # "[x]" shows an optional argument: run with it; "..." (more of the same) is left out
    args = [PLACEHOLDERS.get(a, a) for a in (w if "=" in w else w.strip("[]") for w in words[1:])
            if a and a != "..."]
    if "--out" in args:  # outputs go to the test's folder
        i = args.index("--out") + 1
        args[i] = str(tmp_path / Path(args[i]).name)
    for prefix, i in OUTPUT_ARG.items():
        if command.startswith(prefix) and len(args) > i:
            args[i] = str(tmp_path / Path(args[i]).name)
    if command.startswith(DRY_RUN) and "--dry-run" not in args:
        cut = args.index("--") if "--" in args else len(args)
        args = [*args[:cut], "--dry-run", *args[cut:]]
    try:  # after a bare "--" come another program's flags (groupo serve ... -- VLLM_ARGS)
        _parse(build_parser(), args[:args.index("--")] if "--" in args else args)
        parsed = True
    except SystemExit:
        parsed = False
    if _is_pending(command) and not parsed:
        pytest.skip(f"{command!r} is listed in PENDING (its code is on another branch)")
    assert parsed, f"{doc}: {command!r} does not parse"
    sub = args[0] if args else "train"
    if command.startswith(PARSE_ONLY):
        return
    if command.startswith("torchrun") or any(a.startswith(CONFIG_ONLY) for a in args):
        assert sub == "train"
        if "--resume" not in args:  # a resumed run's config is its own (parsed above)
            assert main(["config", *args[1:]]) == 0, command
        return
    if sub == "train" or not args:
        run_dir = tmp_path / "run"
        rc = main(["train", *_train_args(args[1:], env, run_dir)])
        assert rc == 0, command
        if "--resume" not in args:
            lines = (run_dir / "metrics.jsonl").read_text().splitlines()
            assert len(lines) == 2, command
    elif sub == "eval":
        assert main(["eval", *_eval_args(args[1:], env)]) == 0, command
        assert "accuracy" in capsys.readouterr().out.lower(), command
    else:  # config, presets, and other commands: a run directory stands for the finished smoke run
        assert main([str(env["run"]) if RUN_DIR_LIKE.match(a) else a for a in args]) == 0, command
