"""The sandbox launcher: sets up one isolated execution, runs the program, reports how it ended.

`groupo.sandbox.run` starts this file by path as ``python -I -S -B child.py JOB``:
isolated mode (no PYTHON* variables, no user site, the script's folder is not put on sys.path, so
no file next to it can shadow the standard library), no site-packages and standard-library
imports only, which keeps start-up near 15 ms. JOB is a `marshal` file the parent wrote.
The process tree of one execution:

    launcher   root or the trainer's user, its own session: sets up, supervises, reports
      init     PID 1 of a new PID namespace (when available): reaps; when it exits the kernel
               kills every process left in the namespace
        program  unprivileged: runs the code in this already-started interpreter

Setup order matters: namespaces are made while privileged; for a non-root trainer the user
namespace comes before RLIMIT_NPROC is lowered (its count would otherwise include all of the
user's processes); mounts (the minimal root: new_root) before privileges drop; the seccomp
filter last.

(Longer than most files: the launcher runs as a script whose folder `-I` keeps off sys.path, so
every setup step lives in this one file.)
"""

import ctypes
import marshal
import os
import resource
import select
import sys
import time

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 1 << 12, 1 << 14, 1 << 18
MNT_DETACH = 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
# The minimal root ("minroot"): what running Python needs besides the interpreter's own folders
# (sandbox_view): system programs and libraries (the dynamic loader, libc, the libraries of
# extension modules and of programs a model may start) and the loader's configuration; /dev's
# harmless devices; /proc. Nothing else of the machine: no home folder, no working directory.
SYSTEM_VIEW = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache",
               "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/alternatives")
DEVICES = ("null", "zero", "full", "random", "urandom")
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, AT_RECURSIVE, AT_FDCWD = 1, 2, 0x8000, -100
SYS_MOUNT_SETATTR = 442  # one number on every architecture (Linux 5.12+)
PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 4, 22, 36, 38
SIGKILL, SIGXFSZ, SIG_DFL = 9, 25, 0  # numbers, not the signal module: it imports enum (~5 ms)
# architecture -> (AUDIT_ARCH_*, __NR_socket, __NR_io_uring_setup) for the seccomp filter
SECCOMP_ARCH = {"x86_64": (0xC000003E, 41, 425), "aarch64": (0xC00000B7, 198, 425)}

_libc = ctypes.CDLL(None, use_errno=True)


def _ok(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _mount(src: str, target: str, fstype: str, flags: int, data: str | None = None) -> None:
    _ok(_libc.mount(src.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(flags),
                    data.encode() if data else None), f"mount {fstype} on {target}")


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


# ---------------------------------------------------------------------------------------------
# The isolation steps (each is also a probe: it raises OSError where the machine forbids it)


def unshare(flags: int) -> None:
    """New namespaces; without root they go inside a new user namespace mapping us to its root."""
    uid, gid = os.getuid(), os.getgid()
    if uid != 0:
        flags |= CLONE_NEWUSER
    _ok(_libc.unshare(flags), "unshare")
    if uid != 0:
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {uid} 1")
        _write("/proc/self/gid_map", f"0 {gid} 1")


def private_filesystem(disk_mb: int, view: list[str] | None = None, hide: list[str] = ()) -> None:
    """In a new mount namespace: every mount read-only, fresh size-capped tmpfs on /tmp, /dev/shm.
    With `view` (minroot): the root is first replaced by one that shows only those host paths
    (new_root), and `hide` is covered where it lies inside them."""
    _set_attr("/", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0)
    if view is None:
        for path in ("/tmp", "/dev/shm"):
            if os.path.isdir(path):
                _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"size={disk_mb}m,mode=1777")
        return
    new_root(view, hide, disk_mb)
    _set_attr("/", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0)
    for path in ("/tmp", "/dev/shm"):  # the scratch mounts only, not what is shown inside them
        _set_attr(path, 0, MOUNT_ATTR_RDONLY, recursive=False)


def _set_attr(path: str, on: int, off: int, recursive: bool = True) -> None:
    """mount_setattr: set the attributes `on` and clear `off` on the mount at `path` (and every
    mount under it), making them private (no mount event leaves this namespace)."""
    attr = _MountAttr(on, off, MS_PRIVATE, 0)
    _ok(_libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD), path.encode(),
                      ctypes.c_uint(AT_RECURSIVE if recursive else 0), ctypes.byref(attr),
                      ctypes.c_size_t(ctypes.sizeof(attr))), f"mount_setattr({path})")


