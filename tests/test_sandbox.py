"""Adversarial tests of the sandbox: one test per attack, each scored by the real reward.

Every attack program prints 42 (the reference answer) only if its attack got through, so a
contained attack scores 0 with `python_output`; each test also checks the effect independently
(a listening socket that nothing reached, files that did not appear, a decoy process still
alive ...). Attacks are bounded so that a broken sandbox cannot take the machine down: at most
64 forks or 256 threads, 3 GiB of allocations, 256 MiB of output, sleeps of 30 s.

Each test runs twice: with every mechanism the machine allows ("full"), and as root with the
namespaces switched off ("fallback": unprivileged uid, seccomp socket filter, rlimits, process
group and uid-wide kills).
"""

from __future__ import annotations

import ctypes
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from groupo.rewards import code as code_rewards
from groupo.rewards import python_output_reward
from groupo.sandbox.run import CHILD, UID_BASE, Limits, Sandbox, SandboxError, probe

ROOT = os.getuid() == 0
NAMESPACES = ("netns", "mountns", "pidns", "proc")
TIMEOUT_S = 2.0
PR_SET_CHILD_SUBREAPER = 36
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox needs Linux")


@pytest.fixture(scope="module", params=["full", "fallback"])
def sandbox(request):
    """Meanwhile this test process is a child subreaper that reaps only what it started, like a
    container's PID 1 that does not reap: an orphan the sandbox fails to collect stays a zombie
    of its uid here, which sandbox_processes(zombies=True) sees, on any machine."""
    if request.param == "fallback" and not ROOT:
        pytest.skip("the fallback without namespaces drops privileges only as root")
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    try:
        yield Sandbox(workers=2, disable=NAMESPACES if request.param == "fallback" else ())
    finally:
        _prctl(PR_SET_CHILD_SUBREAPER, 0)


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl")


@pytest.fixture
def attack(sandbox, monkeypatch):
    """Score a program with python_output (reference answer 42) in `sandbox`; (score, Result)."""
    monkeypatch.setattr(code_rewards, "shared_sandbox", lambda workers=0: sandbox)
    code_rewards._CACHE.clear()

    def run(program: str, timeout_s: float = TIMEOUT_S):
        program = textwrap.dedent(program)
        [score] = python_output_reward(completions=[f"```python\n{program}```"], answer=["42"],
                                       timeout_s=timeout_s, sandbox_memory_mb=512)
        [result] = code_rewards.run_programs([program], Limits(timeout_s, timeout_s, 512))  # cached
        assert sandbox.run("print(6 * 7)").stdout == "42\n"  # the trainer side still works
        return score, result

    return run


def sandbox_processes(zombies: bool = False) -> list[str]:
    """Live processes (and zombies if asked) of this test process's sandbox runs: by uid as
    root, else by command line."""
    lo = UID_BASE + 256 * os.getpid()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
        live = re.search(r"^State:\s+(\w)", status, re.M).group(1) != "Z"
        ours = lo <= uid < lo + 256 if ROOT else CHILD.encode() in cmdline
        if (live or zombies) and ours:
            found.append(f"{pid}: {cmdline[:80]!r}")
    return found


def test_protections_are_probed_and_described():
    found = probe()
    text = found.describe()
    assert "privileges:" in text and "network:" in text and "filesystem:" in text
    if ROOT:
        assert "setuid" in found.features  # root is exempt from RLIMIT_NPROC: the uid must change
    assert found.network != "NOT ISOLATED"
    with pytest.raises(ValueError, match="valid: setuid"):
        probe(frozenset({"nonsense"}))


def test_a_correct_program_scores_and_leaves_nothing(attack):
    before = set(Path(tempfile.gettempdir()).glob("groupo-sandbox-*"))
    score, result = attack("""
        with open("scratch.txt", "w") as f:   # the working directory is writable
            f.write("6 * 7")
        print(eval(open("scratch.txt").read()))
    """)
    assert (score, result.returncode, result.stdout) == (1.0, 0, "42\n")
    assert set(Path(tempfile.gettempdir()).glob("groupo-sandbox-*")) <= before  # workdir removed


def test_infinite_loop_hits_the_wall_clock_limit(attack):
    score, result = attack("while True:\n    pass\nprint(42)\n", timeout_s=1.0)
    # the reward gives CPU time as much as wall time: whichever runs out first ends the loop
    # (RLIMIT_CPU's SIGXCPU, 128 + 24, is not "timed out": see the CPU-limit test below)
    assert score == 0.0 and (result.timed_out or result.returncode == 128 + signal.SIGXCPU)
    assert 0.9 < result.wall_s < 2.5


