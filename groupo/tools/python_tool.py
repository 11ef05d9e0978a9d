"""The built-in `python` tool: model-written code, run in groupo's sandbox.

Every call is one sandboxed run (`groupo.sandbox.run`), with the protections and limits of
code rewards: no network, a read-only filesystem, capped time, memory, processes and output.

State across the calls of one episode (a variable defined in the first cell is there in the
second) is kept by replaying: each run executes the episode's earlier successful cells again, with
their output suppressed, then the new cell. A persistent interpreter would be faster, but it would
live outside the sandbox's per-run limits (one process whose memory, CPU time and children
accumulate over the episode, and which the sandbox cannot tear down between calls). Replaying costs
the earlier cells' run time again (all of it within the call's wall-clock limit), and a cell whose
result is not deterministic (random numbers without a seed, the clock) may give other values when
replayed. Cells that failed are not replayed, so a traceback does not repeat in every later call.
"""

from __future__ import annotations

import json
import signal

from groupo.sandbox import Limits, Result, shared_sandbox

# Runs in the sandbox as main.py: the earlier cells (in _cells.json) with stdout/stderr silenced,
# then the new one, all in one namespace, as a notebook would.
_RUNNER = """\
import json as _json, os as _os, sys as _sys
_g = {"__name__": "__main__", "__builtins__": __builtins__}
_out, _err = _sys.stdout, _sys.stderr
with open(_os.devnull, "w") as _null:
    _sys.stdout = _sys.stderr = _null
    for _i, _cell in enumerate(_json.load(open("_cells.json"))):
        exec(compile(_cell, f"<cell {_i + 1}>", "exec"), _g)
    _sys.stdout, _sys.stderr = _out, _err
_out.reconfigure(line_buffering=True)  # what a cell printed before a time limit killed it is kept
_cell = open("_cell.py").read()
exec(compile(_cell, "<cell>", "exec"), _g)
"""


def python(code: str) -> str:
    """Run Python code and return what it prints. Variables from earlier calls are kept.

    Args:
        code: The Python program to run; print the values you need.
    """
    raise RuntimeError("the python tool runs per episode through PythonSession")  # schema only


class PythonSession:
    """One episode's Python cells; `run(code)` -> (output text, ok)."""

    def __init__(self, timeout_s: float, memory_mb: int, workers: int = 0):
        self.limits = Limits(wall_s=timeout_s, cpu_s=timeout_s, memory_mb=memory_mb)
        self.workers = workers
        self.cells: list[str] = []

    def run(self, code: str) -> tuple[str, bool]:
        files = {"_cells.json": json.dumps(self.cells), "_cell.py": code}
        result = shared_sandbox(self.workers).run(_RUNNER, files=files, limits=self.limits)
        if result.ok:
            self.cells.append(code)
        return describe(result, self.limits), result.ok


def describe(result: Result, limits: Limits) -> str:
    """What the model sees of a run: its stdout, then on failure the last line of the traceback
    (e.g. "NameError: name 'x' is not defined") or the limit that stopped it."""
    if result.ok:
        return result.stdout
    if result.timed_out:
        why = f"TimeoutError: the code ran past the {limits.wall_s:g} s limit"
    elif result.returncode > 128:
        sig = result.returncode - 128
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        why = {"SIGXCPU": f"TimeoutError: the code used more than {limits.cpu_s:g} s of CPU",
               "SIGXFSZ": "OutputError: the code printed more than the output limit"}.get(
                   name, f"Killed: the code was killed by {name}")
    else:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        why = lines[-1] if lines else f"Error: exit status {result.returncode}"
    return f"{result.stdout}{why}" if not result.stdout or result.stdout.endswith("\n") else f"{result.stdout}\n{why}"
