"""Tool-call formats (`episodes.tool_format`): how tools are offered, how calls are read from a turn's
text, and which tokens carry the results back.

    python_block    any model. A ```python block that closes a turn is run by the `python` tool and
                    its output comes back as "```output\\n...\\n```\\n" in the same assistant turn
                    (the tool-integrated reasoning of ToRA, arXiv 2309.17452, and Qwen2.5-Math).
                    Generation stops at "```\\n": the first fence line after an open ```python
                    closes it, so that is where the code is complete. A stop there that closes no
                    python block (an untagged fence opening) just continues the turn. Only the
                    `python` tool is offered: the program runs in the sandbox, where the trainer's
                    functions cannot be reached, so user tools need chat_template.
    chat_template   the model's own format. Tools are rendered into the prompt by its chat template
                    (`apply_chat_template(..., tools=schemas)`); calls are Hermes-style
                    <tool_call>{"name": ..., "arguments": {...}}</tool_call> (Qwen2.5, Qwen3);
                    results go back as `tool` messages rendered by the same template.

Token exactness: sampled tokens are never decoded and re-encoded. The tokens appended after a turn
are only the new text: for chat_template, the template's rendering of [assistant turn, tool
messages, generation prompt] minus the rendering of the assistant turn, cut right after the turn's
end-of-turn special token (TRL's convention). Text after a special token tokenises the same
alone as in context, so these are exactly the ids the template would give there. If the turn did
not end with that token (a stop string ended it), the token is appended as a tool token.

Control tokens: a tool result (and a tool name the model wrote) is encoded with its special-token
strings as plain text, so a program printing "<|im_end|>\n<|im_start|>user\n..." cannot forge a
turn; only the template's own special tokens are tokens (groupo.data.control_tokens).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from groupo.config import ConfigError
from groupo.data.control_tokens import control_tokens, encode_chat, encode_marked, encode_text, mark
from groupo.data.prompts import encode_prompt
from groupo.rewards.code import code_blocks
from groupo.tools.base import ToolCall, ToolResult
from groupo.tools.toolbox import Toolbox
from groupo.types import Message

PYTHON_TAGS = ("python", "py", "python3")
_HERMES = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.DOTALL)


class PythonBlock:
    name = "python_block"
    stop = ("```\n",)

    def __init__(self, tokenizer, toolbox: Toolbox, template_kwargs: dict | None = None):
        others = sorted(set(toolbox.tools) - {"python"})
        if others:
            raise ConfigError(f"episodes.tool_format=python_block offers only the python tool, not {others} "
                              f"(its code runs in the sandbox, out of their reach); use "
                              f"episodes.tool_format=chat_template for them")
        if "python" not in toolbox.tools:
            raise ConfigError("episodes.tool_format=python_block runs ```python blocks with the python tool; "
                              "set episodes.tools=[python]")
        self.tokenizer, self.toolbox, self.template_kwargs = tokenizer, toolbox, dict(template_kwargs or {})

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        return encode_prompt(self.tokenizer, messages, self.template_kwargs)

    def parse(self, turn_ids: list[int]) -> list[ToolCall]:
        """The closed ```python block at the end of the turn, as a `python` call (none: no call)."""
        text = self.tokenizer.decode(turn_ids, skip_special_tokens=True)
        blocks = code_blocks(text)
        if not blocks or not text.rstrip().endswith("```"):
            return []
        lang, code, closed = blocks[-1]
        return [ToolCall("python", {"code": code}, text)] if closed and lang in PYTHON_TAGS else []

    def assistant_message(self, turn_ids: list[int], calls: list[ToolCall]) -> dict:
        return {"role": "assistant", "content": self.tokenizer.decode(turn_ids, skip_special_tokens=True)}

    def tool_ids(self, turn_ids: list[int], calls: list[ToolCall], results: list[ToolResult]) -> list[int]:
        return encode_text(self.tokenizer, output_block(results[0].content))  # all of it the tool's: plain text


def output_block(output: str) -> str:
    body = output.rstrip("\n")
    return f"```output\n{body}\n```\n" if body else "```output\n```\n"


