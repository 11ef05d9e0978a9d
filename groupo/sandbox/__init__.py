"""Where untrusted code runs: model-written programs (code rewards, the python tool) and the tests of
`tests_pass`. Imports nothing from groupo, so the launcher's files can be read and audited alone.

    run.py           the launcher: limits, namespaces, a process tree per program (`Sandbox`)
    child.py         the process inside, started by path (standard library only)
    tests_runner.py  the test runner of `tests_pass`: the candidate's code and the tests in two processes
"""

from __future__ import annotations

import marshal
from functools import cache
from pathlib import Path

from groupo.sandbox.run import Limits, Protections, Result, Sandbox, SandboxError, probe, shared_sandbox

RUNNER_PATH = Path(__file__).with_name("tests_runner.py")


@cache
def runner_program() -> str:
    """The test runner (tests_runner.py) as the sandbox's program, compiled here once: the sandbox
    runs this interpreter, so its code object travels as marshal data and each run skips compiling
    450 lines (~10 ms of a ~100 ms run)."""
    code = compile(RUNNER_PATH.read_text(encoding="utf-8"), str(RUNNER_PATH), "exec")
    return f"import marshal\nexec(marshal.loads(bytes.fromhex({marshal.dumps(code).hex()!r})))\n"


__all__ = ["RUNNER_PATH", "Limits", "Protections", "Result", "Sandbox", "SandboxError", "probe", "runner_program",
           "shared_sandbox"]
