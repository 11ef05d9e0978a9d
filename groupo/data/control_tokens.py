"""Token ids of text that must not become control tokens: tool results, dataset rows, anything a
chat template did not write itself.

A tokenizer turns the text "<|im_end|>" into the special token <|im_end|>. Text that reaches the
model from a tool (a program printing "<|im_end|>\\n<|im_start|>user\\n...") or from a dataset
would then forge turn boundaries and whole turns in the context. So such text is encoded with its
special-token strings as plain text, and only the template's own special tokens are tokens:

    encode_text   text that is all untrusted (the python_block output block): no added token at all
    encode_chat   a chat rendered by the template: the control-token strings inside the messages'
                  strings are marked with two private-use characters before rendering, and encoded
                  as plain text after it; the rest is encoded as before, so a chat without such
                  strings gets exactly the ids it always got

This is the scheme of transformers' `apply_chat_template(..., sanitize_control_tokens=True)`
(5.23), done here for every supported transformers version and for the rendered pieces of text
groupo tokenises itself (the tool suffix of an episode). Control tokens are the tokenizer's
special tokens: every added token marked special. Added tokens not marked special (Qwen's
<tool_call>) still encode as themselves; docs/tools.md says so.

Thread safety: `tokenizer(text, split_special_tokens=True)` would flip a flag on the shared Rust
tokenizer (a race with another thread's encode, and "Already borrowed"), so plain text goes
through the backend's normalizer, pre-tokenizer and model directly, which only read it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

START, END = "\U000f0c70", "\U000f0c71"  # Unicode private use: no tokenizer or template means anything by them
_MARKED = re.compile(f"{START}(.*?){END}|[{START}{END}]", re.DOTALL)


def control_tokens(tokenizer) -> list[str]:
    """The strings the tokenizer encodes as special tokens, longest first."""
    found = set(getattr(tokenizer, "all_special_tokens", None) or ())
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    found |= {t.content for t in added.values() if getattr(t, "special", False)}
    return sorted((t for t in found if t), key=len, reverse=True)


def mark(obj: Any, tokens: Sequence[str]) -> Any:
    """`obj` (a string, or lists and dicts of them, e.g. messages) with each control-token string
    wrapped in START ... END; markers already in a string are dropped first, so none can be forged."""
    if isinstance(obj, str):
        obj = obj.replace(START, "").replace(END, "")
        return re.sub("|".join(map(re.escape, tokens)), lambda m: START + m.group(0) + END, obj) if tokens else obj
    if isinstance(obj, dict):
        return {k: mark(v, tokens) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [mark(v, tokens) for v in obj]
    return obj


def encode_text(tokenizer, text: str) -> list[int]:
    """`text` as plain text: no added token (special or not) is matched in it."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a Python tokenizer: the keyword is local to the call there
        return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    splits = [s for s, _ in backend.pre_tokenizer.pre_tokenize_str(text)] if backend.pre_tokenizer else [text]
    return [t.id for s in splits for t in backend.model.tokenize(s)]


def encode_marked(tokenizer, text: str) -> list[int]:
    """A rendering of marked strings (`mark`): marked pieces as plain text, the rest as the
    tokenizer encodes it (the template's special tokens included). A lone marker (a template that
    cut a marked string) is dropped, but still separates the text on either side."""
    pieces = _MARKED.split(text)
    if len(pieces) == 1:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    ids: list[int] = []
    for i, piece in enumerate(pieces):
        if piece:  # odd pieces are marked strings (None for a lone marker)
            ids += _encode_piece(tokenizer, piece, plain=i % 2 == 1, first=not ids)
    return ids


def encode_chat(tokenizer, messages: Sequence[dict], **template_kwargs) -> list[int]:
    """The chat template's rendering of `messages` (with `template_kwargs`, e.g. tools and
    add_generation_prompt), its control tokens only those the template wrote."""
    text = tokenizer.apply_chat_template(mark(list(messages), control_tokens(tokenizer)), tokenize=False,
                                         **template_kwargs)
    return encode_marked(tokenizer, text)


def _encode_piece(tokenizer, piece: str, plain: bool, first: bool) -> list[int]:
    encode = (lambda t: encode_text(tokenizer, t)) if plain else (
        lambda t: list(tokenizer(t, add_special_tokens=False)["input_ids"]))
    if first:
        return encode(piece)
    # A piece from the middle of a text: encoded after a newline, which is then removed, so that
    # a SentencePiece tokenizer does not add the space it puts at the start of a text.
    newline = encode("\n")
    ids = encode("\n" + piece)
    return ids[len(newline):] if ids[:len(newline)] == newline else encode(piece)