def test_sleeping_forever_hits_the_wall_clock_limit(attack):
    score, result = attack("import time\ntime.sleep(30)\nprint(42)\n", timeout_s=1.0)
    assert score == 0.0 and result.timed_out and result.wall_s < 2.5


def test_cpu_time_limit_kills_a_busy_loop(sandbox):
    result = sandbox.run("while True:\n    pass\n", limits=Limits(wall_s=10, cpu_s=1))
    assert not result.timed_out and result.returncode == 128 + signal.SIGXCPU
    assert result.wall_s < 5


def test_memory_bomb_is_capped(attack):
    score, result = attack("""
        chunks = []
        try:
            for _ in range(3):                       # 3 x 1 GiB if nothing stops it
                chunks.append(bytearray(1 << 30))
        except MemoryError:
            print("capped after", len(chunks))
            raise SystemExit(1)
        print(42)
    """, timeout_s=10.0)
    assert score == 0.0
    assert result.stdout == "capped after 0\n"  # 512 MiB of address space: not even one GiB


def test_fork_bomb_is_capped_and_reaped(attack):
    score, result = attack("""
        import os, time
        forked = 0
        for _ in range(64):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            forked += 1
        print("forked", forked)
        if forked == 64:
            print(42)
    """)
    assert score == 0.0
    forked = int(result.stdout.split()[1])
    assert forked < Limits().processes  # RLIMIT_NPROC (the default limits of python_output)
    assert sandbox_processes() == []  # the sleeping children did not survive the run
    assert sandbox_processes(zombies=True) == []  # and were reaped: zombies count in RLIMIT_NPROC


def test_thread_bomb_is_capped(attack):
    score, result = attack("""
        import threading, time
        started = 0
        try:
            for _ in range(256):
                threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
                started += 1
        except RuntimeError:
            pass
        print("threads", started)
        if started == 256:
            print(42)
    """)
    assert score == 0.0 and int(result.stdout.split()[1]) < Limits().processes


def test_output_flood_is_cut_at_the_cap(attack, sandbox):
    flood = textwrap.dedent("""
        import sys
        chunk = "x" * (1 << 20)
        for _ in range(256):                         # 256 MiB if nothing stops it
            sys.stdout.write(chunk)
        print(42)
    """)
    score, result = attack(flood)
    assert score == 0.0 and result.returncode == 128 + signal.SIGXFSZ
    direct = sandbox.run(flood, limits=Limits(output_bytes=100_000))  # (the reward's cache keeps a tail)
    assert direct.returncode == 128 + signal.SIGXFSZ and len(direct.stdout) == 100_000


def test_deep_recursion_crashes_only_the_child(attack):
    score, result = attack("""
        import json, sys
        sys.setrecursionlimit(10 ** 8)          # lets C code recurse past the end of its stack
        depth = 10 ** 6
        print(len(json.loads("[" * depth + "]" * depth)))
        print(42)
    """)
    assert score == 0.0 and result.returncode == 128 + signal.SIGSEGV


def test_no_file_is_written_or_deleted_outside_the_workdir(attack, sandbox, tmp_path):
    token = secrets.token_hex(8)
    home = Path.home()
    targets = [Path.cwd() / f"escape-{token}", home / f"escape-{token}"]
    guarded = Path(tempfile.mkdtemp(prefix="groupo-victim-"))  # root-owned, 0755
    victim = guarded / "victim.txt"
    victim.write_text("keep me")
    victim.chmod(0o666)  # writable by anyone: only the sandbox's isolation can protect it
    world = Path(tempfile.mkdtemp(prefix="groupo-open-"))
    world.chmod(0o777)
    private = []  # the sandbox's own /tmp and /dev/shm: writable inside, invisible outside
    if "mountns" in sandbox.protections.features:  # world-writable places need the private mounts
        targets += [Path(f"/var/tmp/escape-{token}"), world / f"escape-{token}"]
        private += [Path(f"/tmp/escape-{token}"), Path(f"/dev/shm/escape-{token}")]
    try:
        score, result = attack(f"""
            import os
            for target in {[str(t) for t in private]!r}:
                open(target, "w").write("private")
            done = []
            for target in {[str(t) for t in targets]!r}:
                try:
                    with open(target, "w") as f:
                        f.write("escaped")
                    done.append(target)
                except OSError:
                    pass
            try:
                with open({str(victim)!r}, "w") as f:
                    f.write("overwritten")
                done.append("overwrote the victim")
            except OSError:
                pass
            try:
                os.remove({str(victim)!r})
                done.append("deleted the victim")
            except OSError:
                pass
            print(done)
            if done:
                print(42)
        """)
        assert score == 0.0 and result.stdout == "[]\n"
        assert [t for t in targets + private if t.exists()] == []
        assert victim.read_text() == "keep me"
    finally:
        for t in targets + private:
            t.unlink(missing_ok=True)
        shutil.rmtree(guarded)
        shutil.rmtree(world)


