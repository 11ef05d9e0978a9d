"""Tools: loading and its errors, the calculator, calls that never raise, the sandboxed python tool,
the call formats."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from groupo.config import ConfigError
from groupo.models.offline_tokenizer import make_tokenizer
from groupo.tools import (
    ChatTemplate,
    PythonBlock,
    Toolbox,
    ToolCall,
    ToolResult,
    ToolSettings,
    calculator,
    load_environment,
    load_tools,
    make_format,
    parse_hermes,
)

TOOLS_FILE = '''
import asyncio, time

def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first.
        b: The second.
    """
    return a + b

async def shout(text: str) -> str:
    """Upper-case a text.

    Args:
        text: The text.
    """
    await asyncio.sleep(0)
    return text.upper()

def boom() -> str:
    """Always fails."""
    raise ValueError("kaput")

def slow(seconds: float) -> str:
    """Sleep.

    Args:
        seconds: How long.
    """
    time.sleep(seconds)
    return "woke"

async def slow_async(seconds: float) -> str:
    """Sleep without blocking.

    Args:
        seconds: How long.
    """
    await asyncio.sleep(seconds)
    return "woke"

def words(n: int) -> str:
    """Say some words.

    Args:
        n: How many.
    """
    return " ".join(f"w{i}" for i in range(n))

def huge() -> str:
    """Ten megabytes of text."""
    return "y " * (5 << 20)

class Unprintable:
    def __str__(self):
        raise RuntimeError("str boom")

def unprintable() -> str:
    """A result whose str() raises."""
    return Unprintable()

def no_doc(a: int) -> int:
    return a

def no_hints(a):
    """No hints.

    Args:
        a: Something.
    """

CONSTANT = 3
'''

ENV_FILE = '''
class Counter:
    def reset(self, start: int = 0, **columns) -> str:
        self.value, self.done = start, False
        return f" (counter at {start})"

    def bump(self, by: int) -> str:
        """Add to the counter.

        Args:
            by: How much.
        """
        self.value += by
        self.done = self.value >= 10
        return str(self.value)

    def get_reward(self) -> float:
        return float(self.value)

    def _private(self):
        pass

class BadReset:
    def reset(self, **columns):
        raise KeyError("level")

class DoneRaises:
    @property
    def done(self):
        raise RuntimeError("done boom")

    def reset(self, **columns):
        return None

    def act(self, x: int) -> str:
        """Act.

        Args:
            x: A number.
        """
        return "acted"

class Unprintable:
    def __str__(self):
        raise RuntimeError("str boom")

class BadObservation(DoneRaises):
    def reset(self, **columns):
        return Unprintable()

class NoReset:
    def act(self, x: int) -> str:
        """Act.

        Args:
            x: A number.
        """
        return ""
