"""Run untrusted Python (model-written code) where it cannot hurt the trainer, the machine or the
user's files.

Each execution gets its own process tree, started fresh (`groupo.sandbox.child` is the
launcher that sets it up), with a clean environment and a fresh working directory.

What it protects against, and how:

    infinite loops            wall-clock limit (the launcher kills the tree) + RLIMIT_CPU
    memory bombs              RLIMIT_AS per process (MemoryError, or killed)
    fork and thread bombs     RLIMIT_NPROC on an unprivileged uid of its own (root is exempt from
                              RLIMIT_NPROC, so a root trainer drops the child to a private uid)
    gigabytes of output       RLIMIT_FSIZE on stdout/stderr (they are files): over the cap, SIGXFSZ
    deep recursion            a crash ends only the child; RLIMIT_CORE = 0, so no core files
    writing/deleting files    a mount namespace makes every mount read-only and puts fresh,
                              size-capped tmpfs on /tmp (the working directory) and /dev/shm; they
                              vanish with the namespace. The unprivileged uid cannot write the
                              user's files either
    reading the user's files  a minimal root ("minroot", pivot_root in the mount namespace) shows only
                              the interpreter's installation and virtual environment, the packages,
                              /usr /bin /sbin /lib*, five files of /etc (the dynamic loader's, the
                              time zone, alternatives), /dev's null zero full random urandom, and
                              /proc; the working directory and the home folder are covered where
                              they lie inside one of these. So a project's .env or source cannot be
                              printed into a run's samples, report and metric sinks
    the trainer's environment the child starts with a fixed, clean environment; a fresh /proc (PID
                              namespace) hides the trainer's /proc/PID/environ
    the network               a network namespace with no interfaces up (not even 127.0.0.1);
                              fallback where namespaces are refused: a seccomp filter that fails
                              socket() for every family but AF_UNIX
    signalling the trainer    another uid (root trainer) or a PID namespace (the trainer is not in it)
    leftover processes        a PID namespace: when its init exits the kernel kills the rest; with
                              no PID namespace the process group is killed and then, for a root
                              trainer, every process of the sandbox's uid (kill(-1) as that uid);
                              the launcher is their subreaper and reaps them, so no zombie is left
                              to count against the next run's RLIMIT_NPROC
    setuid programs           PR_SET_NO_NEW_PRIVS and nosuid mounts
    a program's secrets       `stdin` reaches the program from an unlinked file; the launcher and
                              init, which inherit it, are non-dumpable before the program exists
                              and close it, so processes the program starts cannot read it
                              through /proc (the test runner, groupo.sandbox.tests_runner, relies on it)

Which mechanisms a machine allows is probed once per process and logged (`Sandbox.protections`);
each one missing is named there with the reason. As root (CI) all of them are used. A non-root
trainer uses a user namespace instead of a uid change.

What it does not protect against: kernel exploits; reading what the minimal root shows (files
every user may read there: the installed packages, system files under /usr; nothing leaves but
the program's output); total memory, which is bounded only by memory_mb x processes (no cgroup);
CPU contention with the trainer. Without the minimal root (no mount namespace, or pivot_root
refused) the program sees the machine's whole filesystem read-only: every world-readable file,
the working directory included, and Unix-domain sockets the sandbox's uid may open (e.g. the D-Bus
system bus). Without a mount namespace, world-writable directories (/tmp, /var/tmp, /dev/shm) stay
writable; without a PID namespace and not root, a process that leaves its process group survives
the run.
"""

from __future__ import annotations

import logging
import marshal
import os
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

CHILD = str(Path(__file__).with_name("child.py"))
MECHANISMS = ("setuid", "userns", "netns", "mountns", "minroot", "pidns", "proc", "seccomp")
# Sandboxed programs of a root trainer run as uid UID_BASE + 256 * pid + slot (and that gid):
# unused by any account, distinct between trainers and between concurrent runs, so that
# RLIMIT_NPROC counts one run's processes and kill(-1) reaches only them. 1.9e9 lies above
# systemd's dynamic and container ranges (up to 0x6FFFFFFF); UID_BASE + 256 * 2**22 < 2**32 - 1.
UID_BASE = 1_900_000_000
# The interpreter's installation and virtual environment, which a minimal root shows (the launcher,
# started with -S, knows only the installation).
PREFIXES = sorted({sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix})
LAUNCH_GRACE_S = 30.0  # set-up time allowed on top of the wall-clock limit before it is a bug
CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
             "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program): a set-up step or the launcher broke."""