def _needs_minroot(sandbox) -> None:
    """Skip the fallback (no mount namespace: nothing can be hidden there); where a mount namespace
    is made, the minimal root must be in use too."""
    if "mountns" not in sandbox.protections.features:
        pytest.skip("the fallback without a mount namespace cannot hide files")
    assert "minroot" in sandbox.protections.features, sandbox.protections.missing.get("minroot")


def test_the_users_files_are_not_even_readable(attack, sandbox, tmp_path, monkeypatch):
    """A minimal root shows the interpreter, its packages and system libraries only: not the
    working directory (a project's .env and source), the home folder or anything else, even where
    every user may read them. The fallback without namespaces cannot hide them (docs/tools.md)."""
    _needs_minroot(sandbox)
    secret = secrets.token_hex(8)
    env = tmp_path / ".env"
    env.write_text(f"API_KEY={secret}\n")
    env.chmod(0o644)
    readme = Path(__file__).resolve().parents[1] / "README.md"  # the checkout, world-readable
    at_home = Path.home() / f".groupo-test-{secret}"
    at_home.write_text(secret)
    at_home.chmod(0o644)
    monkeypatch.chdir(tmp_path)
    try:
        score, result = attack(f"""
            import os, sys
            seen = []
            for path in {[str(env), str(readme), str(at_home), "/etc/passwd", "/etc/hostname", "/home", "/var",
                          "/opt", "/srv", "/mnt", "/sys"]!r}:
                try:
                    seen.append(path if os.path.isdir(path) and os.listdir(path) else open(path).read()[:40])
                except OSError as e:
                    pass
            import json, numpy                       # the standard library and site-packages still import
            print(sorted(os.listdir("/")), seen)
            if seen:
                print(42)
        """)
    finally:
        at_home.unlink()
    root, seen = result.stdout.split("] [")
    assert score == 0.0 and seen == "]\n" and secret not in result.stdout, result.stdout
    assert set(eval(root + "]")) <= {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp",
                                     "usr", *(p.split("/")[1] for p in (sys.prefix, sys.base_prefix))}


def test_the_project_folder_is_covered_where_it_lies_inside_a_shown_one(sandbox, tmp_path, monkeypatch):
    """A project inside a folder the minimal root shows (a Docker image's /usr/src/app): the
    working directory is covered, and a virtual environment inside it is shown again."""
    _needs_minroot(sandbox)
    from groupo.sandbox import run as sandbox_module

    shown, project = tmp_path / "shown", tmp_path / "shown" / "app"
    (project / ".venv").mkdir(parents=True)
    (shown / "other.txt").write_text("visible")
    (project / "secret.txt").write_text("hidden")
    (project / ".venv" / "marker.txt").write_text("packages")
    for p in (tmp_path, shown, project, project / ".venv"):
        p.chmod(0o755)
    for f in (shown / "other.txt", project / "secret.txt", project / ".venv" / "marker.txt"):
        f.chmod(0o644)
    monkeypatch.setattr(sandbox_module, "PREFIXES", [*sandbox_module.PREFIXES, str(shown), str(project / ".venv")])
    monkeypatch.chdir(project)
    result = sandbox.run(f"""
for f in ("other.txt", "app/secret.txt", "app/.venv/marker.txt"):
    try:
        print(f, open({str(shown)!r} + "/" + f).read())
    except OSError as e:
        print(f, type(e).__name__)
""")
    assert result.stdout.splitlines() == ["other.txt visible", "app/secret.txt FileNotFoundError",
                                          "app/.venv/marker.txt packages"], result.stderr


def test_the_trainers_environment_does_not_reach_the_child(attack, monkeypatch):
    secret = secrets.token_hex(16)
    monkeypatch.setenv("GROUPO_TEST_SECRET", secret)
    score, result = attack(f"""
        import glob, os
        seen = " ".join(f"{{k}}={{v}}" for k, v in os.environ.items())
        for path in glob.glob("/proc/[0-9]*/environ") + ["/proc/{os.getpid()}/environ"]:
            try:
                seen += open(path, "rb").read().decode(errors="replace")
            except OSError:
                pass
        print(seen)
        if "GROUPO_TEST_SECRET" in seen:
            print(42)
    """)
    assert score == 0.0
    assert secret not in result.stdout and secret not in result.stderr


def _addresses() -> list[str]:
    found = {"127.0.0.1"}
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing address
            found.add(s.getsockname()[0])
    except OSError:
        pass
    return sorted(found)


