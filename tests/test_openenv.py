"""OpenEnv environments through groupo.tools.openenv, offline: the echo environment that
`openenv init` writes (openenv-core's own template) plays scripted episodes in this process and
behind a local server on 127.0.0.1, and each gives the transcript and reward worked out by hand.
Skipped where openenv-core is not installed (it is an optional extra: pip install groupo[openenv])."""

from __future__ import annotations

import socket
import sys
import threading
import time

import pytest

pytest.importorskip("openenv.core")

from test_episodes import EOS, call, episode, hermes_tokenizer

from groupo.tools import load_environment
from groupo.tools.openenv import openenv_environment

ADAPTER_FILE = '''
from groupo.tools.openenv import openenv_environment
from echo.models import EchoAction
from echo.server.echo_environment import EchoEnvironment


class EndsOnBye(EchoEnvironment):
    """The echo environment, over once the message is "bye"."""

    def step(self, action):
        observation = super().step(action)
        observation.done = action.message == "bye"
        return observation


class Greets(EchoEnvironment):
    """The echo environment, greeting someone at reset."""

    def reset(self, name="nobody"):
        observation = super().reset()
        observation.echoed_message = f"Hello, {name}!"
        return observation


Echo = openenv_environment(EchoEnvironment, action=EchoAction, tool="echo")
Greeting = openenv_environment(Greets, action=EchoAction, tool="echo", reset_columns=["name"],
                               render=lambda fields: fields["echoed_message"])
EchoUntilBye = openenv_environment(EndsOnBye, action=EchoAction, tool="echo", reward="sum")
'''

READY = '{"echoed_message": "Echo environment ready!", "message_length": 0}'
QUESTION = "Say hello, then hi."


@pytest.fixture(scope="module")
def echo(tmp_path_factory):
    """The `echo` package that `openenv init echo` writes, importable; the file of adapters."""
    from openenv.cli.commands.init import init

    root = tmp_path_factory.mktemp("openenv")
    init("echo", output_dir=str(root))
    (root / "echo_adapters.py").write_text(ADAPTER_FILE)
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    for name in [m for m in sys.modules if m == "echo" or m.startswith("echo.")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def server(echo):
    """The echo environment served as `uvicorn echo.server.app:app` serves it, on a free local
    port, in a thread; yields its URL."""
    import uvicorn
    from echo.models import EchoAction, EchoObservation
    from echo.server.echo_environment import EchoEnvironment
    from openenv.core.env_server.http_server import create_app

    app = create_app(EchoEnvironment, EchoAction, EchoObservation, max_concurrent_envs=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the OpenEnv server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def echo_schema():
    """The tool's schema, from EchoAction's docstring and its field's type and description."""
    return {"type": "function", "function": {
        "name": "echo", "description": "Action for the Echo environment - just a message to echo.",
        "parameters": {"type": "object",
                       "properties": {"message": {"type": "string", "description": "Message to echo back"}},
                       "required": ["message"]},
        "return": {"type": "string", "description": "The environment's observation."}}}


def play_hello_hi(env):
    """One scripted episode: echo "hello", echo "hi", then answer."""
    tok = hermes_tokenizer()
    scripts = [[[call("echo", '{"message": "hello"}') + EOS, call("echo", '{"message": "hi"}') + EOS,
                 "I said hello, then hi." + EOS]]]
    [[c]], _engine, [prompt] = episode(tok, scripts, {}, env=env, questions=(QUESTION,), max_new_tokens=400)
    return tok.decode(prompt), c


def assert_hello_hi(prompt, c):
    # reset's observation is appended to the question, on a line of its own
    assert prompt.endswith(f"{QUESTION}\n{READY}<|im_end|>\n<|im_start|>assistant\n")
    assert c.messages == [
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "echo", "arguments": {"message": "hello"}}}]},
        {"role": "tool", "name": "echo", "content": '{"echoed_message": "hello", "message_length": 5}'},
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "echo", "arguments": {"message": "hi"}}}]},
        {"role": "tool", "name": "echo", "content": '{"echoed_message": "hi", "message_length": 2}'},
        {"role": "assistant", "content": "I said hello, then hi."}]
    assert (c.finish_reason, c.tool_stats["turns"], c.tool_stats["errors"]) == ("stop", 3, 0)
    assert c.environment.done is False
    # the echo environment rewards a step with 0.1 per character: the last step echoed "hi"
    assert c.environment.get_reward() == 2 * 0.1


