"""Multiple-choice tasks: rows of a question, its options and the letter of the right one.

A row of a .jsonl / .json / .csv / .tsv / .parquet file holds:

    question  the question text (`task.question_field`)
    options   the option texts: a list ["3", "4", ...] or a mapping {"A": "3", "B": "4", ...}; also read
              from "choices" (the hub's MMLU layout) or from columns A, B, C, D ... (spreadsheets)
    answer    the right option's letter ("B", "(B)", "b"), or its 0-based index as a JSON number
              (MMLU on the hub) (`task.answer_field`)

The model sees the question with its options listed under it, one per line ("A. 3"); an option
that already starts with its own letter ("A. 3", "A) 3") is not lettered twice. Each row becomes
the columns `question` (as shown, options included), `answer` (the letter), `options` (the texts:
the `choice` reward reads how many there are) and `stem` (the question alone). From 2 to 10 options
(A-J); a row with fewer, more, or an answer that names no option is a DataError naming its file
and line (or, with task.skip_bad_rows, skipped and counted).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from groupo.data.loaders import read_records
from groupo.data.task import DataError
from groupo.rewards.choice import LETTERS

log = logging.getLogger(__name__)


def _options(row: dict) -> list[str] | str:
    """The row's option texts in letter order, or what is wrong with them."""
    raw = row.get("options", row.get("choices"))
    if raw is None and "A" in row and "B" in row:  # spreadsheet columns A, B, C ...
        raw = {k: row[k] for k in LETTERS if row.get(k) not in (None, "")}
    if isinstance(raw, dict):
        keys = [str(k).strip().upper() for k in raw]
        if sorted(keys) != list(LETTERS[:len(keys)]):
            return f"option keys {', '.join(map(str, raw))} are not the letters A, B, C ... in a run"
        raw = [v for _, v in sorted(zip(keys, raw.values(), strict=True))]
    if not isinstance(raw, list):
        return "no field 'options' (a list, or a mapping of letters), 'choices' or columns A, B, ..."
    if not 2 <= len(raw) <= len(LETTERS):
        return f"{len(raw)} options; 2 to {len(LETTERS)} are read"
    if any(v is None or str(v).strip() == "" for v in raw):
        return "an option is empty"
    return [str(v).strip() for v in raw]


def _letter(answer: Any, n: int) -> str | None:
    """The answer as one of the first `n` letters: "B", "(b)", "B." or a 0-based integer index."""
    if isinstance(answer, int) and not isinstance(answer, bool):
        return LETTERS[answer] if 0 <= answer < n else None
    text = re.sub(r"[\s().\[\]]", "", str(answer if answer is not None else "")).upper()
    return text if len(text) == 1 and text in LETTERS[:n] else None


def render(stem: str, options: list[str]) -> str:
    """The question as the model sees it: the stem, then "A. option" lines."""
    lines = []
    for letter, text in zip(LETTERS, options, strict=False):
        own = re.match(rf"\(?{letter}\s*[.):]\s*", text)  # "A. 3" already lettered
        lines.append(f"{letter}. {text[own.end():] if own else text}")
    return stem.strip() + "\n\n" + "\n".join(lines)


def read_mcq(path: str | Path, question_field: str = "question", answer_field: str = "answer",
             skip_bad: bool = False) -> list[dict]:
    """Rows of a multiple-choice file (see the module doc), each with `_where` ("file:line")."""
    rows, bad = [], 0
    for r in read_records(path):
        stem, options = r.get(question_field), _options(r)
        letter = _letter(r.get(answer_field), len(options)) if isinstance(options, list) else None
        problem = None
        if not isinstance(stem, str) or not stem.strip():
            problem = f"field {question_field!r} is missing or empty"
        elif isinstance(options, str):
            problem = options
        elif letter is None:
            problem = (f"field {answer_field!r} = {r.get(answer_field)!r} names none of the {len(options)} options "
                       f"(a letter {LETTERS[0]}-{LETTERS[len(options) - 1]}, or a 0-based index)")
        if problem is None:
            extra = {k: v for k, v in r.items() if k not in (question_field, answer_field, "options", "choices",
                                                              *LETTERS, "_where")}
            rows.append({**extra, "question": render(stem, options), "answer": letter, "options": options,
                         "stem": stem.strip(), "_where": r["_where"]})
        elif skip_bad:
            bad += 1
        else:
            raise DataError(f"{r['_where']}: {problem} (set task.skip_bad_rows=true to skip such rows)")
    if bad:
        log.warning("%s: skipped %d bad row(s) of %d", path, bad, bad + len(rows))
    return rows
