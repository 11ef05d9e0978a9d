"""The tools of a run (`Toolbox`) and of one episode (`EpisodeTools`), whose `call` never raises.

Whatever the model writes, a call ends as a `ToolResult` that goes back to it: malformed JSON, an
unknown tool (the valid names are listed), wrong arguments, a tool that raises (its exception
type and message; also a result whose `str()` raises), a call past its wall-clock limit, output
past `max_output_tokens` (cut and marked). Each is counted in the episode's statistics. An
environment whose `done` raises is read as not done, with one warning.

Timeouts: `python` runs under the sandbox's own limits. A user or environment function runs in a
thread of its own that the caller stops waiting for after `timeout_s`; Python cannot kill a
thread, so a timed-out sync function keeps running in the background until it returns (it is the
user's trusted code; make it return). An async function is cancelled at its next await.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from groupo.config import ConfigError
from groupo.data.control_tokens import encode_text
from groupo.tools.base import Tool, ToolCall, ToolResult, ToolSettings, is_async
from groupo.tools.load import Environment
from groupo.tools.python_tool import PythonSession

TRUNCATION_MARK = "\n[... truncated {n} tokens]"
CUT_MARK = "\n[... truncated {n} characters]"
# Tokenizing costs time in the length of the text (a 10 MB result: 19 s, under the lock below), so
# a result is first cut to this many characters per allowed token, more than any token spans in
# practice; only then is it tokenized and cut to max_output_tokens.
MAX_TOKEN_CHARS = 32
log = logging.getLogger(__name__)


class Toolbox:
    """The run's tools: standalone `tools` (load_tools), an optional `environment`
    (load_environment) whose methods are tools too, `settings` (limits), and the policy's
    `tokenizer` (tool output is measured in its tokens)."""

    def __init__(self, tools: Mapping[str, Tool], environment: Environment | None, settings: ToolSettings,
                 tokenizer):
        clash = set(tools) & set(environment.tools) if environment else set()
        if clash:
            raise ConfigError(f"episodes.tools: {sorted(clash)} also named by episodes.environment "
                              f"{environment.spec!r}; rename one of them")
        self.tools = {**tools, **(environment.tools if environment else {})}
        self.environment, self.settings, self.tokenizer = environment, settings, tokenizer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._warned_done = False

    @property
    def schemas(self) -> list[dict]:
        """The JSON schemas rendered into the prompt by `chat_template`."""
        return [t.schema for t in self.tools.values()]

    def new_episode(self, columns: Mapping[str, Any]) -> EpisodeTools:
        """A fresh episode: its own environment instance, reset with the dataset columns (TRL's
        `reset(**columns)`), and its own Python session."""
        env = observation = None
        if self.environment is not None:
            try:
                env = self.environment.factory()
                observation = env.reset(**columns)
                observation = None if observation is None else str(observation)
            except Exception as e:  # the user's code, on a dataset row: name both
                raise ConfigError(f"episodes.environment: {self.environment.spec} reset(**columns) failed on a row "
                                  f"with columns {sorted(columns)}: {type(e).__name__}: {e}") from e
        return EpisodeTools(self, env, observation)

    def run_async(self, coro, timeout_s: float) -> Any:
        """Run a coroutine on the toolbox's event loop (one for the run, in a daemon thread, as TRL
        keeps one: environments may hold async clients bound to a loop)."""
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, daemon=True, name="groupo-tools").start()
        return asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, timeout_s), self._loop).result()

    def truncate(self, text: str) -> tuple[str, bool]:
        """`text` cut to max_output_tokens tokens of the policy's tokenizer, with a marker: the
        tokens cut, or where the text was first cut by length (see MAX_TOKEN_CHARS), the characters."""
        limit = self.settings.max_output_tokens
        head = text[:limit * MAX_TOKEN_CHARS]
        with self._lock:  # a fast tokenizer called from two threads at once can fail ("Already borrowed")
            ids = encode_text(self.tokenizer, head)  # as formats encode it: special-token strings are text
            kept = self.tokenizer.decode(ids[:limit], skip_special_tokens=False) if len(ids) > limit else head
        if len(head) == len(text):
            return (text, False) if len(ids) <= limit else (kept + TRUNCATION_MARK.format(n=len(ids) - limit), True)
        return kept + CUT_MARK.format(n=len(text) - len(kept)), True

    def warn_done(self, e: Exception) -> None:
        if not self._warned_done:
            self._warned_done = True
            log.warning("warning: episodes.environment: %s: reading `done` raised %s: %s; read as not done",
                        self.environment.spec if self.environment else "?", type(e).__name__, e)


class EpisodeTools:
    """One episode's tools, bound to its environment instance and Python session."""

    def __init__(self, toolbox: Toolbox, environment: Any, observation: str | None):
        self.toolbox, self.environment, self.observation = toolbox, environment, observation
        s = toolbox.settings
        self.python = PythonSession(s.timeout_s, s.python_memory_mb, s.workers) if "python" in toolbox.tools else None

    @property
    def done(self) -> bool:
        """The environment says the episode is over (an attribute `done` that is true)."""
        try:
            return bool(getattr(self.environment, "done", False))
        except Exception as e:  # the user's property, e.g. on a state the model's calls produced
            self.toolbox.warn_done(e)
            return False

    def call(self, call: ToolCall) -> ToolResult:
        start = time.monotonic()
        content, error = self._call(call)
        content, truncated = self.toolbox.truncate(content)
        return ToolResult(call.name or "unknown", content, error, truncated, time.monotonic() - start)

    def _call(self, call: ToolCall) -> tuple[str, bool]:
        if call.error:
            return f"Error: malformed tool call: {call.error}", True
        tools = self.toolbox.tools
        if call.name not in tools:
            return f"Error: unknown tool {call.name!r}; valid tools: {', '.join(tools)}", True
        if call.name == "python" and self.python is not None:
            code = (call.arguments or {}).get("code")
            if not isinstance(code, str) or set(call.arguments) != {"code"}:
                return "Error: python takes one argument, code (a string)", True
            output, ok = self.python.run(code)
            return output, not ok
        func = tools[call.name].func or getattr(self.environment, call.name)
        try:
            inspect.signature(func).bind(**call.arguments)
        except TypeError as e:
            return f"Error: wrong arguments for {call.name}: {e}", True
        timeout = self.toolbox.settings.timeout_s
        try:  # str() of the result too: it is the user's code, and may raise or take long
            if is_async(func):
                text = self.toolbox.run_async(_as_text(func(**call.arguments)), timeout)
            else:
                text = _run_with_timeout(lambda: str(func(**call.arguments)), timeout)
        except TimeoutError:
            return f"Error: {call.name} did not return within {timeout:g} s", True
        except Exception as e:
            return f"Error: {type(e).__name__}: {e}", True
        return text, False


async def _as_text(coro) -> str:
    return str(await coro)


def _run_with_timeout(func: Callable[[], Any], timeout_s: float) -> Any:
    """func() in a daemon thread; TimeoutError if it has not returned after timeout_s."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = func()
        except BaseException as e:  # handed to the caller, which turns it into an error result
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True, name="groupo-tool-call")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError
    if "error" in box:
        error = box["error"]
        raise error if isinstance(error, Exception) else RuntimeError(f"{type(error).__name__}: {error}")
    return box["result"]


def environment_rewards(environments: list) -> list[float | None]:
    """Each episode's environment-owned reward, `get_reward()` (None where it has none), as TRL
    adds it to the rewards when an environment defines get_reward."""
    return [e.get_reward() if callable(getattr(e, "get_reward", None)) else None for e in environments]
