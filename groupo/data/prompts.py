"""Chat messages for a question, in one of the prompt styles, and their token ids.

Styles (`TaskConfig.prompt_style`):

    plain       the question only
    answer_tag  the question, then: brief reasoning allowed, final answer in <answer>...</answer>
    r1          DeepSeek-R1 style: reasoning in <think>...</think>, then <answer>...</answer>
                (the R1-Zero system prompt of arXiv 2501.12948, table 1, is the default)
    boxed       the question, then: final answer in \\boxed{}
    python_tool the question, then: write a ```python block that prints the result (run by the
                python tool of an episode, episodes.tool_format=python_block), then <answer>...</answer>
    choice      a multiple-choice question (its options listed): brief reasoning allowed, the chosen
                option's letter in <answer>...</answer>

The instruction goes into the user turn (small instruct models follow it more reliably there than
in a system prompt). Few-shot examples become prior user/assistant turns whose assistant answers
are written in the same style, so the examples also show the format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from groupo.data.control_tokens import control_tokens, encode_chat, encode_marked, mark
from groupo.types import Message

STYLES = ("plain", "answer_tag", "r1", "boxed", "python_tool", "choice")

R1_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves "
    "it. The assistant first thinks about the reasoning process in the mind and then provides the "
    "user with the answer. The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>."
)

INSTRUCTIONS = {
    "plain": "",
    "answer_tag": "Think briefly, then give the final answer inside <answer></answer> tags, "
                  "for example <answer>42</answer>.",
    "r1": "Show your reasoning inside <think></think> tags, then give the final answer inside "
          "<answer></answer> tags.",
    "boxed": "Reason step by step, and put your final answer within \\boxed{}.",
    "python_tool": "Write a short Python program in a ```python block that prints the result; you will see "
                   "what it prints. Then give the final answer inside <answer></answer> tags.",
    "choice": "Think briefly, then give the letter of the correct option inside <answer></answer> tags, "
              "for example <answer>B</answer>.",
}

DEFAULT_SYSTEM = {"plain": None, "answer_tag": None, "r1": R1_SYSTEM_PROMPT, "boxed": None, "python_tool": None,
                  "choice": None}


@dataclass(frozen=True)
class Example:
    """A worked example for few-shot prompts: reasoning text and the final answer."""

    question: str
    reasoning: str
    answer: str


def user_turn(question: str, style: str) -> str:
    if style not in STYLES:
        raise ValueError(f"prompt style {style!r} is unknown; valid: {', '.join(STYLES)}")
    instruction = INSTRUCTIONS[style]
    return f"{question}\n{instruction}" if instruction else question


def assistant_turn(example: Example, style: str) -> str:
    """How a model answering in `style` should write `example`'s solution."""
    r, a = example.reasoning.strip(), example.answer
    lead = {"plain": f"{r} ", "answer_tag": f"{r}\n", "r1": f"{r}\n", "boxed": f"{r} ",
            "python_tool": f"{r}\n", "choice": f"{r}\n"}[style] if r else ""
    return {
        "python_tool": f"{lead}<answer>{a}</answer>",
        "choice": f"{lead}<answer>{a}</answer>",
        "plain": f"{lead}The answer is {a}.",
        "answer_tag": f"{lead}<answer>{a}</answer>",
        "r1": f"<think>\n{lead}</think>\n<answer>{a}</answer>",
        "boxed": f"{lead}The final answer is \\boxed{{{a}}}.",
    }[style]


def build_messages(question: str, style: str = "answer_tag", system_prompt: str | None = None,
                   examples: Sequence[Example] = ()) -> list[Message]:
    """[system?] + (user, assistant) per example + user question.

    system_prompt: None takes the style's default (only r1 has one); "" means no system turn.
    """
    system = DEFAULT_SYSTEM[style] if system_prompt is None and style in DEFAULT_SYSTEM else system_prompt
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    for ex in examples:
        messages.append({"role": "user", "content": user_turn(ex.question, style)})
        messages.append({"role": "assistant", "content": assistant_turn(ex, style)})
    messages.append({"role": "user", "content": user_turn(question, style)})
    return messages


def render_plain(messages: Sequence[Message]) -> str:
    """The fallback format for tokenizers without a chat template.

    Each turn is "Role: content" followed by a blank line; the prompt ends with "Assistant:" so
    the model continues as the assistant, e.g. "System: ...\\n\\nUser: What is 2+3?\\n\\nAssistant:".
    """
    turns = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join([*turns, "Assistant:"])


def encode_prompt(tokenizer, messages: Sequence[Message], template_kwargs: dict | None = None) -> list[int]:
    """Token ids of `messages` with the tokenizer's chat template and the generation prompt.

    The template is rendered to text and then tokenised without extra special tokens, because the
    template already writes BOS where the model expects one. A tokenizer with no chat template
    uses `render_plain` and its usual special tokens (e.g. BOS). Special-token strings inside the
    messages (a dataset row, a tool result in a chat) stay text (groupo.data.control_tokens).
    `template_kwargs` (rollout.chat_template_kwargs) go to the template, e.g. {"enable_thinking":
    False} for Qwen3.
    """
    if getattr(tokenizer, "chat_template", None):
        return encode_chat(tokenizer, messages, add_generation_prompt=True, **(template_kwargs or {}))
    ids = encode_marked(tokenizer, render_plain(mark(list(messages), control_tokens(tokenizer))))
    before, after = _added_around(tokenizer)
    return before + ids + after


def _added_around(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text (e.g. [BOS], [])."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    at = next((i for i in range(len(full) - len(bare) + 1) if full[i:i + len(bare)] == bare), 0)
    return list(full[:at]), list(full[at + len(bare):])