@dataclass(frozen=True)
class Limits:
    """Per-execution limits. Units are in the names."""

    wall_s: float = 5.0          # wall-clock time of the whole run
    cpu_s: float = 5.0           # CPU time per process (RLIMIT_CPU, whole seconds, rounded up)
    memory_mb: int = 1024        # address space per process (RLIMIT_AS)
    processes: int = 32          # processes + threads of the sandbox uid at once (RLIMIT_NPROC)
    output_bytes: int = 1 << 20  # largest file the program writes, stdout and stderr included
    disk_mb: int = 64            # size of the private /tmp and /dev/shm (mount namespace only)
    open_files: int = 64         # file descriptors per process (RLIMIT_NOFILE)

    def __post_init__(self) -> None:
        if self.wall_s <= 0 or self.cpu_s <= 0:
            raise ValueError(f"sandbox limits: wall_s and cpu_s must be > 0, got {self}")
        if self.memory_mb < 128:  # the launcher itself needs ~40 MB of address space
            raise ValueError(f"sandbox limits: memory_mb must be >= 128, got {self.memory_mb}")
        if self.processes < 3 or self.open_files < 16 or self.output_bytes < 1 or self.disk_mb < 1:
            raise ValueError(f"sandbox limits: processes >= 3, open_files >= 16, output_bytes and "
                             f"disk_mb >= 1 needed, got {self}")


@dataclass(frozen=True)
class Result:
    """How one execution ended.

    returncode: the program's exit status: 0 success, 1 an uncaught exception, 128 + N killed by
        signal N (137 SIGKILL, e.g. the wall-clock limit; 152 SIGXCPU; 153 SIGXFSZ, output cap).
    """

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    wall_s: float
    cpu_s: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


@dataclass(frozen=True)
class Protections:
    """The mechanisms in use (`features`) and, for each one not used, why (`missing`)."""

    features: frozenset[str]
    missing: Mapping[str, str]

    @property
    def network(self) -> str:
        if "netns" in self.features:
            return "network namespace"
        return "seccomp socket filter" if "seccomp" in self.features else "NOT ISOLATED"

    @property
    def filesystem(self) -> str:
        if "minroot" in self.features:
            return "minimal root (the interpreter, its packages, system libraries), read-only + private tmpfs"
        return "read-only + private tmpfs" if "mountns" in self.features else "NOT ISOLATED"

    def describe(self) -> str:
        who = ("own unprivileged uid" if "setuid" in self.features else
               "user namespace" if "userns" in self.features else "NOT DROPPED (trainer's uid)")
        parts = [f"privileges: {who}", f"network: {self.network}",
                 f"filesystem: {self.filesystem}",
                 f"processes: {'PID namespace' if 'pidns' in self.features else 'process group'}",
                 "limits: time, CPU, memory, processes, output, files"]
        why = "; ".join(f"{k}: {v}" for k, v in sorted(self.missing.items()))
        return ", ".join(parts) + (f" (unavailable: {why})" if why else "")


# ---------------------------------------------------------------------------------------------
# Starting the launcher


def _private(path: str, flags: int) -> int:
    """Open mode 0600: the program, whose workdir may sit next to these files, cannot read them."""
    return os.open(path, flags, 0o600)


def _stdin(staging: str, data: bytes) -> int:
    """A descriptor reading `data` from a file that no longer has a name (unlinked before the
    launcher starts): only the processes that inherit the descriptor can read it."""
    path = os.path.join(staging, "stdin")
    with open(path, "wb", opener=_private) as f:
        f.write(data)
    fd = os.open(path, os.O_RDONLY)
    os.unlink(path)
    return fd