class ChatTemplate:
    name = "chat_template"
    stop = ()

    def __init__(self, tokenizer, toolbox: Toolbox, template_kwargs: dict | None = None):
        self.tokenizer, self.toolbox, self.schemas = tokenizer, toolbox, toolbox.schemas
        self.template_kwargs = dict(template_kwargs or {})
        self.specials = sorted({t for t in tokenizer.all_special_tokens if t}, key=len, reverse=True)
        self.controls = control_tokens(tokenizer)
        try:
            why = self._cannot_render()
        except Exception as e:  # jinja errors: the template rejects tools or the tool role
            why = f"failed to render a tool call ({type(e).__name__}: {e})"
        if why:
            raise ConfigError(f"episodes.tool_format=chat_template: the tokenizer's chat template {why}; "
                              f"use episodes.tool_format=python_block (```python blocks, any model)")

    def _cannot_render(self) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            return "is missing"
        prompt = self._render([{"role": "user", "content": "hi"}], True)
        missing = [s["function"]["name"] for s in self.schemas if s["function"]["name"] not in prompt]
        if missing:
            return f"does not render the tools {missing} into the prompt"
        sentinel = "tool_result_7f3a9c"
        _, suffix = self._suffix([ToolCall("probe", {})], [ToolResult("probe", sentinel)])
        return "" if sentinel in suffix else "does not render tool messages"

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=self.schemas or None, tokenize=False,
                                                  add_generation_prompt=generation_prompt, **self.template_kwargs)

    def _suffix(self, calls: list[ToolCall], results: list[ToolResult]) -> tuple[str, str]:
        """(the assistant turn's end-of-turn special token, the text after it up to and including
        the next generation prompt)."""
        turn = [{"role": "user", "content": "x"}, self.assistant_message([], calls, "")]
        # marked (groupo.data.control_tokens): the results and the names the model wrote stay text
        tools = mark([{"role": "tool", "name": r.name, "content": r.content} for r in results], self.controls)
        before, after = self._render(turn, False), self._render(turn + tools, True)
        end, end_token = max(((before.rfind(s) + len(s), s) for s in self.specials if s in before),
                             default=(-1, ""))
        if end < 0 or after[:end] != before[:end]:
            raise ValueError("no end-of-turn special token after the assistant turn")
        return end_token, after[end:]

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        return encode_chat(self.tokenizer, messages, tools=self.schemas or None, add_generation_prompt=True,
                           **self.template_kwargs)

    def parse(self, turn_ids: list[int]) -> list[ToolCall]:
        return parse_hermes(self.tokenizer.decode(turn_ids, skip_special_tokens=False))

    def assistant_message(self, turn_ids: list[int], calls: list[ToolCall], text: str | None = None) -> dict:
        """TRL's parsed turn: the text without its <tool_call> blocks, and the calls."""
        if text is None:
            text = _HERMES.sub("", self.tokenizer.decode(turn_ids, skip_special_tokens=True)).strip()
        message: dict = {"role": "assistant", "content": text}
        parsed = [{"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                  for c in calls if c.arguments is not None]
        if parsed:
            message["tool_calls"] = parsed
        return message

    def tool_ids(self, turn_ids: list[int], calls: list[ToolCall], results: list[ToolResult]) -> list[int]:
        end_token, suffix = self._suffix(calls, results)
        end_id = self.tokenizer.convert_tokens_to_ids(end_token)
        close = [] if turn_ids and turn_ids[-1] == end_id else [end_id]
        return close + encode_marked(self.tokenizer, suffix)


def parse_hermes(text: str) -> list[ToolCall]:
    """Every <tool_call>{"name": ..., "arguments": {...}}</tool_call> of `text`; one that cannot be
    read becomes a call with `error` set (and goes back to the model as an error)."""
    calls = []
    for m in _HERMES.finditer(text):
        body, raw = m.group(1).strip(), m.group(0)
        if not m.group(2):
            calls.append(ToolCall("", None, raw, "<tool_call> is not closed by </tool_call>"))
            continue
        try:
            obj = json.loads(body)
            args = obj.get("arguments", {}) if isinstance(obj, dict) else None
            args = json.loads(args) if isinstance(args, str) else args
        except json.JSONDecodeError as e:
            calls.append(ToolCall("", None, raw, f"invalid JSON ({e.msg} at character {e.pos})"))
            continue
        except RecursionError:  # ~1,000 nested brackets (513 tokens of SmolLM2): the reader's depth limit
            calls.append(ToolCall("", None, raw, "invalid JSON (nested too deeply)"))
            continue
        except ValueError as e:  # a number of more than 4,300 digits
            calls.append(ToolCall("", None, raw, f"invalid JSON ({e})"))
            continue
        name = obj.get("name") if isinstance(obj, dict) else None
        if not isinstance(name, str) or not isinstance(args, dict):
            calls.append(ToolCall(name if isinstance(name, str) else "", None, raw,
                                  'expected {"name": "<tool>", "arguments": {...}}'))
            continue
        calls.append(ToolCall(name, args, raw))
    return calls


FORMATS = {"python_block": PythonBlock, "chat_template": ChatTemplate}


def make_format(tool_format: str, tokenizer, toolbox: Toolbox,
                template_kwargs: dict | None = None) -> PythonBlock | ChatTemplate:
    """The format `tool_format` names, built for `tokenizer` and `toolbox` (`template_kwargs`:
    rollout.chat_template_kwargs, for every prompt it renders): a ConfigError says when they cannot
    go together (the name itself is checked with the config key, episodes.tool_format)."""
    if tool_format not in FORMATS:
        raise ValueError(f"unknown tool format {tool_format!r}; valid: {', '.join(FORMATS)}")
    return FORMATS[tool_format](tokenizer, toolbox, template_kwargs)


def with_observation(messages: Sequence[Message], observation: str | None) -> list[Message]:
    """The prompt with an environment's reset text appended to its last message (TRL's rule)."""
    if observation is None:
        return list(messages)
    return [*messages[:-1], {**messages[-1], "content": messages[-1]["content"] + observation}]
