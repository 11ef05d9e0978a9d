"""tests_pass cannot be fooled from inside the candidate: each known way of earning the reward
without passing the tests scores 0, while correct solutions (of every plain result type, with
classes and partial credit) still score what they earn. Runs real sandboxed programs."""

import hashlib
import json
import marshal
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from groupo.rewards.code import tests_pass_reward
from groupo.sandbox import RUNNER_PATH, runner_program
from groupo.sandbox.run import Limits, Sandbox

ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-4, 4) == 0", "assert add(10, 5) == 15"]
HELPER_TESTS = ["import unittest\nunittest.TestCase().assertEqual(add(1, 2), 3)",  # what the patches target
                "import math\nassert math.isclose(add(-4, 4), 0)",
                "import unittest\nunittest.TestCase().assertTrue(add(10, 5) == 15)"]
WRONG = "def add(a, b):\n    return a - b\n"  # -1, -8, 5: passes none of ADD_TESTS

# Every way to score without a right answer: each is a wrong solution that should score 0.
ATTACKS = {
    "stack frame": WRONG + (
        "import sys\n"
        "frame = sys._getframe(0)\n"
        "while frame is not None:\n"  # every constant of every caller: the old harness's marker
        "    for c in frame.f_code.co_consts:\n"
        "        if isinstance(c, str):\n"
        "            for i in range(3):\n"
        "                print(c.strip(), i)\n"
        "                print(c + str(i))\n"
        "    frame = frame.f_back\n"),
    "gc and globals": WRONG + (
        "import gc, re\n"
        "for o in gc.get_objects():\n"
        "    for s in (o if isinstance(o, (list, tuple)) else [o]):\n"
        "        if isinstance(s, (str, bytes)):\n"
        "            s = s.decode(errors='ignore') if isinstance(s, bytes) else s\n"
        "            for h in re.findall(r'[0-9a-f]{32}', s):\n"
        "                for i in range(3):\n"
        "                    print(h, i)\n"),
    "os._exit before the tests": "import os\nos._exit(0)\n" + WRONG,
    "sys.exit before the tests": "import sys\nsys.exit(0)\n" + WRONG,
    "exit() after defining": WRONG + "exit(0)\n",
    "patched helpers": WRONG + (
        "import builtins, unittest, math, operator\n"
        "unittest.TestCase.assertEqual = lambda *a, **k: None\n"
        "unittest.TestCase.assertTrue = lambda *a, **k: None\n"
        "math.isclose = lambda *a, **k: True\n"
        "operator.eq = lambda *a: True\n"
        "builtins.AssertionError = type('Never', (Exception,), {})\n"
        "builtins.exec = lambda *a, **k: None\n"
        "builtins.compile = lambda *a, **k: compile('pass', 'x', 'exec')\n"
        "import sys\n"
        "sys.settrace(lambda *a: None)\n"),
    "always-equal result": (
        "class Anything(int):\n"
        "    def __eq__(self, other):\n        return True\n"
        "    __hash__ = int.__hash__\n"
        "def add(a, b):\n    return Anything(7)\n"),  # an int 7 to the runner: equal to none of 3, 0, 15
    "always-equal object": (
        "class Anything:\n"
        "    def __eq__(self, other):\n        return True\n"
        "    def __bool__(self):\n        return True\n"
        "def add(a, b):\n    return Anything()\n"),
    "printed guesses": WRONG + (
        "for i in range(3):\n"
        "    for guess in ('PASS', 'ok', 'True', '1', 'passed', '0' * 32, 'f' * 32):\n"
        "        print(guess, i)\n        print(f'{guess} {i}')\n"),
    "inherited descriptors": WRONG + (
        "import os\n"
        "for fd in range(256):\n"
        "    for i in range(3):\n"
        "        try:\n"
        "            os.write(fd, f'PASS {i}\\n{i}\\n'.encode())\n"
        "        except OSError:\n"
        "            pass\n"),
    "the runner's descriptors and memory": WRONG + (
        "import os, re\n"
        "found = b''\n"
        "for pid in [os.getppid(), 1] + [int(p) for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    for path in [f'/proc/{pid}/fd/{fd}' for fd in range(64)] + [f'/proc/{pid}/environ']:\n"
        "        try:\n"
        "            with open(path, 'rb') as f:\n"
        "                found += f.read(1 << 20)\n"
        "        except OSError:\n"
        "            pass\n"
        "for h in set(re.findall(rb'[0-9a-f]{32}', found)):\n"
        "    for i in range(3):\n"
        "        os.write(2, h + b' %d\\n' % i)\n"),
    "planted modules": WRONG + (  # were the runner to import them, they would find its nonce
        "import os\n"
        "forge = ('import sys\\nf = sys._getframe()\\nwhile f is not None:\\n'\n"
        "         '    if \"nonce\" in f.f_locals:\\n'\n"
        "         '        for i in range(3):\\n            print(f.f_locals[\"nonce\"], i, flush=True)\\n'\n"
        "         '    f = f.f_back\\n')\n"
        "for folder in {os.getcwd(), os.environ.get('HOME', '/tmp'), '/tmp'}:\n"
        "    for name in ('math', 'unittest', 'operator', 'sitecustomize'):\n"
        "        try:\n"
        "            with open(os.path.join(folder, name + '.py'), 'w') as f:\n"
        "                f.write(forge)\n"
        "        except OSError:\n"
        "            pass\n"),
    "exits inside the call": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "raises SystemExit inside the call": "def add(a, b):\n    raise SystemExit(0)\n",
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_a_wrong_solution_scores_0_however_it_cheats(name):
    code, tests = ATTACKS[name], HELPER_TESTS if name in ("patched helpers", "planted modules") else ADD_TESTS
    assert tests_pass_reward(completions=[f"```python\n{code}```"], tests=[tests], timeout_s=5.0) == [0.0]
    # the same trick beside a right answer still earns it its score: scoring does not depend on
    # what the candidate's process prints, patches or finds (writing garbage into its own pipe to
    # the runner, or exiting, costs a right answer its score: only the candidate loses by it)
    if name in ("stack frame", "gc and globals", "patched helpers", "printed guesses"):
        right = code.replace("return a - b", "return a + b")
        assert tests_pass_reward(completions=[f"```python\n{right}```"], tests=[tests]) == [1.0]


def snoop(nonce: str) -> str:
    """A candidate that reads every byte it can (its own memory through /proc/self/mem, and every
    process's stdin, environment and memory) and reports on stderr what it could open and whether
    the nonce (known to it only by its SHA-256) or the test's expected value is there."""
    return (
        "import hashlib, os, re, sys\n"
        "def add(a, b):\n    return a + b\n"
        "def grab(pid):\n"
        "    who = {os.getpid(): 'self', os.getppid(): 'runner'}.get(pid, pid)\n"
        "    out = []\n"
        "    for what in ('fd/0', 'environ'):\n"
        "        try:\n"
        "            with open(f'/proc/{pid}/{what}', 'rb') as f:\n"
        "                out.append(f.read(1 << 20))\n"
        "            print('opened', who, what, file=sys.stderr)\n"
        "        except OSError:\n"
        "            print('refused', who, what, file=sys.stderr)\n"
        "    try:\n"
        "        maps = open(f'/proc/{pid}/maps').read().splitlines()\n"
        "        mem = open(f'/proc/{pid}/mem', 'rb')\n"
        "        print('opened', who, 'mem', file=sys.stderr)\n"
        "    except OSError:\n"
        "        print('refused', who, 'mem', file=sys.stderr)\n"
        "        return out\n"
        "    for line in maps:\n"
        "        (lo, hi), perms = (int(x, 16) for x in line.split()[0].split('-')), line.split()[1]\n"
        "        if 'r' in perms and hi - lo < 1 << 27:\n"
        "            try:\n"
        "                mem.seek(lo)\n"
        "                out.append(mem.read(hi - lo))\n"
        "            except (OSError, ValueError, OverflowError):\n"
        "                pass\n"
        "    return out\n"
        "pids = sorted({os.getpid(), os.getppid(), 1, *(int(p) for p in os.listdir('/proc') if p.isdigit())})\n"
        "data = [b for pid in pids for b in grab(pid)]\n"
        f"digest = {hashlib.sha256(nonce.encode()).hexdigest()!r}\n"
        "hexes = {h for b in data for h in re.findall(rb'[0-9a-f]{32}', b)}\n"
        "print('nonce found:', any(hashlib.sha256(h).hexdigest() == digest for h in hexes), file=sys.stderr)\n"
        "print('test found:', any(re.search(rb'== 98765[4]321', b) for b in data), file=sys.stderr)\n"
        "print('bytes read:', sum(map(len, data)), file=sys.stderr)\n")


SNOOPED_TESTS = ["assert add(1, 2) == 987654321"]


def check_snoop(stdout: str, stderr: str, nonce: str) -> None:
    report = stderr.splitlines()
    assert "nonce found: False" in report and "test found: False" in report, stderr
    assert int(next(x for x in report if x.startswith("bytes read")).split()[-1]) > 1 << 20  # it did look
    tried = [line.split() for line in report if line.startswith(("opened", "refused"))]
    assert ["opened", "self", "mem"] in tried and ["refused", "runner", "mem"] in tried, report
    assert not [t for t in tried if t[0] == "opened" and t[1] != "self" and t[2] in ("fd/0", "mem")], report
    assert f"{nonce} 0" not in stdout  # and 1 + 2 != 987654321: the test failed


@pytest.mark.parametrize("disable", [(), ("netns", "mountns", "pidns", "proc")], ids=["namespaces", "fallback"])
def test_the_candidate_never_sees_the_tests_or_the_nonce(disable):
    """White box, as root (the sandbox's own uid per run), with and without namespaces."""
    nonce = secrets.token_hex(16)
    box = Sandbox(workers=1, disable=disable)
    result = box.run(runner_program(), files={"solution.py": snoop(nonce)}, limits=Limits(wall_s=60, cpu_s=60),
                     stdin=marshal.dumps((nonce, "", SNOOPED_TESTS)))
    box.close()
    check_snoop(result.stdout, result.stderr, nonce)


def test_the_candidate_never_sees_them_under_an_unprivileged_trainer():
    """The same for a non-root trainer (uid 65534, the system python, the sandbox and runner files
    copied), whose sandbox runs in user namespaces: the candidate is "root" in its own namespace."""
    if os.getuid() != 0 or not shutil.which("setpriv") or not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs root, setpriv and /usr/bin/python3 to become an unprivileged trainer")
    with tempfile.TemporaryDirectory(prefix="groupo-runner-") as tmp:  # pytest's tmp_path is root's alone
        os.chmod(tmp, 0o777)
        stdout, stderr, nonce = _unprivileged_run(Path(tmp))
    check_snoop(stdout, stderr, nonce)


def _unprivileged_run(tmp_path: Path) -> tuple[str, str, str]:
    for name in ("run.py", "child.py", "tests_runner.py"):
        shutil.copy(Path(RUNNER_PATH).with_name(name), tmp_path)
    nonce = secrets.token_hex(16)
    (tmp_path / "payload").write_bytes(marshal.dumps((nonce, "", SNOOPED_TESTS)))
    (tmp_path / "solution.py").write_text(snoop(nonce))
    (tmp_path / "trainer.py").write_text(
        "import json, sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "import run as sandbox\n"
        "box = sandbox.Sandbox(workers=1)\n"
        f"d = {str(tmp_path)!r}\n"
        "r = box.run(open(d + '/tests_runner.py').read(), files={'solution.py': open(d + '/solution.py').read()},\n"
        "            limits=sandbox.Limits(wall_s=60, cpu_s=60), stdin=open(d + '/payload', 'rb').read())\n"
        "print(json.dumps([sorted(box.protections.features), r.stdout, r.stderr]))\n")
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
                          str(tmp_path / "trainer.py")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    features, stdout, stderr = json.loads(out.stdout)
    assert "userns" in features and "setuid" not in features
    return stdout, stderr, nonce


def test_correct_solutions_of_every_plain_type_and_partial_credit():
    code = ("def f(kind):\n"
            "    return {'int': 3, 'float': 0.1 + 0.2, 'str': 'é', 'bytes': b'\\x00\\xff', 'none': None,\n"
            "            'tuple': (1, (2, 'x')), 'set': {1, 2}, 'frozen': frozenset({3}), 'complex': 1 + 2j,\n"
            "            'dict': {(1, 2): [3, {'a': None}]}, 'big': 2 ** 200, 'bool': True,\n"
            "            'nan': float('nan'), 'inf': float('-inf')}[kind]\n"
            "def gen(n):\n    yield from range(n)\n"
            "class Stack:\n"
            "    def __init__(self):\n        self.items = []\n"
            "    def push(self, x):\n        self.items.append(x)\n        return self\n"
            "    def __len__(self):\n        return len(self.items)\n")
    tests = ["assert f('int') == 3 and type(f('int')) is int",
             "import math\nassert math.isclose(f('float'), 0.3) and f('float') != 0.3",
             "assert f('str') == 'é' and f('bytes') == b'\\x00\\xff' and f('none') is None",
             "assert f('tuple') == (1, (2, 'x')) and f('set') == {1, 2} and f('frozen') == frozenset({3})",
             "assert f('complex') == 1 + 2j and f('dict') == {(1, 2): [3, {'a': None}]}",
             "assert f('big') == 2 ** 200 and f('bool') is True",
             "assert f('nan') != f('nan') and f('inf') == -float('inf')",
             "assert list(gen(3)) == [0, 1, 2] and sum(gen(4)) == 6",
             "s = Stack().push(1).push(2)\nassert len(s) == 2 and s.items == [1, 2]",
             "assert f('int') == 4",  # wrong on purpose: 12 of 13 pass
             "def check(candidate):\n    assert candidate('int') + 1 == 4\n    assert -candidate('int') < 0\n"
             "check(f)",
             "try:\n    f('missing')\nexcept KeyError:\n    pass\nelse:\n    raise AssertionError",
             "assert f('str') in ['é'] and 3 in [f('int')]"]
    got = tests_pass_reward(completions=[f"```python\n{code}```"], tests=[tests], timeout_s=10.0)
    assert got == [12 / 13]


def test_a_batch_runs_the_tests_of_each_distinct_solution_once(monkeypatch):
    from groupo.rewards import code as code_rewards

    box = code_rewards.shared_sandbox()
    ran, real = [], box.run_many
    monkeypatch.setattr(box, "run_many", lambda codes, **kw: ran.append(len(codes)) or real(codes, **kw))
    right, wrong = "```python\ndef add(a, b):\n    return a + b\n```", f"```python\n{WRONG}```"
    got = tests_pass_reward(completions=[right, wrong, right, wrong, right], tests=[ADD_TESTS] * 5)
    assert got == [1.0, 0.0, 1.0, 0.0, 1.0] and ran == [2]
