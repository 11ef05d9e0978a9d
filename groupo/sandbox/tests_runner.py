"""The test runner of `tests_pass`: runs a candidate solution and its tests so that the candidate
cannot forge the verdict. The sandbox runs this file as its program (standard library only).

Why the old way could be fooled: the tests ran in the candidate's own process, after it, with a
random marker printed after each test that passed. Everything in a process is readable and
writable by the code running in it (frames, gc, raw memory through ctypes), so a candidate could
read the marker, exit early, patch helpers, or print the marker itself.

Here the candidate's code and the tests never share a process:

    runner     this file: never runs candidate code. It runs the tests' setup and the tests, and
               writes "<nonce> <i>" to stdout after test i passes. Non-dumpable, so no process of
               the sandbox's uid can ptrace it or read its memory or descriptors through /proc.
    candidate  forked from the runner before the runner has read anything secret: stdin and stdout
               replaced by /dev/null, every other inherited descriptor closed, then it runs the
               candidate's code and serves requests from the runner over two pipes.

The tests call the candidate's functions through `Remote` stand-ins: a call sends the arguments
to the candidate process and gets back the result as plain data (None, bool, int, float, complex,
str, bytes and lists, tuples, sets, frozensets, dicts of them) decoded by the runner into its own
builtin objects; other objects stay in the candidate process as handles. So every comparison an
assert makes runs in the runner on real builtins: an object whose == is always true, a patched
`unittest` or `assert` helper, `sys.exit(0)` / `os._exit(0)` before the tests, all change only
what the candidate process does, never how the runner compares. An object with no plain form
equals only itself.

The runner never imports from its working directory, where the candidate can write files; this
holds as far as the sandbox keeps the candidate from writing the installed packages (read-only
mounts or a uid of its own: every mode but the unisolated fallback, see sandbox.py).

The tests, their setup and the nonce reach the runner on stdin (the trainer's payload), which the
runner reads only after the fork; the sandbox's launcher and init (the runner's ancestors, which
inherited stdin) are non-dumpable and close it. So these never enter the candidate's memory: to
pass a test the candidate must return what the test expects without seeing the test. The verdict
lines carry the nonce, so output the candidate manages to write anywhere cannot count.

Differences from running the tests beside the candidate: arguments are copies (a test that checks
how the candidate mutated its argument fails), the tests cannot hand their own functions to the
candidate, and the tests' setup runs in the runner (it may still build objects from the
candidate's classes: they stay handles). None of these can raise a score.

(Longer than most files: both ends of the protocol must be in the one program the sandbox runs.)
"""

import _json
import builtins
import ctypes
import marshal
import operator
import os
import sys

PR_SET_DUMPABLE = 4
REF = "\x00groupo-remote"  # (REF, handle) in a request: an object living in the candidate process
MAX_MESSAGE = 1 << 26
EXCEPTIONS = {name: cls for name, cls in vars(builtins).items()
              if isinstance(cls, type) and issubclass(cls, Exception)}


# ---------------------------------------------------------------------------------------------
# Messages: a 4-byte length, then the body


def send(fd: int, body: bytes) -> None:
    data = len(body).to_bytes(4, "little") + body
    while data:
        data = data[os.write(fd, data):]


def receive(fd: int) -> bytes | None:
    """The next message, or None when the other end is gone (or sent something malformed)."""
    head = _read(fd, 4)
    if head is None:
        return None
    size = int.from_bytes(head, "little")
    return None if size > MAX_MESSAGE else _read(fd, size)


def _read(fd: int, n: int) -> bytes | None:
    parts, left = [], n
    while left:
        part = os.read(fd, min(left, 1 << 20))
        if not part:
            return None
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


# ---------------------------------------------------------------------------------------------
# The candidate's side (untrusted once the candidate's code has run: nothing here is relied on)