def sandbox_view(job: dict) -> list[str]:
    """The host paths the minimal root shows: the interpreter's installation and the trainer's
    virtual environment (`job["prefixes"]`: with -S this process does not know the latter), its
    import path, the packages programs may import (`job["site_packages"]`), and SYSTEM_VIEW."""
    paths = {sys.base_prefix, sys.base_exec_prefix, *job.get("prefixes", ()), *sys.path,
             *job.get("site_packages", ()), *SYSTEM_VIEW}
    return sorted(os.path.abspath(p) for p in paths if p and os.path.lexists(p))


def new_root(view: list[str], hide: list[str], disk_mb: int) -> None:
    """Make the root a fresh tmpfs that shows `view` (bind mounts at the same paths), the devices
    of DEVICES, /proc, and size-capped tmpfs on /tmp and /dev/shm; then detach the machine's root
    (pivot_root: no way back to it, unlike chroot). A folder of `hide` (the trainer's working
    directory and home) inside a shown one is covered by an empty tmpfs; what `view` has inside a
    covered folder (a virtual environment in the project, or in /tmp) is shown again on top."""
    root = os.getcwd()  # the launcher's staging folder: nothing of `view` lies under it
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    shown = _outermost(view)
    for path in shown:
        _show(path, root + path)
    _cover(root, "/tmp", f"size={disk_mb}m,mode=1777", view)
    for path in hide:
        if path != "/" and any(path.startswith(q + "/") or path == q for q in shown) and os.path.isdir(root + path):
            _cover(root, path, "size=64k,mode=755", view)
    dev = root + "/dev"
    _cover(root, "/dev", "size=64k,mode=755", [])
    for name in DEVICES:
        if os.path.exists(f"/dev/{name}"):
            _show(f"/dev/{name}", f"{dev}/{name}")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")
    _cover(root, "/dev/shm", f"size={disk_mb}m,mode=1777", [])
    # The machine's /proc, until the program side mounts its PID namespace's own over it (fresh_proc:
    # a user namespace may mount a proc only where one is already fully visible).
    _show("/proc", root + "/proc")
    pivot_root = SYS_PIVOT_ROOT.get(os.uname().machine)
    if pivot_root is None:
        raise OSError(0, f"pivot_root: no syscall number for {os.uname().machine}")
    os.chdir(root)
    _ok(_libc.syscall(ctypes.c_long(pivot_root), b".", b"."), "pivot_root")
    _ok(_libc.umount2(b".", MNT_DETACH), "umount2(the old root)")
    os.chdir("/")


def _cover(root: str, path: str, options: str, view: list[str]) -> None:
    """A fresh tmpfs at `path` of the new root, with the paths of `view` inside it shown on top."""
    os.makedirs(root + path, exist_ok=True)
    _mount("tmpfs", root + path, "tmpfs", MS_NOSUID | MS_NODEV, options)
    for inner in _outermost([p for p in view if p.startswith(path + "/")]):
        _show(inner, root + inner)


def _outermost(paths: list[str]) -> list[str]:
    """`paths` without those inside another of them (shown with it)."""
    out: list[str] = []
    for p in sorted(paths):
        if not any(p == q or p.startswith(q + "/") for q in out):
            out.append(p)
    return out