def _launch(job: dict, staging: str, env: dict[str, str], timeout_s: float,
            stdin: bytes = b"") -> tuple[dict, bytes, bytes]:
    """Run the launcher on `job` in `staging`; (its report, stdout bytes, stderr bytes)."""
    read_fd, write_fd = os.pipe()
    job = {**job, "status_fd": write_fd}
    job_path = os.path.join(staging, "job")
    with open(job_path, "wb", opener=_private) as f:
        marshal.dump(job, f)
    out_path, err_path = os.path.join(staging, "stdout"), os.path.join(staging, "stderr")
    in_fd = _stdin(staging, stdin) if stdin else subprocess.DEVNULL
    try:
        with open(out_path, "wb", opener=_private) as out, open(err_path, "wb", opener=_private) as err:
            proc = subprocess.Popen([sys.executable, "-I", "-S", "-B", CHILD, job_path],
                                    stdin=in_fd, stdout=out, stderr=err, env=env,
                                    cwd=staging, start_new_session=True, pass_fds=(write_fd,))
        os.close(write_fd)
        write_fd = -1
        pidfd = os.pidfd_open(proc.pid)  # exact wake-up; Popen.wait(timeout) polls with sleeps
        try:
            finished = select.select([pidfd], [], [], timeout_s)[0]
        finally:
            os.close(pidfd)
        if not finished:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        os.set_blocking(read_fd, False)
        try:
            raw = os.read(read_fd, 1 << 16)
        except BlockingIOError:
            raw = b""
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
        if in_fd != subprocess.DEVNULL:
            os.close(in_fd)
    stdout, stderr = Path(out_path).read_bytes(), Path(err_path).read_bytes()
    if not finished:
        raise SandboxError(f"the sandbox launcher did not finish within {timeout_s:.0f} s")
    if not raw:
        tail = stderr[-2000:].decode(errors="replace")
        raise SandboxError(f"the sandbox launcher exited with {proc.returncode} and no report: {tail}")
    return marshal.loads(raw), stdout, stderr


class _Slots:
    """Process-wide numbering of concurrent runs, so that each gets its own uid."""

    def __init__(self) -> None:
        self._lock, self._free, self._next = threading.Lock(), [], 0

    def take(self) -> int:
        with self._lock:
            if self._free:
                return self._free.pop()
            if self._next == 256:
                raise SandboxError("more than 256 concurrent sandbox runs in one process")
            self._next += 1
            return self._next - 1

    def give(self, slot: int) -> None:
        with self._lock:
            self._free.append(slot)


_SLOTS = _Slots()


def _ids(uid_base: int, slot: int) -> tuple[int, int]:
    uid = uid_base + 256 * os.getpid() + slot
    return uid, uid


@cache
def probe(disable: frozenset[str] = frozenset(), uid_base: int = UID_BASE) -> Protections:
    """Which isolation mechanisms this machine allows (each tried in a throw-away child), minus
    `disable`. Cached per process; logged once."""
    if sys.platform != "linux":
        raise SandboxError(f"running model-written code needs Linux (namespaces, rlimits, pidfd); "
                           f"this is {sys.platform}")
    unknown = set(disable) - set(MECHANISMS)
    if unknown:
        raise ValueError(f"unknown sandbox mechanism(s) {sorted(unknown)}; valid: {', '.join(MECHANISMS)}")
    root = os.getuid() == 0
    wanted = [m for m in MECHANISMS if m != ("userns" if root else "setuid")]
    uid, gid = _ids(uid_base, 255)
    job = {"probe": [m for m in wanted if m not in disable], "uid": uid, "gid": gid,
           "outer_ids": (os.getuid(), os.getgid()), "features": [], "prefixes": PREFIXES, "hide": _hidden()}
    with tempfile.TemporaryDirectory(prefix="groupo-sandbox-") as staging:
        report, _, _ = _launch(job, staging, dict(CLEAN_ENV), LAUNCH_GRACE_S)
    if "error" in report:
        raise SandboxError(report["error"])
    missing = {m: "disabled" for m in wanted if m in disable}
    missing.update({m: why for m, why in report["probe"].items() if why})
    features = {m for m, why in report["probe"].items() if not why}
    if not root and "userns" not in features:
        features -= {"netns", "mountns", "minroot", "pidns", "proc"}
    if "mountns" not in features:
        features.discard("minroot")
    if "mountns" not in features or "pidns" not in features:
        features.discard("proc")
    if "netns" in features:
        features.discard("seccomp")  # the socket filter is the fallback only
        missing.pop("seccomp", None)
    found = Protections(frozenset(features), missing)
    weak = {"setuid", "userns"}.isdisjoint(features) or found.network == "NOT ISOLATED"
    (log.warning if weak else log.info)("sandbox: %s", found.describe())
    return found