def encode(value, handles: list | None) -> str:
    """`value` as tagged JSON; what has no plain form becomes a handle, or with `handles` None,
    raises TypeError."""
    t = type(value)
    if value is None or t is bool:
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        v = float(value)
        return repr(v) if v == v and v not in (float("inf"), float("-inf")) else \
            {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}[repr(v)]
    if isinstance(value, str):
        return _json_string(str(value))
    if isinstance(value, (bytes, bytearray)):
        return tagged("b", _json_string(bytes(value).decode("latin-1")))
    if isinstance(value, complex):
        return tagged("c", f"[{encode(value.real, None)},{encode(value.imag, None)}]")
    if isinstance(value, dict):
        items = ",".join(f"[{encode(k, handles)},{encode(v, handles)}]" for k, v in value.items())
        return tagged("d", f"[{items}]")
    for cls, tag in ((list, "l"), (tuple, "t"), (set, "s"), (frozenset, "f")):
        if isinstance(value, cls):
            return tagged(tag, "[" + ",".join(encode(x, handles) for x in value) + "]")
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return encode(value.tolist(), handles)
    if handles is None:
        raise TypeError("no plain form")
    handles.append(value)
    return tagged("h", str(len(handles) - 1))


def tagged(tag: str, body: str) -> str:
    """The JSON object {tag: body}, body already JSON."""
    return '{"' + tag + '":' + body + "}"


def _json_string(text: str) -> str:
    return _json.encode_basestring_ascii(text)


def decode_request(value, handles: list):
    """A request's argument: plain data from the runner, with (REF, i) standing for handles[i]."""
    t = type(value)
    if t is tuple and len(value) == 2 and value[0] == REF:
        return handles[value[1]]
    if t in (list, tuple, set, frozenset):
        return t(decode_request(x, handles) for x in value)
    if t is dict:
        return {decode_request(k, handles): decode_request(v, handles) for k, v in value.items()}
    return value


def serve(request: tuple, handles: list) -> str:
    op, target, *args = request
    obj = handles[target]
    args = [decode_request(a, handles) for a in args]
    if op == "call":
        result = obj(*args[0], **args[1])
    elif op == "value":
        try:
            return tagged("ok", encode(obj, None))
        except (TypeError, RecursionError, ValueError):
            return '{"np":0}'
    else:
        result = {"getattr": getattr, "setattr": setattr, "getitem": operator.getitem,
                  "setitem": operator.setitem, "list": list, "len": len, "bool": bool, "str": str,
                  "repr": repr, "next": next, "contains": operator.contains}[op](obj, *args)
    try:
        return tagged("ok", encode(result, handles))
    except (RecursionError, ValueError):  # a list holding itself, an int too long to print
        handles.append(result)
        return tagged("ok", tagged("h", str(len(handles) - 1)))


def candidate(requests: int, replies: int) -> None:
    """The candidate's process: isolate, run solution.py, then answer the runner until it stops."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)  # the trainer's payload (tests, nonce) arrives on the runner's stdin
    os.dup2(null, 1)  # the runner's verdicts go to stdout
    aliases = {int(p.split("/")[4]) for p in sys.path if p.startswith("/proc/self/fd/")}
    keep = sorted({2, requests, replies, *aliases})
    low = 3
    for fd in keep:
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, 1 << 16)
    ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # as the sandbox runs programs (its imports)
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        with open("solution.py", encoding="utf-8") as f:
            exec(compile(f.read(), "solution.py", "exec"), namespace)
    except BaseException:
        import traceback

        traceback.print_exc()
        os._exit(1)
    handles: list = []
    names = []
    for name, value in list(namespace.items()):
        try:
            if isinstance(value, type(os)):
                names.append(f"[{_json_string(name)},{tagged('m', _json_string(value.__name__))}]")
            elif not name.startswith("__"):
                names.append(f"[{_json_string(name)},{encode(value, handles)}]")
        except (RecursionError, ValueError, TypeError):
            continue
    send(replies, tagged("ok", tagged("d", "[" + ",".join(names) + "]")).encode())
    while (message := receive(requests)) is not None:
        try:
            reply = serve(marshal.loads(message), handles)
        except BaseException as e:
            reply = tagged("err", f"[{_json_string(type(e).__name__)},{_json_string(str(e)[:500])}]")
        send(replies, reply.encode())
    os._exit(0)


# ---------------------------------------------------------------------------------------------
# The runner's side


class CandidateError(Exception):
    """The candidate's code raised something that is not a builtin exception, or its process ended."""


