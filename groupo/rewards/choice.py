"""Multiple-choice answers: which option letter a completion chose, and the `choice` reward.

`extract_choice(text, letters)` looks, in this order, for:

    1. the last <answer>...</answer> (then \\boxed{}): the letter it holds ("B", "(B)", "B. 42",
       "Answer: B"); a tag holding no letter means no choice (the tag is the declared answer, so
       a letter elsewhere in the reasoning does not stand in for it);
    2. the last answer phrase followed by a letter: "the answer is D", "Answer: C", "correct
       option is (B)", Vietnamese "Đáp án: C", "đáp án đúng là B", "Chọn A", Chinese "答案：B",
       "答案是C", "故选D";
    3. option markers, "(B)" or "option B" anywhere, "B." / "B)" at the start of a line, or a
       completion that is only a letter: used when they all name the same letter.

Letters are capitals (a lower-case "a" is too often the article); a lone lower-case letter in
the tag or the box counts. A choice that hedges ("A or B", "đáp án A và B", "(A) ... (C)" with no
declared answer) is no choice: listing several options must not earn the reward of one. Text is
NFKC-normalised first, so full-width "Ｂ" and "答案：" read as "B" and "答案:".
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import Any

from groupo.rewards.base import RewardError, completion_text
from groupo.rewards.extract import answer_tag, boxed, normalize_text

LETTERS = string.ascii_uppercase[:10]  # A-J: up to ten options (MMLU-Pro has ten)
DEFAULT_LETTERS = "ABCDE"
_LATIN = r"A-Za-z\u00C0-\u024F\u1E00-\u1EFF"  # Latin letters, Vietnamese ones included
_NOT_LETTER = rf"(?![{_LATIN}])"  # no Latin letter follows: "A" but not "Apple" or "Ăn" ("B项" is fine)
_PHRASE = re.compile(
    r"(?:(?:final|correct|right|best)\s+)?(?:answer|option|choice)\s*(?:is|:|=|would\s+be|should\s+be)"
    r"|(?:đáp\s+án|câu\s+trả\s+lời|phương\s+án|lựa\s+chọn)(?:\s+(?:đúng|chính\s+xác|cuối\s+cùng))?\s*(?:là|:)?"
    r"|chọn(?:\s+(?:đáp\s+án|phương\s+án))?"
    r"|答案\s*(?:是|为|:)?|正确选项\s*(?:是|为|:)?|故选|应选|选择?",
    re.IGNORECASE)
_LEAD_WORDS = re.compile(r"^\s*(?:(?:option|choice|letter|đáp\s+án|phương\s+án|选项)\s*)?", re.IGNORECASE)
_JOIN = r"\s*(?:,|/|&|\bor\b|\band\b|hoặc|và|或|和|、)\s*"


def _lead(text: str, letters: str) -> tuple[str | None, bool]:
    """(letter, hedged) for a letter at the start of `text` ("B", "(B)", "option B: ..."); hedged
    when another option follows it joined by "or", "and", "/", "hoặc", "或" ..."""
    cls = f"[{letters}]"
    rest = _LEAD_WORDS.sub("", text, count=1)
    m = re.match(rf"\s*[(\[]?\s*({cls}){_NOT_LETTER}\s*[)\]]?", rest)
    if not m:
        return None, False
    hedged = re.match(rf"{_JOIN}(?:(?:option|đáp\s+án|phương\s+án)\s*)?[(\[]?\s*{cls}{_NOT_LETTER}",
                      rest[m.end():], re.IGNORECASE)
    return m.group(1), bool(hedged)


def _from_phrases(text: str, letters: str) -> tuple[str | None, bool]:
    """The letter after the last answer phrase that is followed by one (earlier phrases are
    reasoning: "the answer is not A ... so the answer is C")."""
    for m in reversed(list(_PHRASE.finditer(text))):
        letter, hedged = _lead(text[m.end():m.end() + 200], letters)  # a letter follows closely
        if letter is not None:
            return letter, hedged
    return None, False


def _from_markers(text: str, letters: str) -> str | None:
    cls = f"[{letters}]"
    found = set(re.findall(rf"(?<![{_LATIN}])\(\s*({cls})\s*\)", text))
    found |= set(re.findall(rf"(?m)^\s*({cls})\s*[.):](?![{_LATIN}])", text))
    found |= set(re.findall(rf"(?i:\b(?:option|choice|phương\s+án|đáp\s+án|选项))\s*({cls}){_NOT_LETTER}", text))
    if m := re.fullmatch(rf"\s*[(\[]?\s*({cls})\s*[)\]]?\s*\.?\s*", text):
        found.add(m.group(1))
    return found.pop() if len(found) == 1 else None


def _from_span(span: str, letters: str) -> str | None:
    """The letter an <answer> tag or a box holds."""
    if m := re.fullmatch(rf"\s*[(\[]?\s*([{letters}{letters.lower()}])\s*[)\]]?\s*\.?\s*", span):
        return m.group(1).upper()
    for find in (lambda s: _lead(s, letters), lambda s: _from_phrases(s, letters)):
        letter, hedged = find(span)
        if letter is not None:
            return None if hedged else letter
    return _from_markers(span, letters)


def extract_choice(text: str, letters: str = DEFAULT_LETTERS) -> str | None:
    """The option letter (one of `letters`) a completion chose, or None (see the module doc)."""
    text = normalize_text(text).replace("**", "").replace("__", "")
    for span in (answer_tag(text), boxed(text)):
        if span is not None:
            return _from_span(span, letters)
    letter, hedged = _from_phrases(text, letters)
    if letter is not None:
        return None if hedged else letter
    return _from_markers(text, letters)


def gold_letter(answer: Any, index: int, n_options: int | None = None) -> str:
    """A reference answer as its option letter ("b", "(B)", "B." -> "B"); anything else is a
    RewardError naming the sample (a broken reference, not the model's fault)."""
    text = re.sub(r"[\s().\[\]]", "", str(answer if answer is not None else "")).upper()
    valid = LETTERS[:n_options] if n_options else LETTERS
    if len(text) != 1 or text not in valid:
        raise RewardError(f"choice_reward: sample {index} has reference answer {answer!r}, not an option letter "
                          f"({valid[0]}-{valid[-1]})")
    return text


def option_letters(options: Any) -> str:
    """The letters of a row's options (a list or a letter -> text mapping), else A-E."""
    if isinstance(options, dict):
        return "".join(k for k in LETTERS if k in options) or DEFAULT_LETTERS
    if isinstance(options, (list, tuple)) and 2 <= len(options) <= len(LETTERS):
        return LETTERS[:len(options)]
    return DEFAULT_LETTERS


def choice_reward(completions: list, answer: list, prompts: list | None = None,
                  options: Sequence[Any] | None = None, **kwargs: Any) -> list[float]:
    """1.0 where the completion chose the reference option letter (`answer`), else 0.0. With an
    `options` column (the multiple-choice task's), only that row's letters count as choices."""
    out = []
    for i, (c, ref) in enumerate(zip(completions, answer, strict=True)):
        letters = option_letters(options[i] if options is not None else None)
        gold = gold_letter(ref, i, len(letters) if options is not None else None)
        out.append(1.0 if extract_choice(completion_text(c), letters) == gold else 0.0)
    return out
