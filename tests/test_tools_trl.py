"""Episodes with tools laid out as TRL lays them out.

The reference is TRL itself: `GRPOTrainer._get_tool_suffix_ids` (the method TRL's tool loop uses
to tokenise tool results between two assistant turns) run on a stand-in trainer object. TRL is a
test-only dependency (`pip install -e .[trl]`); without it these tests skip.

TRL ships one environment (`trl.experimental.harbor`), which needs the `harbor` package (Python
3.12 or newer) and its task containers, so no TRL environment runs here; TRL-style environments
are exercised through examples/env_game.py (tests/test_tools.py).
"""

from types import SimpleNamespace

import pytest

trl = pytest.importorskip("trl")

from test_episodes import hermes_tokenizer  # noqa: E402
from trl.trainer.grpo_trainer import GRPOTrainer  # noqa: E402

from groupo.tools import ChatTemplate, Toolbox, ToolCall, ToolResult, ToolSettings, load_tools  # noqa: E402


def trl_suffix(tok, results: list[ToolResult]) -> list[int]:
    trainer = SimpleNamespace(processing_class=tok, _tokenizer=tok, chat_template=None, chat_template_kwargs={},
                              _is_vlm=False)
    messages = [{"role": "tool", "name": r.name, "content": r.content} for r in results]
    return GRPOTrainer._get_tool_suffix_ids(trainer, messages)


@pytest.mark.parametrize("results", [
    [ToolResult("calculator", "42")],
    [ToolResult("calculator", "7"), ToolResult("calculator", "Error: ZeroDivisionError: division by zero")],
    [ToolResult("calculator", "line one\nline two with <b>markup</b> and ünïcode")],
])
def test_the_tool_tokens_between_two_turns_are_trls(results):
    tok = hermes_tokenizer()
    fmt = ChatTemplate(tok, Toolbox(load_tools(["calculator"]), None, ToolSettings(), tok))
    calls = [ToolCall(r.name, {"expression": "6*7"}) for r in results]
    end = tok.convert_tokens_to_ids("<|im_end|>")
    turn = tok('<tool_call>\n{"name": "calculator", "arguments": {"expression": "6*7"}}\n</tool_call>',
               add_special_tokens=False)["input_ids"] + [end]  # the turn as sampled, ending the turn
    want = trl_suffix(tok, results)
    assert fmt.tool_ids(turn, calls, results) == want
    assert tok.decode(want).startswith("\n<|im_start|>user\n<tool_response>\n") and want[-1] != end
    # a turn cut before its end-of-turn token gets that token first, then the same tokens
    assert fmt.tool_ids(turn[:-1], calls, results) == [end, *want]