def _show(src: str, dst: str) -> None:
    """Bind the host's `src` at `dst` (a symbolic link is copied as a link: /lib -> usr/lib)."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.islink(src):
        if not os.path.lexists(dst):
            os.symlink(os.readlink(src), dst)
        return
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    elif not os.path.exists(dst):
        open(dst, "w").close()
    _mount(src, dst, "", MS_BIND | MS_REC)


def fresh_proc() -> None:
    """A /proc that shows only this PID namespace (hides the trainer and its environ)."""
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)  # writable: drop_privileges writes maps


def drop_privileges(job: dict) -> None:
    """Root: become the slot's own unprivileged uid. Non-root: enter a nested user namespace,
    which holds no capability over the mount, network and PID namespaces made above."""
    if "setuid" in job["features"]:
        uid, gid = job["uid"], job["gid"]
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        # a uid change clears "dumpable", which would hide /proc/self/fd (used by reachable())
        _ok(_libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
    elif "userns" in job["features"]:
        outer_uid, outer_gid = job["outer_ids"]
        uid, gid = os.getuid(), os.getgid()
        _ok(_libc.unshare(CLONE_NEWUSER), "unshare(user)")
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{outer_uid} {uid} 1")
        _write("/proc/self/gid_map", f"{outer_gid} {gid} 1")
    _ok(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def no_sockets() -> None:
    """The network fallback: a seccomp filter failing socket() for every family but AF_UNIX, and
    io_uring_setup (io_uring can open sockets too), with EPERM. Needs PR_SET_NO_NEW_PRIVS first.
    Hand-written BPF because libseccomp is not a Python dependency we can count on."""
    arch = os.uname().machine
    if arch not in SECCOMP_ARCH:
        raise OSError(0, f"seccomp filter: no syscall table for {arch}")
    audit_arch, nr_socket, nr_io_uring = SECCOMP_ARCH[arch]
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, deny, kill = 0x7FFF0000, 0x00050000 | 1, 0x80000000  # ERRNO(EPERM), KILL_PROCESS
    prog = [
        (ld, 0, 0, 4), (jeq, 1, 0, audit_arch), (ret, 0, 0, kill),  # other ABIs (i386, x32): kill
        (ld, 0, 0, 0), (jge, 4, 0, 0x40000000),                     # x32 syscall numbers: deny
        (jeq, 0, 2, nr_socket), (ld, 0, 0, 16), (jeq, 2, 1, 1),     # socket(AF_UNIX, ...) only
        (jeq, 0, 1, nr_io_uring), (ret, 0, 0, deny), (ret, 0, 0, allow),
    ]
    filters = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), filters)
    _ok(_libc.prctl(PR_SET_SECCOMP, 2, ctypes.byref(fprog), 0, 0), "prctl(PR_SET_SECCOMP)")


def set_limits(limits: dict) -> None:
    cpu = max(1, int(-(-limits["cpu_s"] // 1)))
    for res, soft, hard in (
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL one second later
        (resource.RLIMIT_AS, limits["memory_mb"] << 20, limits["memory_mb"] << 20),
        (resource.RLIMIT_NPROC, limits["processes"], limits["processes"]),
        (resource.RLIMIT_FSIZE, limits["output_bytes"], limits["output_bytes"]),
        (resource.RLIMIT_NOFILE, limits["open_files"], limits["open_files"]),
    ):
        resource.setrlimit(res, (soft, hard))


def closed_to_others(path: str) -> bool:
    """Whether an unprivileged stranger cannot list `path` (e.g. a Python installed under /root)."""
    parts = path.rstrip("/").split("/")
    search = all(os.stat("/".join(parts[:i]) or "/").st_mode & 0o001 for i in range(1, len(parts)))
    return not (search and os.stat(path).st_mode & 0o005 == 0o005)


def aliases_for(paths: list[str]) -> dict[str, str]:
    """path -> /proc/self/fd/N for each directory closed to others: the descriptor, opened while
    still root, lets the dropped uid import from it without the search permission on its parents."""
    aliases: dict[str, str] = {}
    for p in sorted(paths):  # parents first; a folder inside an aliased one needs no descriptor
        if os.path.isdir(p) and _alias(p, aliases) == p and closed_to_others(p):
            aliases[p] = f"/proc/self/fd/{os.open(p, os.O_RDONLY | os.O_DIRECTORY)}"
    return aliases


def _alias(path: str, aliases: dict[str, str]) -> str:
    for real, alias in aliases.items():
        if path == real or path.startswith(real + "/"):
            return alias + path[len(real):]
    return path


# ---------------------------------------------------------------------------------------------
# One execution


def run_program(job: dict, sys_path: list[str], aliases: dict[str, str]) -> None:
    """Run the program as `__main__` in this interpreter; the interpreter then exits as python does."""
    sys.path[:] = [os.getcwd(), *(_alias(p, aliases) for p in sys_path)]
    for module in list(sys.modules.values()):  # packages already imported (encodings, collections)
        path = getattr(module, "__path__", None)
        if isinstance(path, list):
            path[:] = [_alias(p, aliases) for p in path]
    sys.path_importer_cache.clear()
    _libc.signal(SIGXFSZ, SIG_DFL)  # python ignores SIGXFSZ: an over-cap write should end the run
    import builtins

    builtins.exit = builtins.quit = sys.exit  # `site` defines these; -S skipped it
    name = job["main"]
    module = type(sys)("__main__")
    module.__file__ = name
    sys.modules["__main__"] = module
    sys.argv = [name]
    try:
        exec(compile(job["files"][name], name, "exec"), module.__dict__)
    except SystemExit:
        raise
    except BaseException as e:
        import linecache
        import traceback

        source = job["files"][name]  # the program is not on disk: give tracebacks its lines
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)  # without the launcher's frame
        raise SystemExit(1) from None


def init(pid: int) -> None:
    """PID 1: reap every child until the program exits, then exit with its status (128 + signal
    for a signal, the shell convention), which makes the kernel kill what is left in the namespace."""
    while True:
        done, status = os.waitpid(-1, 0)
        if done == pid:
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)


def kill_user(uid: int) -> None:
    """Kill every process of the sandbox's uid (those that left the process group) by sending
    kill(-1, SIGKILL) from a child running as that uid, until none is left. Meanwhile reap the
    orphans as they die: kill(-1) still counts a zombie, so the killer would never see "none"."""
    killer = os.fork()
    if killer == 0:
        try:
            os.setresuid(uid, uid, uid)
            for _ in range(1000):
                os.kill(-1, SIGKILL)
        except ProcessLookupError:
            os._exit(0)
        os._exit(1)
    while os.waitpid(-1, 0)[0] != killer:
        pass


def reap_orphans(block: bool) -> None:
    """Collect the exit status of every orphan handed to us as subreaper. Unreaped, they would
    stay zombies of the machine's PID 1 where it does not reap (a container's PID 1 often does
    not), and zombies still count against RLIMIT_NPROC: the uid's next run could not fork.
    block: all were killed and are about to exit (root); else collect only those already gone."""
    while True:
        try:
            done, _ = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if not done:
            return


def supervise(pid: int, job: dict) -> dict:
    start = time.monotonic()
    features = job["features"]
    pidfd = os.pidfd_open(pid)
    timed_out = not select.select([pidfd], [], [], job["limits"]["wall_s"])[0]
    kill = os.kill if "pidns" in features else os.killpg  # killing init ends the whole namespace
    if timed_out:
        kill(pid, SIGKILL)
    _, status, usage = os.wait4(pid, 0)
    wall_s = time.monotonic() - start
    code = os.waitstatus_to_exitcode(status)
    if "pidns" not in features:  # (with one, init's exit has already killed everything)
        try:  # noqa: SIM105 (contextlib would add imports to every launch)
            os.killpg(pid, SIGKILL)  # background processes still in the program's group
        except ProcessLookupError:
            pass
        if "setuid" in features:
            kill_user(job["uid"])  # and those that left the group
        reap_orphans(block="setuid" in features)
    return {"returncode": code if code >= 0 else 128 - code, "timed_out": timed_out,
            "wall_s": wall_s, "cpu_s": usage.ru_utime + usage.ru_stime}


def enter_program_side(job: dict) -> None:
    """In the launcher's child: become init (PID namespace) or a process-group leader, drop
    privileges, and return in the process that will run the program.

    The program's stdin may be a secret its program keeps from processes it starts (the test
    runner's tests, `groupo.sandbox.tests_runner`): every ancestor of the program that inherits it is
    non-dumpable (so no process of the sandbox's uid can open /proc/PID/fd/0 or read its memory)
    from before the program exists, and closes it."""
    _ok(_libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")  # the maps written below
    if "pidns" in job["features"]:
        if "proc" in job["features"]:
            fresh_proc()
        drop_privileges(job)
        _ok(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")  # init: see above
        program = os.fork()
        if program:
            os.close(job["status_fd"])
            os.close(0)
            init(program)
        _ok(_libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")  # as drop_privileges left it
    else:
        os.setpgid(0, 0)
        drop_privileges(job)
    if "seccomp" in job["features"]:
        no_sockets()


def execute(job: dict) -> dict:
    features = job["features"]
    flags = ((CLONE_NEWNET if "netns" in features else 0) | (CLONE_NEWNS if "mountns" in features else 0)
             | (CLONE_NEWPID if "pidns" in features else 0))
    if flags:
        unshare(flags)
    _ok(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")  # stdin: enter_program_side
    set_limits(job["limits"])
    if "mountns" in features:
        view = sandbox_view(job) if "minroot" in features else None
        private_filesystem(job["limits"]["disk_mb"], view, job.get("hide", []))
        os.chdir("/tmp")
    else:
        os.chdir(job["workdir"])
    for name, text in job["files"].items():
        if name == job["main"]:
            continue  # runs from memory: a program cannot read a test harness around it from disk
        with open(name, "w", encoding="utf-8") as f:
            f.write(text)
        if "setuid" in features:
            os.chown(name, job["uid"], job["gid"])
    sys_path = [p for p in (*sys.path, *job["site_packages"]) if os.path.exists(p)]
    aliases = aliases_for(sys_path) if "setuid" in features else {}
    if "pidns" not in features:  # orphans of the program come to us, not to the machine's PID 1
        _ok(_libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")
    pid = os.fork()
    if pid == 0:
        try:
            enter_program_side(job)
        except OSError as e:  # reported before the launcher's own report, so the parent sees it
            os.write(job["status_fd"], marshal.dumps({"error": f"sandbox setup failed: {e}"}))
            os._exit(70)
        os.close(job["status_fd"])
        run_program(job, sys_path, aliases)
        return {}
    os.close(0)  # the program's stdin is the program's alone
    if "pidns" not in features:
        os.setpgid(pid, pid)  # also here, so a kill right after the fork cannot miss the group
    return supervise(pid, job)


# ---------------------------------------------------------------------------------------------
# Probing which steps this machine allows


def _probe_one(feature: str, job: dict) -> str:
    """Try one isolation step in a throw-away child: "" if it works, else the reason."""
    steps = {
        "setuid": lambda: drop_privileges({**job, "features": {"setuid"}}),
        "userns": lambda: unshare(0) if os.getuid() else None,
        "netns": lambda: unshare(CLONE_NEWNET),
        "mountns": lambda: (unshare(CLONE_NEWNS), private_filesystem(1)),
        "pidns": lambda: (unshare(CLONE_NEWPID), _in_child(lambda: None)),
        "proc": lambda: (unshare(CLONE_NEWNS | CLONE_NEWPID), private_filesystem(1), _in_child(fresh_proc)),
        "minroot": lambda: _probe_minroot(job),
        "seccomp": lambda: (_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), no_sockets(), _socket_denied()),
    }
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            steps[feature]()
            os._exit(0)
        except BaseException as e:
            os.write(write, f"{type(e).__name__}: {e}".encode()[:500])
            os._exit(1)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    reason = os.read(read, 1000).decode(errors="replace")
    return "" if status == 0 else reason or f"exit status {status}"


def _probe_minroot(job: dict) -> None:
    """The minimal root, and a fresh /proc on top of it where a PID namespace can be made (a user
    namespace may refuse that proc where it would accept it over the machine's root)."""
    try:
        unshare(CLONE_NEWNS | CLONE_NEWPID)
        pidns = True
    except OSError:
        unshare(CLONE_NEWNS)
        pidns = False
    private_filesystem(1, sandbox_view(job), job.get("hide", []))
    _in_child(fresh_proc if pidns else lambda: None)


def _in_child(fn) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            fn()
            os._exit(0)
        except BaseException:
            os._exit(1)
    if os.waitpid(pid, 0)[1] != 0:
        raise OSError(0, "the step failed inside the new PID namespace")


def _socket_denied() -> None:
    import socket

    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
    except PermissionError:
        return
    raise OSError(0, "socket(AF_INET) was still allowed")


def main() -> int:
    with open(sys.argv[1], "rb") as f:
        job = marshal.load(f)
    job["features"] = set(job["features"])
    try:
        if job.get("probe"):
            report = {"probe": {f: _probe_one(f, job) for f in job["probe"]}}
        else:
            report = execute(job)
            if not report:
                return 0  # the program's process ran to completion: exit as python would
    except OSError as e:
        report = {"error": f"sandbox setup failed: {e}"}
    os.write(job["status_fd"], marshal.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
