"""Loading tools (`episodes.tools`) and environments (`episodes.environment`) from their specs.

A tool spec is a built-in name (`python`, `calculator`) or a user function, `path/to/file.py:func`
or `package.module:func`: a plain function, sync or async, with type hints and a Google-style
docstring, exactly as TRL's `GRPOTrainer(tools=...)` takes them, so functions written for TRL work
unchanged. An environment spec `file.py:Class` (or `module:factory`) follows TRL's
`environment_factory`: called with no arguments once per episode; `reset(**dataset_columns)`
returns None or text appended to the prompt's last message; its public methods (not starting
with "_", other than `reset` and `get_reward`) are tools; an optional `get_reward()` scores the
episode.

User tools and environments are trusted code, run in the trainer's own process (as TRL runs them):
the user named them. Only model-written code is untrusted, and it only ever runs in the sandbox.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from groupo.config import ConfigError
from groupo.tools.base import Tool, schema_of
from groupo.tools.calculator import calculator
from groupo.tools.python_tool import python

BUILTIN = {"python": python, "calculator": calculator}
RESERVED = ("reset", "get_reward")


def load_tools(specs: list[str]) -> dict[str, Tool]:
    """name -> Tool for each spec, in order. The `python` tool has func None: it is bound per
    episode to that episode's sandboxed session."""
    tools: dict[str, Tool] = {}
    for spec in specs:
        func = BUILTIN.get(spec) or load_object(spec, "episodes.tools")
        if not callable(func) or inspect.isclass(func):
            raise ConfigError(f"episodes.tools: {spec!r} is not a function; name a plain function, "
                              f"e.g. my_tools.py:search")
        tool = Tool(func.__name__, schema_of(func, "episodes.tools", spec), None if spec == "python" else func)
        if tool.name in tools:
            raise ConfigError(f"episodes.tools: two tools are named {tool.name!r}; list each tool once")
        tools[tool.name] = tool
    return tools


@dataclass(frozen=True)
class Environment:
    """A loaded environment: `factory()` makes one instance per episode; `tools` are the schemas of
    its methods (found on a probe instance, as TRL does); `has_reward`: it defines get_reward."""

    spec: str
    factory: Callable[[], Any]
    tools: dict[str, Tool]
    has_reward: bool


def load_environment(spec: str) -> Environment:
    factory = load_object(spec, "episodes.environment")
    if not callable(factory):
        raise ConfigError(f"episodes.environment: {spec!r} is not a class or factory function")
    try:
        probe = factory()
    except Exception as e:
        raise ConfigError(f"episodes.environment: {spec}() failed: {type(e).__name__}: {e}") from None
    if not callable(getattr(probe, "reset", None)):
        raise ConfigError(f"episodes.environment: {spec!r} has no reset method; define "
                          f"reset(self, **columns) returning None or text to append to the prompt")
    tools = {}
    for name in environment_methods(probe):
        tools[name] = Tool(name, schema_of(getattr(probe, name), "episodes.environment", f"{spec}.{name}"))
    return Environment(spec, factory, tools, callable(getattr(probe, "get_reward", None)))


def environment_methods(instance: Any) -> list[str]:
    """The names of an environment's tool methods. Read on the class: reading them on the
    instance would evaluate its properties."""
    return [name for name, _ in inspect.getmembers(type(instance), predicate=inspect.isfunction)
            if not name.startswith("_") and name not in RESERVED]


def load_object(spec: str, key: str) -> Any:
    """The object `spec` names: "path/to/file.py:name" (relative to the working directory) or
    "package.module:name"."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise ConfigError(f"{key}: {spec!r} is not file.py:name or module:name (or a built-in: "
                          f"{', '.join(BUILTIN)})")
    try:
        module = _load_file(where, key, spec) if where.endswith(".py") else importlib.import_module(where)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"{key}: importing {where!r} for {spec!r} failed: {type(e).__name__}: {e}") from None
    if not hasattr(module, name):
        raise ConfigError(f"{key}: {where!r} has no {name!r} (for {spec!r}); check the name after the colon")
    return getattr(module, name)


def _load_file(path: str, key: str, spec: str):
    file = Path(path).resolve()
    if not file.is_file():
        raise ConfigError(f"{key}: file {path!r} of {spec!r} does not exist (relative to {Path.cwd()})")
    # One module per file, under a name of its own, so two tool files named tools.py do not clash.
    name = f"groupo_user_{abs(hash(str(file))):x}_{file.stem}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # before exec: dataclasses and pickling look the module up by name
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
