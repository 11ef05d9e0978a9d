"""Find the final answer in a completion, and read numbers the way people write them.

Extractors (each returns the candidate answer text, or None when its marker is absent):

    answer_tag   content of the last <answer>...</answer>
    boxed        content of the last \\boxed{...} or \\fbox{...} (brace-matched, so nested braces work)
    gsm8k        text after the last "####" (GSM8K's reference format)
    answer_is    the value after the last "the answer is" / "answer:" / "答案是" ...
    last_number  the last number in the text

`extract_answer(text, order)` tries them in `order` and returns the first hit.

`parse_number(text)` reads a whole answer string as an exact `Fraction`, or None when it is not
a plain number. It accepts thousands separators (1,000 and LaTeX 1{,}000), currency ($ \\$ € £ ¥
元), percent, trailing units ("18 dollars", "5 cm", "18元"), decimals, fractions (3/4, \\frac34,
\\dfrac{3}{4}), negative signs (-, −), full-width digits and punctuation (NFKC), "x = 5" and
"2 + 3 = 5" (the value after the last "="). It rejects anything symbolic ("5x", "\\sqrt{2}",
"1,00"), which then goes to the symbolic check.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from fractions import Fraction

MAX_NUMBER_CHARS = 100  # longer text is not one number (and the unit pattern is quadratic in it)
DEFAULT_ORDER = ("answer_tag", "boxed", "gsm8k", "answer_is", "last_number")


def normalize_text(text: str) -> str:
    """NFKC (full-width digits and punctuation to ASCII) plus the Unicode minus signs."""
    text = unicodedata.normalize("NFKC", text)
    return text.replace("\u2212", "-").replace("\u2013", "-").replace("\ufe63", "-")


# ---------------------------------------------------------------------------------------------
# Extractors

_ANSWER_IS_RE = re.compile(
    r"(?:final\s+answer|the\s+answer|answer)\s*(?:is|:|=)\s*:?|答案\s*(?:是|为|:)\s*:?|答\s*:", re.IGNORECASE)
# A number: optional sign (not a binary minus: no digit or bracket just before), digits with
# optional thousands groups and decimals, or a fraction a/b.
_NUM = r"(?:(?<![\w)\]}])-)?(?:\d+\s*/\s*\d+|(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
_NUM_RE = re.compile(_NUM)
_LEAD_NUM_RE = re.compile(r"\s*(?:\\?\$|[€£¥])?\s*(" + _NUM + r")")


def answer_tag(text: str) -> str | None:
    # rfind rather than a regex: linear even with thousands of unclosed tags
    lower = text.lower()
    end = lower.rfind("</answer>")
    start = lower.rfind("<answer>", 0, end) if end >= 0 else -1
    return text[start + len("<answer>"):end].strip() if start >= 0 else None


def boxed(text: str) -> str | None:
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        # "\boxed 5": the argument is the next token
        rest = text[start:].split(None, 1)
        return rest[1].split()[0].strip("$.") if len(rest) == 2 and rest[1].strip() else None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j].strip()
    return None  # unbalanced: the completion was cut off inside the box


def gsm8k(text: str) -> str | None:
    if "####" not in text:
        return None
    tail = text.rsplit("####", 1)[1].strip()
    return tail.splitlines()[0].strip() if tail else None


def answer_is(text: str) -> str | None:
    hits = list(_ANSWER_IS_RE.finditer(normalize_text(text)))
    if not hits:
        return None
    rest = normalize_text(text)[hits[-1].end():].strip()
    sentence = re.split(r"\n|\.\s|\.$|。", rest, maxsplit=1)[0].strip()
    if parse_number(sentence) is not None:
        return sentence
    lead = _LEAD_NUM_RE.match(rest)
    return lead.group(1) if lead else (sentence or None)


def last_number(text: str) -> str | None:
    hits = _NUM_RE.findall(normalize_text(text))
    return hits[-1].replace(" ", "") if hits else None


EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "answer_tag": answer_tag, "boxed": boxed, "gsm8k": gsm8k, "answer_is": answer_is,
    "last_number": last_number,
}


def check_order(order: Sequence[str]) -> tuple[str, ...]:
    bad = [name for name in order if name not in EXTRACTORS]
    if bad:
        raise ValueError(f"unknown answer extractor(s) {', '.join(map(repr, bad))}; "
                         f"valid: {', '.join(EXTRACTORS)}")
    return tuple(order)


def extract_answer(text: str, order: Sequence[str] = DEFAULT_ORDER) -> str | None:
    """The first answer found by the extractors in `order`, or None."""
    for name in check_order(order):
        hit = EXTRACTORS[name](text)
        if hit is not None and hit != "":
            return hit
    return None


# ---------------------------------------------------------------------------------------------
# Numbers

_LATEX_DROP = re.compile(r"\\[,!;: ]|\\left|\\right|\\displaystyle|\^\{?\\circ\}?|°|\\%|%|\\\$|\$|"
                         r"[€£¥₹]|\\(?:mathrm|text|textbf|mbox)\{\s*\}")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_FRAC = re.compile(r"\\[dt]?frac\s*(?:\{([^{}]+)\}|(\d))\s*(?:\{([^{}]+)\}|(\d))")
_PLAIN = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][+-]?\d+)?|-?\.\d+|-?\d+/\d+")
# A trailing unit: words after a space ("18 dollars", "5 km/h") or CJK text right after the number.
_UNIT = re.compile(r"(?:\s+[A-Za-z][A-Za-z./ ]*(?:\^[23])?|\s*[\u3400-\u9fff\u3040-\u30ff]+)$")


def parse_number(text: str | None) -> Fraction | None:
    """`text` as an exact Fraction if it is one plain number (see the module doc), else None."""
    if text is None:
        return None
    s = normalize_text(str(text)).strip()
    if len(s) > MAX_NUMBER_CHARS:
        return None
    s = _TEXT_CMD.sub(r" \1", s)
    s = _LATEX_DROP.sub("", s).replace("{,}", ",").strip()
    s = _FRAC.sub(lambda m: f"({m.group(1) or m.group(2)})/({m.group(3) or m.group(4)})", s)
    if "=" in s:
        s = s.rsplit("=", 1)[1]
    s = s.strip().rstrip(".。").strip()
    s = _UNIT.sub("", s).strip()
    s = re.sub(r"\(\s*(-?[\d.,]+)\s*\)", r"\1", s).replace(" ", "")
    if not _PLAIN.fullmatch(s):
        return None
    try:
        value = Fraction(s.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None
    return value


def numbers_equal(a: Fraction, b: Fraction, rel_tol: float = 1e-9) -> bool:
    """Exact for fractions and short decimals; a tiny relative tolerance for long decimals."""
    return a == b or abs(a - b) <= rel_tol * max(1, abs(b))