def _hidden() -> list[str]:
    """Folders a minimal root covers where they lie inside a folder it shows: the working
    directory (the project) and the home folder (e.g. a project in /usr/src/app)."""
    try:
        cwd = [os.getcwd()]
    except OSError:  # the working directory was removed: nothing of it to hide
        cwd = []
    return sorted({os.path.abspath(p) for p in (*cwd, os.path.expanduser("~"))})


class Sandbox:
    """Runs Python programs in isolated processes, `workers` at a time.

    limits: the default `Limits` of each run (a run may pass its own).
    workers: parallel executions in `run_many` (default: the CPUs this process may use).
    disable: mechanisms not to use (see MECHANISMS), e.g. to test a fallback.
    site_packages: let programs import the trainer's installed packages (numpy, sympy ...).
    """

    def __init__(self, limits: Limits | None = None, workers: int | None = None, *,
                 disable: Iterable[str] = (), site_packages: bool = True, uid_base: int = UID_BASE):
        self.limits = limits or Limits()
        self.workers = workers or len(os.sched_getaffinity(0))
        self.uid_base = uid_base
        self.protections = probe(frozenset(disable), uid_base)
        paths = sysconfig.get_paths()
        self._site = sorted({paths["purelib"], paths["platlib"]}) if site_packages else []
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox")

    def run(self, code: str, *, files: Mapping[str, str] | None = None,
            limits: Limits | None = None, stdin: bytes = b"") -> Result:
        """Run `code` as main.py, next to `files` (name -> text), with `stdin` on its standard
        input, and return how it ended. Unlike `files`, `stdin` never passes through the
        launcher's memory (the program's ancestors), so a program can keep it from processes it
        starts: see `groupo.sandbox.tests_runner`."""
        limits = limits or self.limits
        features = self.protections.features
        slot = _SLOTS.take()
        uid, gid = _ids(self.uid_base, slot)
        staging = tempfile.mkdtemp(prefix="groupo-sandbox-")
        try:
            workdir = os.path.join(staging, "work")
            os.mkdir(workdir)
            if "setuid" in features:
                os.chmod(staging, 0o711)  # the program may reach work/, not the output files
                os.chown(workdir, uid, gid)
            home = "/tmp" if "mountns" in features else workdir
            all_files = {**(files or {}), "main.py": code}
            job = {"features": sorted(features), "limits": asdict(limits), "files": all_files,
                   "main": "main.py", "workdir": workdir, "uid": uid, "gid": gid,
                   "outer_ids": (os.getuid(), os.getgid()), "site_packages": self._site, "hide": _hidden(),
                   "prefixes": PREFIXES}
            env = {**CLEAN_ENV, "HOME": home, "TMPDIR": home}
            report, out, err = _launch(job, staging, env, limits.wall_s + LAUNCH_GRACE_S, stdin)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            _SLOTS.give(slot)
        if "error" in report:
            raise SandboxError(f"{report['error']} (protections: {self.protections.describe()})")
        return Result(report["returncode"], out.decode(errors="replace"), err.decode(errors="replace"),
                      report["timed_out"], report["wall_s"], report["cpu_s"])

    def run_many(self, codes: Sequence[str], *, files: Sequence[Mapping[str, str] | None] | None = None,
                 limits: Limits | None = None, stdins: Sequence[bytes] | None = None) -> list[Result]:
        """`run` on each program, `workers` at a time; results in the order of `codes`."""
        files = files if files is not None else [None] * len(codes)
        stdins = stdins if stdins is not None else [b""] * len(codes)
        if len(files) != len(codes) or len(stdins) != len(codes):
            raise ValueError(f"run_many: {len(codes)} programs but {len(files)} file sets and "
                             f"{len(stdins)} inputs")
        jobs = [self._pool.submit(self.run, c, files=f, limits=limits, stdin=i)
                for c, f, i in zip(codes, files, stdins, strict=True)]
        return [j.result() for j in jobs]

    def close(self) -> None:
        self._pool.shutdown(wait=True)


_shared: dict[int, Sandbox] = {}
_shared_lock = threading.Lock()


def shared_sandbox(workers: int = 0) -> Sandbox:
    """The process-wide sandbox the code rewards use, with `workers` parallel runs (0 = one per
    CPU); created, probed and logged on first use."""
    with _shared_lock:
        if workers not in _shared:
            _shared[workers] = Sandbox(workers=workers or None)
        return _shared[workers]