'''


@pytest.fixture
def tool_file(tmp_path: Path) -> str:
    path = tmp_path / "my_tools.py"
    path.write_text(TOOLS_FILE)
    return str(path)


@pytest.fixture
def env_file(tmp_path: Path) -> str:
    path = tmp_path / "my_env.py"
    path.write_text(ENV_FILE)
    return str(path)


def toolbox(specs, tool_file="", env=None, **settings):
    tools = load_tools([s if s in ("python", "calculator") else f"{tool_file}:{s}" for s in specs])
    return Toolbox(tools, env, ToolSettings(**settings), make_tokenizer())


# ---------------------------------------------------------------------------------------------
# The calculator


@pytest.mark.parametrize("expression, value", [
    ("1234 * 5678 - 9", "7006643"),
    ("2 ** 100", "1267650600228229401496703205376"),           # exact, not 1.2676506002282294e+30
    ("123456789123456789 * 987654321987654321", "121932631356500531347203169112635269"),
    ("7 / 2", "3.5"), ("6 / 3", "2"), ("0.1 + 0.2", "0.3"), ("(1 / 3) * 3", "1"), ("1 / 3", "0.3333333333333333"),
    ("-7 // 2", "-4"), ("-7 % 3", "2"), ("(2 + 3) * -4", "-20"), ("sqrt(144)", "12"), ("sqrt(2)", "1.4142135623730951"),
    ("abs(-5.5)", "5.5"), ("round(2.6)", "3"), ("2 ** -2", "0.25"), ("4 ** 0.5", "2"),
])
def test_calculator_is_exact(expression, value):
    assert calculator(expression) == value


@pytest.mark.parametrize("expression, error", [
    ("__import__('os').system('true')", "unsupported"), ("x + 1", "unsupported"), ("1 +", "not an arithmetic"),
    ("2 ** 10 ** 10", "too large"), ("'a' * 3", "unsupported"), ("(-8) ** 0.5", "not a real number"),
])
def test_calculator_refuses_what_is_not_arithmetic(expression, error):
    with pytest.raises(ValueError, match=error):
        calculator(expression)
    with pytest.raises(ZeroDivisionError):
        calculator("1 / 0")


def _balanced(terms: list[str], op: str = "+") -> str:
    """The terms joined by op as a balanced tree: depth log2(n), so no recursion limit is met."""
    if len(terms) == 1:
        return terms[0]
    mid = len(terms) // 2
    return f"({_balanced(terms[:mid], op)}{op}{_balanced(terms[mid:], op)})"


@pytest.mark.parametrize("expression", [
    "(10**4000)**3000",             # the result would have 12,000,001 digits
    "(10**4299)**10000",
    "(7**5000/3**5000)**9999",      # a fraction: the denominator grows as much
    "(-(2**4000))**9973",
    "((10**400)**10)**10",          # each power fits, the last does not
])
def test_calculator_refuses_a_huge_power_from_its_operands_sizes_before_computing_it(expression):
    start = time.process_time()
    with pytest.raises(ValueError, match="the result has more than 4300 digits"):
        calculator(expression)
    assert time.process_time() - start < 0.1  # before: (10**9999)**3000 held the GIL for 48 s


def test_calculator_values_stay_printable_and_trivial_powers_of_huge_exponents_are_exact():
    assert calculator("10 ** 4299") == "1" + "0" * 4299  # 4,300 digits: the most str() prints
    with pytest.raises(ValueError, match="more than 4300 digits"):
        calculator("10 ** 4299 * 10")
    with pytest.raises(ValueError, match="more than 4300 digits"):
        calculator("1 / 10 ** 4300")  # the denominator too
    assert [calculator(e) for e in ("(-1) ** (10 ** 4000)", "(-1) ** (10 ** 4000 + 1)", "1 ** -(10 ** 4000)",
                                    "0 ** (10 ** 4000)", "0 ** 0")] == ["1", "-1", "1", "0", "1"]
    with pytest.raises(ZeroDivisionError):
        calculator("0 ** -(10 ** 4000)")


def test_calculator_work_is_bounded_whatever_the_expressions_length():
    big, other = "(7**2500/3**2500)", "(11**1800/13**1500)"  # 1,200 to 2,100 digits each
    costly = _balanced([f"({big}*{other}/{big}-{other})"] * 1000)  # each term is 0, costly to reach
    start = time.process_time()
    with pytest.raises(ValueError, match="too costly to evaluate"):
        calculator(costly)
    assert time.process_time() - start < 2.0  # each operation is charged before it runs
    with pytest.raises(ValueError, match="nested too deeply"):
        calculator("+".join(["1"] * 2000))  # a chain 2,000 deep: past Python's recursion limit
    with pytest.raises(ValueError, match="not an arithmetic expression"):
        calculator("-" * 100_000 + "1")  # the parser's own limit (it raises MemoryError)
    assert calculator(_balanced(["1"] * 5000)) == "5000"
    with pytest.raises(ValueError, match="more than 10000 operations"):
        calculator(_balanced(["1"] * 10_002))  # 10,001 additions


# ---------------------------------------------------------------------------------------------
# Loading


def test_builtin_and_user_tools_load_with_their_schemas(tool_file):
    tools = load_tools(["python", "calculator", f"{tool_file}:add", f"{tool_file}:shout"])
    assert list(tools) == ["python", "calculator", "add", "shout"]
    assert tools["python"].func is None  # bound per episode
    assert tools["add"].schema == {"type": "function", "function": {
        "name": "add", "description": "Add two integers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer", "description": "The first."},
                                                        "b": {"type": "integer", "description": "The second."}},
                       "required": ["a", "b"]},
        "return": {"type": "integer"}}}
    assert tools["calculator"].schema["function"]["parameters"]["required"] == ["expression"]
    assert load_tools(["groupo.tools.calculator:calculator"])["calculator"].func is calculator  # module:function


@pytest.mark.parametrize("spec, message", [
    ("missing.py:f", "file 'missing.py' of 'missing.py:f' does not exist"),
    ("{file}:nope", "has no 'nope'"),
    ("{file}:CONSTANT", "is not a function"),
    ("{file}:no_doc", "has no JSON schema"),
    ("{file}:no_hints", "has no JSON schema"),
    ("no_such_module_xyz:f", "importing 'no_such_module_xyz'"),
    ("calculatorr", "is not file.py:name or module:name"),
])
def test_a_tool_that_cannot_load_is_one_clear_config_error(tool_file, spec, message):
    with pytest.raises(ConfigError) as e:
        load_tools([spec.format(file=tool_file)])
    text = str(e.value)
    assert text.startswith("episodes.tools: ") and message in text and "\n" not in text


def test_two_tools_of_one_name_are_refused(tool_file):
    with pytest.raises(ConfigError, match="two tools are named 'add'"):
        load_tools([f"{tool_file}:add", f"{tool_file}:add"])


def test_environment_methods_are_its_tools_and_reset_is_required(env_file):
    env = load_environment(f"{env_file}:Counter")
    assert list(env.tools) == ["bump"] and env.has_reward  # not reset, get_reward or _private
    assert env.tools["bump"].schema["function"]["parameters"]["properties"] == {
        "by": {"type": "integer", "description": "How much."}}
    with pytest.raises(ConfigError, match=r"^episodes.environment: .*NoReset' has no reset method; define reset"):
        load_environment(f"{env_file}:NoReset")


def test_episodes_get_fresh_environments_reset_with_their_columns(env_file):
    box = Toolbox(load_tools(["calculator"]), load_environment(f"{env_file}:Counter"), ToolSettings(), make_tokenizer())
    a, b = box.new_episode({"start": 3, "answer": "x"}), box.new_episode({"start": 8})
    assert a.environment is not b.environment and a.observation == " (counter at 3)"
    assert a.call(ToolCall("bump", {"by": 4})).content == "7" and not a.done
    assert b.call(ToolCall("bump", {"by": 4})).content == "12" and b.done
    assert [s["function"]["name"] for s in box.schemas] == ["calculator", "bump"]
    bad = Toolbox({}, load_environment(f"{env_file}:BadReset"), ToolSettings(), make_tokenizer())
    with pytest.raises(ConfigError, match=r"^episodes.environment: .*BadReset reset\(\*\*columns\) failed on a row "
                                          r"with columns \['answer'\]: KeyError: 'level'$"):
        bad.new_episode({"answer": "1"})
    with pytest.raises(ConfigError, match=r"^episodes.tools: \['bump'\] also named by episodes.environment"):
        Toolbox({"bump": box.tools["calculator"]}, load_environment(f"{env_file}:Counter"), ToolSettings(), None)


# ---------------------------------------------------------------------------------------------
# Calls never raise


def test_bad_calls_come_back_as_error_results(tool_file):
    box = toolbox(["calculator", "add", "boom", "slow", "slow_async", "shout"], tool_file, timeout_s=0.5)
    ep = box.new_episode({})
    cases = [
        (ToolCall("", None, "<tool_call>{</tool_call>", "invalid JSON"), "Error: malformed tool call: invalid JSON"),
        (ToolCall("search", {"q": "x"}), "Error: unknown tool 'search'; valid tools: calculator, add, boom, slow, "
                                        "slow_async, shout"),
        (ToolCall("add", {"a": 1}), "Error: wrong arguments for add: missing a required argument: 'b'"),
        (ToolCall("add", {"a": 1, "b": 2, "c": 3}), "Error: wrong arguments for add: got an unexpected keyword "
                                                    "argument 'c'"),
        (ToolCall("boom", {}), "Error: ValueError: kaput"),
        (ToolCall("calculator", {"expression": "1/0"}), "Error: ZeroDivisionError: division by zero"),
        (ToolCall("slow", {"seconds": 5}), "Error: slow did not return within 0.5 s"),
        (ToolCall("slow_async", {"seconds": 5}), "Error: slow_async did not return within 0.5 s"),
    ]
    for call, content in cases:
        result = ep.call(call)
        assert (result.content, result.error, result.truncated) == (content, True, False), call
    start = time.monotonic()
    slow = ep.call(ToolCall("slow", {"seconds": 5}))
    assert 0.45 < slow.seconds < 1.5 and time.monotonic() - start < 1.5  # waited for the limit, not the tool
    assert ep.call(ToolCall("slow", {"seconds": 0.01})).content == "woke"
    assert ep.call(ToolCall("shout", {"text": "hi"})).content == "HI"  # async, on the toolbox's loop
    assert ep.call(ToolCall("add", {"a": 2, "b": 3})) .content == "5"


def test_a_result_whose_str_raises_and_an_environment_whose_done_raises_do_not_escape(tool_file, env_file, caplog):
    ep = toolbox(["unprintable"], tool_file).new_episode({})
    result = ep.call(ToolCall("unprintable", {}))
    assert (result.content, result.error) == ("Error: RuntimeError: str boom", True)
    box = Toolbox({}, load_environment(f"{env_file}:DoneRaises"), ToolSettings(), make_tokenizer())
    ep = box.new_episode({})
    assert ep.call(ToolCall("act", {"x": 1})).content == "acted"
    with caplog.at_level("WARNING", logger="groupo"):
        assert ep.done is False and box.new_episode({}).done is False
    assert [r.getMessage() for r in caplog.records] == [
        f"warning: episodes.environment: {env_file}:DoneRaises: reading `done` raised RuntimeError: done boom; "
        "read as not done"]  # once per run, not per episode
    bad = Toolbox({}, load_environment(f"{env_file}:BadObservation"), ToolSettings(), make_tokenizer())
    with pytest.raises(ConfigError, match=r"reset\(\*\*columns\) failed on a row .*: RuntimeError: str boom$"):
        bad.new_episode({})


def test_a_huge_result_is_cut_by_length_before_it_is_tokenized(tool_file):
    tok = make_tokenizer()
    box = toolbox(["huge"], tool_file, max_output_tokens=8)
    start = time.monotonic()
    result = box.new_episode({}).call(ToolCall("huge", {}))
    assert time.monotonic() - start < 2.0  # before: 19 s, tokenizing all 10 MB under the toolbox's lock
    kept = tok.decode(tok("y " * 128, add_special_tokens=False)["input_ids"][:8])  # 8 tokens of 8 * 32 characters
    assert result.truncated and not result.error
    assert result.content == kept + f"\n[... truncated {10 * 2**20 - len(kept)} characters]"


def test_long_output_is_cut_at_max_output_tokens_and_marked(tool_file):
    tok = make_tokenizer()
    box = toolbox(["words"], tool_file, max_output_tokens=8)
    full = " ".join(f"w{i}" for i in range(50))
    ids = tok(full, add_special_tokens=False)["input_ids"]
    assert len(ids) > 8
    result = box.new_episode({}).call(ToolCall("words", {"n": 50}))
    assert result.truncated and not result.error
    assert result.content == tok.decode(ids[:8]) + f"\n[... truncated {len(ids) - 8} tokens]"
    short = box.new_episode({}).call(ToolCall("words", {"n": 2}))
    assert (short.content, short.truncated) == ("w0 w1", False)


# ---------------------------------------------------------------------------------------------
# The python tool: sandboxed, state kept by replaying the episode's cells

linux = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox needs Linux")


@linux
def test_python_keeps_state_across_the_calls_of_one_episode_only():
    box = toolbox(["python"], timeout_s=2.0)
    ep, other = box.new_episode({}), box.new_episode({})
    run = lambda e, code: e.call(ToolCall("python", {"code": code}))
    first = run(ep, "x = 123 * 456\nprint('set')\n")
    assert (first.content, first.error) == ("set\n", False)
    assert run(ep, "print(x + 1)").content == "56089\n"  # 'set' of the replayed cell is not printed again
    failed = run(ep, "print('before')\ny = 1 / 0\n")
    assert failed.error and failed.content == "before\nZeroDivisionError: division by zero"
    assert run(ep, "print(x)").content == "56088\n"  # the failed cell is not replayed
    assert run(other, "print(x)").content.endswith("NameError: name 'x' is not defined")
    # the tool's CPU limit equals its wall limit: whichever the busy loop meets first ends it
    assert run(ep, "print(1)\nwhile True: pass").content in ("1\nTimeoutError: the code ran past the 2 s limit",
                                                           "1\nTimeoutError: the code used more than 2 s of CPU")
    bad = ep.call(ToolCall("python", {"source": "print(1)"}))
    assert bad.error and bad.content == "Error: python takes one argument, code (a string)"


@linux
def test_a_cell_that_exits_does_not_silence_the_later_calls():
    box = toolbox(["python"], timeout_s=5.0)
    run = lambda e, code: (lambda r: (r.content, r.error))(e.call(ToolCall("python", {"code": code})))
    ep = box.new_episode({})
    assert run(ep, "x = 1\nimport sys\nprint('bye')\nsys.exit(0)\nx = 2") == ("bye\n", False)  # ends the cell
    assert run(ep, "print('second', x)") == ("second 1\n", False)  # before: '' for every later call
    ep = box.new_episode({})
    unfinished = "SystemExit: the program ended before the end of the cell; its variables are not kept"
    assert run(ep, "y = 1\nimport os\nprint('hi', flush=True)\nos._exit(0)") == (f"hi\n{unfinished}", True)
    assert run(ep, "print('second', 'y' in globals())") == ("second False\n", False)  # not replayed
    assert run(ep, "import sys\nsys.exit(3)") == ("Error: exit status 3", True)
    assert run(ep, "print('third')") == ("third\n", False)


@linux
def test_the_sandbox_holds_for_python_tool_calls(tmp_path):
    box = toolbox(["python"], timeout_s=5.0, python_memory_mb=512)
    run = lambda code: box.new_episode({}).call(ToolCall("python", {"code": code}))
    with socket.socket() as listener:  # as tests/test_sandbox.py: nothing may connect, not even locally
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        net = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint('reached')")
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert net.error and "reached" not in net.content and "Error" in net.content
    target = tmp_path / "escaped.txt"
    tmp_path.chmod(0o777)
    write = run(f"open({str(target)!r}, 'w').write('x')\nprint('wrote')")
    assert write.error and "wrote" not in write.content and not target.exists()
    memory = run("chunks = [bytearray(1 << 30) for _ in range(3)]\nprint('allocated')")
    assert memory.error and memory.content == "MemoryError"
    fork = run("import os, time\nn = 0\nfor _ in range(64):\n    try:\n        pid = os.fork()\n"
               "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n"
               "    n += 1\nprint('forked', n)")
    forked = int(fork.content.split()[1])
    assert not fork.error and forked < 32  # RLIMIT_NPROC of the default limits
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: received.append(1))
    try:
        kill = run(f"import os, signal\nos.kill({os.getpid()}, signal.SIGUSR1)\nprint('sent')")
        time.sleep(0.1)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert received == [] and kill.error and "sent" not in kill.content


# ---------------------------------------------------------------------------------------------
# Formats


def test_hermes_calls_are_parsed_and_bad_ones_flagged():
    text = ('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
            '<tool_call>{"name": "calc", "arguments": "{\\"expression\\": \\"2\\"}"}</tool_call>'
            '<tool_call>{"name": "x", "arguments": }</tool_call><tool_call>["add"]</tool_call><tool_call>{"name": "y"')
    calls = parse_hermes(text)
    assert [(c.name, c.arguments) for c in calls[:2]] == [("add", {"a": 1, "b": 2}), ("calc", {"expression": "2"})]
    assert calls[2].error.startswith("invalid JSON (Expecting value at character 27)")  # the "}" after "arguments":
    assert calls[3].error == 'expected {"name": "<tool>", "arguments": {...}}'
    assert calls[4].error == "<tool_call> is not closed by </tool_call>"
    assert parse_hermes("no calls here") == []


@pytest.mark.parametrize("body, error", [
    ('{"name": "calculator", "arguments": ' + "[" * 1000, "invalid JSON (nested too deeply)"),  # json: RecursionError
    ('{"name": "calculator", "arguments": "' + "[" * 1000 + '"}', "invalid JSON (nested too deeply)"),
    ('{"name": "calculator", "arguments": {"x": ' + "9" * 5000 + "}}",
     "invalid JSON (Exceeds the limit (4300 digits) for integer string conversion"),
])
def test_json_that_the_reader_cannot_take_is_an_error_call(body, error):
    [call] = parse_hermes(f"<tool_call>{body}</tool_call>")
    assert (call.name, call.arguments) == ("", None) and call.error.startswith(error)


def test_python_block_offers_only_python_and_chat_template_needs_a_tool_template(tool_file):
    tok = make_tokenizer()
    with pytest.raises(ConfigError, match=r"^episodes.tool_format=python_block .* episodes.tool_format=chat_template"):
        make_format("python_block", tok, toolbox(["python", "calculator"]))
    with pytest.raises(ConfigError, match=r"^episodes.tool_format=python_block runs .* set episodes.tools=\[python\]$"):
        make_format("python_block", tok, toolbox([]))
    assert isinstance(make_format("python_block", tok, toolbox(["python"])), PythonBlock)
    with pytest.raises(ConfigError, match=r"^episodes.tool_format=chat_template: the tokenizer's chat template "
                                          r"does not render the tools \['calculator'\].*tool_format=python_block"):
        ChatTemplate(tok, toolbox(["calculator"]))  # plain ChatML: no tools
    with pytest.raises(ValueError, match="unknown tool format 'xml'; valid: python_block, chat_template"):
        make_format("xml", tok, toolbox(["python"]))


def test_python_block_reads_only_a_closed_python_block_at_the_end_of_the_turn():
    tok = make_tokenizer()
    fmt = PythonBlock(tok, toolbox(["python"]))
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    [call] = fmt.parse(ids("Compute:\n```python\nprint(2)\n```\n"))
    assert (call.name, call.arguments) == ("python", {"code": "print(2)\n"})
    assert fmt.parse(ids("Text\n```\n")) == []                      # an untagged fence opening
    assert fmt.parse(ids("```python\nprint(2)\n```\nSo 2.")) == []  # not at the end: already answered
    assert fmt.tool_ids([], [call], [ToolResult("python", "2\n")]) == ids("```output\n2\n```\n")


def test_async_loop_is_shared_by_the_calls(tool_file):
    box = toolbox(["shout"], tool_file)
    loops = {box.run_async(_current_loop(), 1.0) for _ in range(3)}
    assert len(loops) == 1


async def _current_loop():
    return id(asyncio.get_running_loop())


def test_the_example_tool_file_loads_and_its_tools_answer():
    root = Path(__file__).resolve().parent.parent
    tools = load_tools([f"{root}/examples/tools_example.py:constant", f"{root}/examples/tools_example.py:to_metres"])
    assert tools["to_metres"].schema["function"]["parameters"]["required"] == ["value", "unit"]
    ep = Toolbox(tools, None, ToolSettings(), make_tokenizer()).new_episode({})
    assert ep.call(ToolCall("constant", {"name": "pi"})).content == "3.141592653589793"
    assert ep.call(ToolCall("to_metres", {"value": 3, "unit": "mile"})).content == "4828.03"  # 3 x 1609.344
    miss = ep.call(ToolCall("constant", {"name": "tau"}))
    assert miss.error
    assert miss.content == "Error: ValueError: no constant 'tau'; known: pi, e, speed_of_light_m_s, avogadro"