class _Context:
    """What the JSON scanner needs (json.decoder would import re: ~10 ms per run)."""

    strict, object_hook, object_pairs_hook = True, None, None
    parse_float, parse_int, memo = float, int, {}

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]


class Link:
    """The runner's end of the pipes to the candidate process."""

    def __init__(self, requests: int, replies: int):
        self.requests, self.replies, self.alive = requests, replies, True
        self.scan = _json.make_scanner(_Context())

    def ask(self, *request):
        if not self.alive:
            raise CandidateError("the candidate's process has ended")
        try:
            send(self.requests, marshal.dumps(request))
        except (BrokenPipeError, ValueError) as e:  # ValueError: an argument marshal cannot carry
            if isinstance(e, BrokenPipeError):
                self.alive = False
            raise CandidateError(f"cannot reach the candidate: {e}") from None
        return self.reply(plain_form=request[0] == "value")

    def reply(self, plain_form: bool = False):
        """The candidate's next reply, decoded: a value, NO_PLAIN_FORM (only to a request for a
        plain form), or the exception raised."""
        raw = receive(self.replies)
        if raw is None:
            self.alive = False
            raise CandidateError("the candidate's process has ended")
        try:
            text = raw.decode("ascii")
            reply, end = self.scan(text, 0)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise CandidateError(f"malformed reply: {e}") from None
        if end != len(text) or type(reply) is not dict or len(reply) != 1:
            raise CandidateError("malformed reply")
        (kind, body), = reply.items()
        if kind == "ok":
            return self.plain(body)
        if kind == "np" and plain_form:
            return NO_PLAIN_FORM
        if kind != "err" or type(body) is not list or len(body) != 2:
            raise CandidateError("malformed reply")
        name, message = body
        raise EXCEPTIONS.get(name, CandidateError)(str(message))

    def plain(self, value):
        """A reply's value as the runner's own builtin objects (handles as `Remote`)."""
        t = type(value)
        if value is None or t in (bool, int, float, str):
            return value
        if t is not dict or len(value) != 1:
            raise CandidateError("malformed reply")
        (tag, body), = value.items()
        if tag == "h" and type(body) is int:
            return Remote(self, body)
        if tag == "b" and type(body) is str:
            return body.encode("latin-1")
        if tag == "m" and type(body) is str:
            return Module(body)
        if type(body) is not list:
            raise CandidateError("malformed reply")
        items = [self.plain(x) for x in body] if tag != "d" else None
        if tag == "c" and len(items) == 2 and all(type(x) in (int, float) for x in items):
            return complex(*items)
        containers = {"l": list, "t": tuple, "s": set, "f": frozenset}
        if tag in containers:
            return containers[tag](items)
        if tag == "d" and all(type(p) is list and len(p) == 2 for p in body):
            return {self.plain(k): self.plain(v) for k, v in body}
        raise CandidateError("malformed reply")


class Module:
    """A module the candidate imported: the runner imports its own copy, from the installed packages
    only (never the working directory, where the candidate may write files)."""

    def __init__(self, name: str):
        self.name = name


NO_PLAIN_FORM = object()


def request_arg(value):
    """An argument for the candidate: plain data as is, a `Remote` as its handle."""
    t = type(value)
    if t is Remote:
        return (REF, object.__getattribute__(value, "_handle"))
    if t in (list, tuple, set, frozenset):
        return t(request_arg(x) for x in value)
    if t is dict:
        return {request_arg(k): request_arg(v) for k, v in value.items()}
    if value is None or t in (bool, int, float, complex, str, bytes):
        return value
    raise TypeError(f"the tests cannot hand a {t.__name__} to the candidate's process")