def test_an_in_process_openenv_environment_plays_a_scripted_episode(echo):
    env = load_environment(f"{echo / 'echo_adapters.py'}:Echo")
    assert list(env.tools) == ["echo"] and env.has_reward
    assert env.tools["echo"].schema == echo_schema()
    assert_hello_hi(*play_hello_hi(env))


def test_an_openenv_server_plays_the_same_episode_over_its_websocket(echo, server):
    from echo.models import EchoAction

    module = type(sys)("echo_remote")
    module.Echo = openenv_environment(url=server, action=EchoAction, tool="echo")
    sys.modules["echo_remote"] = module
    try:
        env = load_environment("echo_remote:Echo")
        assert env.tools["echo"].schema == echo_schema()
        prompt, c = play_hello_hi(env)
    finally:
        del sys.modules["echo_remote"]
    assert_hello_hi(prompt, c)
    assert c.environment.observations == [READY, '{"echoed_message": "hello", "message_length": 5}',
                                          '{"echoed_message": "hi", "message_length": 2}']
    # each episode is a session of its own, closed once scored; the server allows 2 at once (the
    # reset that rendered the prompt may still hold one), and one past them is refused by name
    held = []
    refused = r"^OpenEnv server http://127.0.0.1:\d+: no session .*max_concurrent_envs"
    with pytest.raises(ConnectionError, match=refused):
        for _ in range(3):
            held.append(module.Echo())
            held[-1].reset()
    assert 2 <= len(held) <= 3  # the last one was refused
    for e in held:
        e.get_reward()

def test_done_ends_the_episode_and_bad_arguments_go_back_to_the_model(echo):
    tok = hermes_tokenizer()
    env = load_environment(f"{echo / 'echo_adapters.py'}:EchoUntilBye")
    scripts = [[[call("echo", '{"message": 3}') + EOS, call("echo", '{"message": "hello"}') + EOS,
                 call("echo", '{"message": "bye"}') + EOS, "Never reached." + EOS]]]
    [[c]], _engine, _prompts = episode(tok, scripts, {}, env=env, questions=(QUESTION,), max_new_tokens=600)
    results = [m["content"] for m in c.messages if m["role"] == "tool"]
    assert results[0].startswith("Error: ValidationError: 1 validation error for EchoAction\nmessage\n")
    assert results[1:] == ['{"echoed_message": "hello", "message_length": 5}',
                           '{"echoed_message": "bye", "message_length": 3}']
    assert (c.finish_reason, c.tool_stats["turns"], c.tool_stats["errors"]) == ("done", 3, 1)
    assert c.environment.done is True
    assert c.environment.get_reward() == pytest.approx(0.5 + 0.3)  # reward="sum": "hello" and "bye"
    # a finished episode takes no more steps
    assert c.environment.echo(message="again") == "The episode is over."


def test_reset_gets_the_columns_it_names_and_render_makes_the_text(echo):
    greeting = load_environment(f"{echo / 'echo_adapters.py'}:Greeting").factory()
    assert greeting.reset(name="Ada", answer="42") == "\nHello, Ada!"  # `answer` is not passed on
    assert greeting.echo(message="hi") == "hi"
    assert greeting.get_reward() == 2 * 0.1


def test_the_adapter_refuses_what_it_cannot_wrap(echo):
    from echo.models import EchoAction
    from echo.server.echo_environment import EchoEnvironment

    with pytest.raises(ValueError, match="either env"):
        openenv_environment(EchoEnvironment, url="http://localhost:8000", action=EchoAction)
    with pytest.raises(ValueError, match="either env"):
        openenv_environment(action=EchoAction)
    with pytest.raises(ValueError, match="cannot name a tool"):
        openenv_environment(EchoEnvironment, action=EchoAction, tool="reset")
    with pytest.raises(ValueError, match="reward must be"):
        openenv_environment(EchoEnvironment, action=EchoAction, reward="mean")
    with pytest.raises(ValueError, match="not an OpenEnv Action"):
        openenv_environment(EchoEnvironment, action=dict)
