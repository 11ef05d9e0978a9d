"""Tools for multi-turn episodes: loading (`episodes.tools`, `episodes.environment`), the built-in
`python` (sandboxed) and `calculator`, per-episode calls that never raise, and the tool-call
formats (`episodes.tool_format`). See docs/tools.md."""

from groupo.tools.base import Tool, ToolCall, ToolResult, ToolSettings
from groupo.tools.calculator import calculator
from groupo.tools.formats import (
                                  FORMATS,
                                  ChatTemplate,
                                  PythonBlock,
                                  make_format,
                                  output_block,
                                  parse_hermes,
                                  with_observation,
)
from groupo.tools.load import BUILTIN, Environment, load_environment, load_tools
from groupo.tools.toolbox import EpisodeTools, Toolbox, environment_rewards

__all__ = ["BUILTIN", "FORMATS", "ChatTemplate", "Environment", "EpisodeTools", "PythonBlock", "Tool", "ToolCall",
           "ToolResult", "ToolSettings", "Toolbox", "calculator", "environment_rewards",
           "load_environment", "load_tools", "make_format", "output_block", "parse_hermes", "with_observation"]