class Remote:
    """An object that lives in the candidate's process. Comparisons and arithmetic use its plain
    form (fetched, then compared by the runner), never the candidate's own operators."""

    __slots__ = ("_handle", "_link")

    def __init__(self, link: Link, handle: int):
        object.__setattr__(self, "_link", link)
        object.__setattr__(self, "_handle", handle)

    def _ask(self, op, *args):
        return self._link.ask(op, self._handle, *(request_arg(a) for a in args))

    def _plain(self):
        value = self._ask("value")
        if value is NO_PLAIN_FORM:
            raise TypeError("the candidate's object has no plain form")
        return value

    def __call__(self, *args, **kwargs):
        return self._ask("call", list(args), kwargs)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._ask("getattr", name)

    def __setattr__(self, name, value):
        self._ask("setattr", name, value)

    def __getitem__(self, key):
        return self._ask("getitem", key)

    def __setitem__(self, key, value):
        self._ask("setitem", key, value)

    def __iter__(self):
        return iter(self._ask("list"))

    def __next__(self):
        return self._ask("next")

    def __len__(self):
        n = self._ask("len")
        if type(n) is not int:
            raise TypeError("len() of the candidate's object is not an int")
        return n

    def __bool__(self):
        return self._ask("bool") is True

    def __contains__(self, item):
        return item in self._ask("list")

    def __str__(self):
        return str(self._ask("str"))

    def __repr__(self):
        return str(self._ask("repr"))

    def __hash__(self):
        return hash((Remote, self._handle))

    def __eq__(self, other):
        if type(other) is Remote and other._handle == self._handle:
            return True
        value = self._ask("value")
        return NotImplemented if value is NO_PLAIN_FORM else value == other

    def __ne__(self, other):
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal


def _by_value(op):
    def method(self, *args):
        return op(self._plain(), *args)
    return method


for _name in ("lt", "le", "gt", "ge", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg",
              "pos", "abs", "index"):
    setattr(Remote, f"__{_name}__", _by_value(getattr(operator, _name)))
for _name, _op in (("radd", operator.add), ("rsub", operator.sub), ("rmul", operator.mul)):
    setattr(Remote, f"__{_name}__", (lambda op: lambda self, other: op(other, self._plain()))(_op))
for _name, _op in (("int", int), ("float", float), ("round", round)):
    setattr(Remote, f"__{_name}__", (lambda op: lambda self, *a: op(self._plain(), *a))(_op))


def namespace(names: dict) -> dict:
    """The tests' globals: the candidate's names, except those that would shadow a builtin (a test
    calling len() or abs() must get the real one, not the candidate's)."""
    ns = {"__name__": "__main__", "__builtins__": builtins}
    for name, value in names.items():
        if type(name) is not str or name.startswith("__") or hasattr(builtins, name):
            continue
        if type(value) is Module:  # standard library only: importing runs the module's code here
            if value.name.partition(".")[0] not in sys.stdlib_module_names - {"this", "antigravity"}:
                continue
            try:
                __import__(value.name)
                value = sys.modules[value.name]
            except BaseException:
                continue
        ns[name] = value
    return ns


def main() -> None:
    if ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise SystemExit("test runner: prctl(PR_SET_DUMPABLE) failed")
    sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]  # files the candidate writes
    to_candidate, requests = os.pipe()
    replies, from_judge = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(requests)
        os.close(replies)
        candidate(to_candidate, from_judge)
    os.close(to_candidate)
    os.close(from_judge)
    with os.fdopen(0, "rb") as f:
        nonce, setup, tests = marshal.loads(f.read())
    link = Link(requests, replies)
    try:
        names = link.reply()  # the candidate's globals, sent once its code has run
    except BaseException:  # it raised, exited or sent garbage: the tests run without its names
        names = {}
    ns = namespace(names if type(names) is dict else {})
    try:  # noqa: SIM105 (contextlib: one more import per run)
        exec(compile(setup, "setup.py", "exec"), ns)
    except BaseException:
        pass  # each test then fails on what the setup did not define, as before
    for i, test in enumerate(tests):
        try:
            exec(compile(test, "test.py", "exec"), ns)
        except BaseException:
            continue
        os.write(1, f"{nonce} {i}\n".encode())
    os.kill(pid, 9)
    os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