def test_no_network_connection_not_even_to_localhost(attack):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        score, result = attack(f"""
            import socket
            reached = []
            for host in {_addresses()!r}:
                try:
                    socket.create_connection((host, {port}), timeout=1).close()
                    reached.append(host)
                except OSError as e:
                    print(host, type(e).__name__)
            if reached:
                print(42)
        """)
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing connected
    assert score == 0.0 and "Error" in result.stdout


def test_the_trainer_and_its_processes_cannot_be_signalled(attack):
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: received.append(1))
    decoy = subprocess.Popen(["sleep", "30"])
    try:
        score, _ = attack(f"""
            import os, signal
            hit = []
            for pid, sig in (({os.getpid()}, signal.SIGUSR1), ({decoy.pid}, signal.SIGKILL)):
                try:
                    os.kill(pid, sig)
                    hit.append(pid)
                except OSError:
                    pass
            try:
                os.killpg({os.getpgid(0)}, signal.SIGUSR1)
                hit.append("group")
            except OSError:
                pass
            if hit:
                print(42)
        """)
        time.sleep(0.1)
        assert score == 0.0 and received == [] and decoy.poll() is None
    finally:
        signal.signal(signal.SIGUSR1, previous)
        decoy.kill()
        decoy.wait()


def test_no_background_process_survives_the_run(attack):
    score, result = attack("""
        import os, time
        if os.fork() == 0:          # a daemon: new session, parent gone
            os.setsid()
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            os._exit(0)
        print("spawned")
    """)
    assert score == 0.0 and result.ok and result.stdout == "spawned\n"
    deadline = time.monotonic() + 2
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes(zombies=True) == []


def test_orphans_do_not_use_up_the_process_limit(sandbox):
    """Each run leaves an orphan behind; if the sandbox did not reap them, zombies of the slot's
    uid would pile up to RLIMIT_NPROC (3 here) and the fourth run could no longer fork."""
    limits = Limits(TIMEOUT_S, TIMEOUT_S, 512, processes=3)
    orphan = "import os\nif os.fork() == 0:\n    os._exit(0)\nprint('forked')"
    results = [sandbox.run(orphan, limits=limits) for _ in range(5)]
    assert [r.stdout for r in results] == ["forked\n"] * 5, results[-1].stderr
    assert sandbox_processes(zombies=True) == []


def test_programs_run_in_parallel_in_order(sandbox):
    results = sandbox.run_many([f"import time\ntime.sleep(0.3)\nprint({i} * 2)" for i in range(4)])
    assert [r.stdout for r in results] == ["0\n", "2\n", "4\n", "6\n"]


def test_limits_are_validated():
    with pytest.raises(ValueError, match="memory_mb"):
        Limits(memory_mb=16)
    with pytest.raises(ValueError, match="wall_s"):
        Limits(wall_s=0)


@pytest.mark.skipif(not ROOT or not Path("/usr/bin/python3").is_file() or not shutil.which("setpriv"),
                    reason="needs root, setpriv and a system python to act as an unprivileged trainer")
def test_an_unprivileged_trainer_gets_user_namespaces():
    """A non-root trainer (uid 65534, the system python, the two sandbox files copied) takes the
    user-namespace path: its child cannot write a world-writable folder or reach the network."""
    src = Path(CHILD).parent
    with tempfile.TemporaryDirectory(prefix="groupo-userns-") as tmp:
        os.chmod(tmp, 0o777)
        for name in ("run.py", "child.py"):
            shutil.copy(src / name, tmp)
        script = Path(tmp, "trainer.py")
        script.write_text(textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {tmp!r})
            import run as sandbox
            box = sandbox.Sandbox(workers=1)
            print(sorted(box.protections.features))
            r = box.run('''
            import socket
            try:
                open({str(Path(tmp, "escaped"))!r}, "w")
                print("wrote")
            except OSError:
                print("no write")
            try:
                socket.create_connection(("127.0.0.1", 9), timeout=1)
            except OSError as e:
                print(type(e).__name__)
            ''')
            print(r.stdout.split(), r.returncode)
        """))
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                              "/usr/bin/python3", str(script)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == ["['minroot', 'mountns', 'netns', 'pidns', 'proc', 'userns']",
                                           "['no', 'write', 'OSError'] 0"]
        assert not Path(tmp, "escaped").exists()


def test_a_failing_setup_step_is_a_clear_error(sandbox, monkeypatch):
    """The sandbox's own failures raise (they are not the model's fault), naming the step."""
    from groupo.sandbox import run as sandbox_module

    monkeypatch.setattr(sandbox_module, "CHILD", "/nonexistent/child.py")
    with pytest.raises(SandboxError, match="no report"):
        sandbox.run("print(1)")
