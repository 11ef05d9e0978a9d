"""The small types of tool calling: a tool, a parsed call, its result, the per-call limits."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from groupo.config import ConfigError


@dataclass(frozen=True)
class ToolSettings:
    """Limits of every tool call. Units are in the names.

    timeout_s: wall-clock limit of one call (the sandbox's wall and CPU limit for `python`).
    max_output_tokens: a result longer than this (counted with the policy's tokenizer) is cut and
        marked "[... truncated N tokens]", or "[... truncated N characters]" where a huge result was
        first cut by length (`episodes.max_tool_output_tokens`).
    python_memory_mb: address space of the `python` tool's sandboxed process.
    workers: parallel sandbox runs across episodes (0 = one per CPU).
    """

    timeout_s: float = 10.0
    max_output_tokens: int = 256
    python_memory_mb: int = 1024
    workers: int = 0

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.max_output_tokens < 1:
            raise ConfigError(f"tool settings: timeout_s must be > 0 and max_output_tokens >= 1, got {self}")


@dataclass(frozen=True)
class Tool:
    """A function the model may call.

    schema: the JSON schema chat templates render ({"type": "function", "function": {...}}),
        from the function's type hints and docstring (transformers' `get_json_schema`).
    func: the function. For a tool bound to an episode (the `python` tool, an environment's
        methods) this is None: `EpisodeTools` binds it per episode.
    """

    name: str
    schema: dict
    func: Callable[..., Any] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ToolCall:
    """One call as the model wrote it. `error` is set (and `arguments` is None) when it could not
    be parsed, e.g. malformed JSON; the call then goes back to the model as an error result."""

    name: str
    arguments: dict | None
    raw: str = ""
    error: str = ""


@dataclass(frozen=True)
class ToolResult:
    """What a call gave back (the text the model sees), and how it went."""

    name: str
    content: str
    error: bool = False
    truncated: bool = False
    seconds: float = 0.0


def schema_of(func: Callable, what: str, spec: str) -> dict:
    """The JSON schema of `func`; a ConfigError naming `what` (the config key) and `spec` when its
    type hints or docstring do not give one."""
    from transformers.utils import get_json_schema

    try:
        return get_json_schema(func)
    except Exception as e:  # transformers raises TypeHintParsingException / DocstringParsingException
        raise ConfigError(f"{what}: {spec!r} has no JSON schema ({e}); give every argument a type hint and "
                          f"write a Google-style docstring with an Args: section") from None


def is_async(func: Callable) -> bool:
    return inspect.iscoroutinefunction(func)
