"""OpenEnv environments as `episodes.environment`s.

An OpenEnv environment (the `openenv-core` package) speaks Gymnasium's language: `reset()` and
`step(action)` return an Observation (a pydantic model with `done`, `reward` and the
environment's own fields), and an Action is a pydantic model too. `openenv_environment` turns one
into the class that `episodes.environment` loads (TRL's `environment_factory` convention, see
groupo/tools/load.py):

    # my_env.py, then episodes.environment: my_env.py:Echo
    from groupo.tools.openenv import openenv_environment
    from echo.models import EchoAction
    from echo.server.echo_environment import EchoEnvironment

    Echo = openenv_environment(EchoEnvironment, action=EchoAction, tool="echo")
    # or, against a running server (`uvicorn echo.server.app:app`):
    EchoServer = openenv_environment(url="http://localhost:8000", action=EchoAction, tool="echo")

Each episode gets its own instance: in-process, a new environment from `env()`; with a `url`, a
session of its own on the server (one WebSocket connection), so the server must allow as many
concurrent sessions as episodes run at once (`max_concurrent_envs`). `reset(**columns)` resets the
OpenEnv environment, passing it the dataset columns named in `reset_columns`, and returns its
observation as text; the one tool, named `tool`, takes the Action's fields as its arguments (their
types and descriptions make its schema), sends the Action through `step()`, and returns the
observation as text; `done` is the last observation's; `get_reward()` is the last observation's
reward (`reward="sum"`: the sum over the episode's steps), 0.0 where the environment gave none.

In-process use needs nothing from OpenEnv here (the environment brings its own imports); the
server client does, from `openenv-core` (`pip install groupo[openenv]`), imported only then.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from typing import Any

OBSERVATION_META = ("done", "reward", "metadata")  # an Observation's common fields; the rest is its content


def observation_text(fields: dict[str, Any]) -> str:
    """An observation's own fields as text: the value itself when there is one field, else the
    fields as JSON (in their declared order)."""
    if len(fields) == 1:
        (value,) = fields.values()
        return value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(fields, default=str)


def openenv_environment(env: Callable[[], Any] | None = None, *, url: str | None = None, action: type,
                        tool: str = "step", reset_columns: Sequence[str] = (),
                        render: Callable[[dict[str, Any]], str] = observation_text, reward: str = "last") -> type:
    """A TRL-style environment class wrapping an OpenEnv environment.

    Args:
        env: the OpenEnv Environment class (or a function returning a new instance), run in this
            process; one instance per episode. Give this or `url`.
        url: the base URL of a running OpenEnv server (http:// or ws://); one session per episode.
        action: the environment's Action class (a pydantic model): its fields, other than
            `metadata`, are the tool's arguments, its docstring the tool's description.
        tool: the tool's name, as the model sees it.
        reset_columns: dataset columns passed to the OpenEnv `reset` as keyword arguments.
        render: an observation's own fields (all but done, reward, metadata) -> the text the model
            reads.
        reward: "last" (the last observation's reward) or "sum" (over the steps).
    """
    if (env is None) == (url is None):
        raise ValueError("openenv_environment: give either env (an Environment class or factory) or url")
    if reward not in ("last", "sum"):
        raise ValueError(f"openenv_environment: reward must be 'last' or 'sum', not {reward!r}")
    if not tool.isidentifier() or tool.startswith("_") or tool in ("reset", "get_reward"):
        raise ValueError(f"openenv_environment: {tool!r} cannot name a tool: use a public identifier other than "
                         f"reset and get_reward")
    fields = {name: f for name, f in getattr(action, "model_fields", {}).items() if name != "metadata"}
    if not fields:
        raise ValueError(f"openenv_environment: {action!r} is not an OpenEnv Action with fields")
    open_session = (lambda: _Local(env)) if env is not None else (lambda: _Remote(url))
    method = _tool_method(tool, action, fields)
    name = f"OpenEnv_{getattr(env, '__name__', None) or tool}"
    return type(name, (OpenEnvEpisode,), {tool: method, "_open_session": staticmethod(open_session),
                                          "_action": action, "_render": staticmethod(render),
                                          "_reward_mode": reward, "_reset_columns": tuple(reset_columns),
                                          "__module__": __name__})


class OpenEnvEpisode:
    """One episode of an OpenEnv environment (made by `openenv_environment`, which adds the tool
    method). Its only public methods are reset and get_reward: every other public one is a tool."""

    _open_session: Callable[[], Any]
    _action: type
    _render: Callable[[dict[str, Any]], str]
    _reward_mode: str
    _reset_columns: tuple[str, ...]

    def __init__(self) -> None:
        self._session = None  # opened by reset, so that loading (which makes a probe instance) connects nothing
        self._rewards: list[float | None] = []
        self.done = False
        self.observations: list[str] = []  # the text of each observation, reset's first

    def reset(self, **columns) -> str | None:
        self._close()
        self._rewards, self.observations = [], []
        session = self._open_session()
        observed = session.reset(**{k: columns[k] for k in self._reset_columns if k in columns})
        self._session = session
        text = self._record(*observed)
        return "\n" + text if text else None

    def get_reward(self) -> float:
        """The episode's reward; the episode is over once it is scored, so its session is closed."""
        self._close()
        if self._reward_mode == "sum":
            return float(sum(r for r in self._rewards[1:] if r is not None))
        last = self._rewards[-1] if self._rewards else None
        return 0.0 if last is None else float(last)

    def _step(self, arguments: dict[str, Any]) -> str:
        if self.done:
            return "The episode is over."
        if self._session is None:
            raise RuntimeError("the environment was not reset, or its episode was scored")
        act = self._action(**arguments)  # pydantic checks the arguments; an error goes back to the model
        return self._record(*self._session.step(act))

    def _record(self, fields: dict[str, Any], reward: float | None, done: bool) -> str:
        self._rewards.append(reward)
        self.done = bool(done)
        text = self._render(fields)
        self.observations.append(text)
        if self.done:
            self._close()
        return text

    def _close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()


class _Local:
    """An environment instance in this process."""

    def __init__(self, factory: Callable[[], Any]):
        self.env = factory()

    def reset(self, **kwargs) -> tuple[dict[str, Any], float | None, bool]:
        return _split(self.env.reset(**kwargs))

    def step(self, action) -> tuple[dict[str, Any], float | None, bool]:
        return _split(self.env.step(action))

    def close(self) -> None:
        close = getattr(self.env, "close", None)
        if callable(close):
            close()


class _Remote:
    """A session on an OpenEnv server: its WebSocket connection opens at reset, on a loop of its own."""

    def __init__(self, url: str):
        from openenv.core import GenericEnvClient

        self.url, self.client = url, GenericEnvClient(base_url=url).sync()

    def reset(self, **kwargs) -> tuple[dict[str, Any], float | None, bool]:
        try:
            result = self.client.reset(**kwargs)
        except Exception as e:  # refused at capacity, the server closes the connection without a word
            self.client.close()
            raise ConnectionError(f"OpenEnv server {self.url}: no session ({type(e).__name__}: {e}); is it running, "
                                  f"and does its max_concurrent_envs allow one session per episode run at once?"
                                  ) from e
        return dict(result.observation), result.reward, result.done

    def step(self, action) -> tuple[dict[str, Any], float | None, bool]:
        result = self.client.step(action.model_dump(exclude={"metadata"}))
        return dict(result.observation), result.reward, result.done

    def close(self) -> None:
        self.client.close()


def _split(observation) -> tuple[dict[str, Any], float | None, bool]:
    """(own fields, reward, done) of an Observation, as the server sends them."""
    return observation.model_dump(exclude=set(OBSERVATION_META)), observation.reward, observation.done


def _tool_method(tool: str, action: type, fields: dict) -> Callable:
    """The tool: a method whose signature and docstring are the Action's fields, so that its JSON
    schema (transformers' get_json_schema) shows the model what to send."""

    def method(self, *args, **kwargs) -> str:
        bound = method.__signature__.bind(self, *args, **kwargs)
        bound.apply_defaults()
        return self._step({n: v for n, v in bound.arguments.items() if n != "self"})

    required = [n for n, f in fields.items() if f.is_required()]
    optional = [n for n in fields if n not in required]
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for n in required + optional:
        f = fields[n]
        default = inspect.Parameter.empty if f.is_required() else f.get_default(call_default_factory=True)
        params.append(inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                                        annotation=f.annotation))
    method.__signature__ = inspect.Signature(params, return_annotation=str)
    method.__annotations__ = {**{n: fields[n].annotation for n in fields}, "return": str}
    summary = inspect.cleandoc(action.__doc__ or "").split("\n\n")[0].replace("\n", " ").strip()
    args = "\n".join(f"    {n}: {(fields[n].description or n).strip()}" for n in required + optional)
    method.__doc__ = (f"{summary or f'Act in the environment ({action.__name__}).'}\n\nArgs:\n{args}\n\n"
                      f"Returns:\n    The environment's observation.")
    method.__name__ = method.__qualname__ = tool
    return method
