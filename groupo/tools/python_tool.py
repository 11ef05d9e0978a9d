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

A cell counts as successful only when the runner got past it: after the cell it writes a marker
(a nonce of the run) to a descriptor of its own. `sys.exit(0)` in a cell ends that cell only
(as in a notebook), and a cell that ends the interpreter some other way (`os._exit(0)`) is not
kept: replayed, either would end every later call before its cell ran, silently.
"""

from __future__ import annotations

import json
import secrets
import signal

from groupo.sandbox import Limits, Result, shared_sandbox

# Runs in the sandbox as main.py: the earlier cells (in _cells.json) with stdout/stderr silenced,
# then the new one, all in one namespace, as a notebook would; then the end marker (MARKER is
# replaced by the run's nonce) on a copy of stderr's descriptor.
_RUNNER = """\
import json as _json, os as _os, sys as _sys
_g = {"__name__": "__main__", "__builtins__": __builtins__}
_out, _err, _end = _sys.stdout, _sys.stderr, _os.dup(2)
def _run(_cell, _name):
    try:
        exec(compile(_cell, _name, "exec"), _g)
    except SystemExit as _e:  # sys.exit(0) ends the cell, not the session
        if _e.code not in (None, 0):
            raise
with open(_os.devnull, "w") as _null:
    _sys.stdout = _sys.stderr = _null
    for _i, _cell in enumerate(_json.load(open("_cells.json"))):
        _run(_cell, f"<cell {_i + 1}>")
    _sys.stdout, _sys.stderr = _out, _err
_out.reconfigure(line_buffering=True)  # what a cell printed before a time limit killed it is kept
_run(open("_cell.py").read(), "<cell>")
_out.flush()
_os.write(_end, b"MARKER")
"""
UNFINISHED = "SystemExit: the program ended before the end of the cell; its variables are not kept"


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
        marker = f"[groupo cell {secrets.token_hex(8)} done]"
        result = shared_sandbox(self.workers).run(_RUNNER.replace("MARKER", marker), files=files, limits=self.limits)
        if result.ok and not result.stderr.endswith(marker):  # os._exit(0), or the marker's descriptor closed
            out = result.stdout if not result.stdout or result.stdout.endswith("\n") else result.stdout + "\n"
            return out + UNFINISHED, False
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
