"""Readers for math datasets: each returns a list of dicts with "question" and "answer".

"answer" is the normalised reference answer as text (`normalize_reference`: "1,000" -> "1000",
"51.0" -> "51", LaTeX kept as written). Other keys are kept as columns (e.g. "solution", "level").
Every row also carries "_where" ("file:line") for error messages; `groupo.data.task.to_problem`
drops keys starting with "_". Bad rows (no question, empty or unparseable answer) raise a
`DataError` naming the file, line and field, or with `skip_bad=True` are skipped and counted.

Generic files: `read_records` reads .jsonl, .json (an array, or {"data": [...]}), .csv, .tsv and
.parquet (parquet needs pyarrow).
"""

from __future__ import annotations

import csv
import io
import json
import re
from fractions import Fraction
from pathlib import Path

from groupo.data.task import DataError, check_rows
from groupo.rewards.extract import answer_is, boxed, gsm8k, normalize_text, parse_number


def normalize_reference(answer: object) -> str:
    """A reference answer as canonical text: plain numbers without separators or trailing zeros
    ("1,000" -> "1000", "51.0" -> "51", "2/6" -> "1/3", "0.50" -> "0.5"); anything else stripped."""
    if isinstance(answer, float) and answer.is_integer():
        return str(int(answer))
    text = normalize_text(str(answer)).strip()
    value = parse_number(text)
    if value is None or "\\" in text:
        return text
    return format_number(value)


def format_number(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    d = value.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d == 1:  # a finite decimal
        return f"{float(value):.15g}" if abs(value) < 1e15 else str(value)
    return f"{value.numerator}/{value.denominator}"


def read_text(p: Path) -> str:
    """The file as text. Not UTF-8: a DataError naming the file, the line and byte offset of the
    first bad byte, and the fix (a traceback from deep in the reader said none of that)."""
    data = p.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{p}:{line}: not UTF-8 text (byte offset {e.start}: {data[e.start:e.start + 4]!r}); "
                        f"save the file as UTF-8, e.g. iconv -f latin1 -t utf-8 {p.name} > utf8-{p.name}") from None


def read_records(path: str | Path) -> list[dict]:
    """Raw rows of a .jsonl / .json / .csv / .tsv / .parquet file, each with "_where"."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    suffix = p.suffix.lower()
    rows: list[dict] = []
    if suffix == ".jsonl":
        # split on "\n" only, as reading the file line by line does (not str.splitlines, which
        # also splits at \x0b, \x1c and U+2028 inside a JSON string and would shift line numbers)
        for n, line in enumerate(read_text(p).split("\n"), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{n}: not valid JSON: {e.msg}") from None
            if not isinstance(row, dict):
                raise DataError(f"{p}:{n}: expected a JSON object, got {type(row).__name__}")
            rows.append({**row, "_where": f"{p}:{n}"})
    elif suffix == ".json":
        try:
            data = json.loads(read_text(p))
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{e.lineno}: not valid JSON: {e.msg}") from None
        data = data.get("data", data) if isinstance(data, dict) else data
        if not isinstance(data, list):
            raise DataError(f"{p}: expected a JSON array of objects")
        rows = [{**r, "_where": f"{p}: item {i}"} for i, r in enumerate(data) if isinstance(r, dict)]
    elif suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(read_text(p), newline=""), delimiter="\t" if suffix == ".tsv" else ",")
        rows = [{**r, "_where": f"{p}:{reader.line_num}"} for r in reader]
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{p}: reading parquet needs pyarrow: pip install pyarrow") from None
        rows = [{**r, "_where": f"{p}: row {i}"} for i, r in enumerate(pq.read_table(p).to_pylist())]
    else:
        raise DataError(f"{p}: unsupported file type {suffix!r}; use .jsonl, .json, .csv, .tsv or .parquet")
    return rows


def _finish(rows: list[dict], path: str | Path, skip_bad: bool) -> list[dict]:
    good, _ = check_rows(rows, skip_bad=skip_bad, what=str(path))
    return good


def gsm8k_answer(solution: str) -> str | None:
    """The number after the last "####" of a GSM8K solution (commas stripped), or None."""
    final = gsm8k(solution) if isinstance(solution, str) else None
    return normalize_reference(final) if final else None


def read_gsm8k(path: str | Path, skip_bad: bool = False) -> list[dict]:
    """GSM8K jsonl: question, answer (after "####"), solution (the worked solution, with its
    <<calculator>> annotations removed and without the final "####" line)."""
    rows = []
    for r in read_records(path):
        sol = r.get("answer")
        ans = gsm8k_answer(sol) if isinstance(sol, str) else None
        if ans is not None and parse_number(ans) is None:
            ans = None
        reasoning = re.sub(r"<<[^>]*>>", "", sol.rsplit("####", 1)[0]).strip() if isinstance(sol, str) else ""
        rows.append({"question": r.get("question"), "answer": ans, "solution": reasoning, "_where": r["_where"]})
    return _finish(rows, path, skip_bad)


def read_mgsm(path: str | Path, skip_bad: bool = False) -> list[dict]:
    """MGSM tsv (any language): no header; column 1 question, column 2 numeric answer."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    rows = []
    lines = csv.reader(io.StringIO(read_text(p), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    for n, cols in enumerate(lines, 1):
        if not cols:
            continue
        q = cols[0] if cols else None
        a = normalize_reference(cols[1]) if len(cols) > 1 and cols[1].strip() else None
        if a is not None and parse_number(a) is None:
            a = None
        rows.append({"question": q, "answer": a, "_where": f"{p}:{n}"})
    return _finish(rows, p, skip_bad)


def read_cmath(path: str | Path, skip_bad: bool = False) -> list[dict]:
    """CMATH jsonl (cmath_dev.jsonl or distractor.jsonl): question = input, answer = golden."""
    rows = []
    for r in read_records(path):
        a = r.get("golden")
        a = normalize_reference(a) if a is not None and str(a).strip() else None
        extra = {k: r[k] for k in ("grade", "reasoning_step", "distractor") if k in r}
        rows.append({"question": r.get("input"), "answer": a, **extra, "_where": r["_where"]})
    return _finish(rows, path, skip_bad)


def read_svamp(path: str | Path, skip_bad: bool = False) -> list[dict]:
    """SVAMP.json: question = Body + " " + Question, answer = Answer (a float), solution = the
    Equation ("( 76 - 25 ) = 51")."""
    rows = []
    for r in read_records(path):
        body, q = str(r.get("Body", "")).strip(), r.get("Question")
        question = f"{body} {q.strip()}".strip() if isinstance(q, str) and q.strip() else None
        a = r.get("Answer")
        a = None if a is None else normalize_reference(a)
        eq = " ".join(str(r.get("Equation", "")).replace(".0 ", " ").replace(".0)", ")").split())
        rows.append({"question": question, "answer": a, "solution": f"{eq} = {a}" if eq and a else "",
                     "_where": r["_where"]})
    return _finish(rows, path, skip_bad)


def read_math(path: str | Path, skip_bad: bool = False) -> list[dict]:
    """MATH / MATH-500 jsonl: question = problem; answer = the "answer" field (MATH-500) or the last
    \\boxed{} of the solution (brace-matched); keeps solution, level, type/subject."""
    rows = []
    for r in read_records(path):
        sol = r.get("solution") or ""
        a = r.get("answer")
        a = str(a).strip() if a is not None and str(a).strip() else boxed(sol)
        extra = {k: r[k] for k in ("level", "type", "subject", "unique_id") if k in r}
        rows.append({"question": r.get("problem"), "answer": normalize_reference(a) if a else None,
                     "solution": sol, **extra, "_where": r["_where"]})
    return _finish(rows, path, skip_bad)


def read_metamath(path: str | Path, skip_bad: bool = False) -> list[dict]:
    """MetaMathQA-style rows: question = query; answer = after "The answer is:" in response."""
    rows = []
    for r in read_records(path):
        resp = r.get("response")
        a = answer_is(resp) if isinstance(resp, str) else None
        rows.append({"question": r.get("query"), "answer": normalize_reference(a) if a else None,
                     "solution": resp.rsplit("The answer is", 1)[0].strip() if isinstance(resp, str) else "",
                     "_where": r["_where"]})
    return _finish(rows, path, skip_bad)


def generic_answer(value: object) -> str | None:
    """A reference from a free-form answer field: "#### n" or \\boxed{} if present, else the text."""
    if value is None:
        return None
    text = str(value)
    for extract in (gsm8k, boxed):
        hit = extract(text)
        if hit:
            return normalize_reference(hit)
    return normalize_reference(text) if text.strip() else None


def read_generic(path: str | Path, question_field: str = "question", answer_field: str = "answer",
                 skip_bad: bool = False) -> list[dict]:
    """Any .jsonl/.json/.csv/.tsv/.parquet file with a question and an answer field."""
    records = read_records(path)
    if records and question_field not in records[0] and answer_field not in records[0]:
        keys = ", ".join(k for k in records[0] if not k.startswith("_"))
        raise DataError(f"{path}: no field {question_field!r} or {answer_field!r} in the first row "
                        f"(fields: {keys}); set task.question_field / task.answer_field")
    rows = []
    for r in records:
        extra = {k: v for k, v in r.items() if k not in (question_field, answer_field, "question", "answer")}
        rows.append({**extra, "question": r.get(question_field), "answer": generic_answer(r.get(answer_field))})
    return _finish(rows, path, skip_bad)


def read_hub(dataset_id: str, split: str, question_field: str = "question", answer_field: str = "answer",
             skip_bad: bool = False) -> list[dict]:
    """A Hugging Face `datasets` hub id (or a local dataset folder) with a field mapping."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"loading {dataset_id!r} from the hub needs the datasets package: "
                        "pip install datasets") from None
    ds = datasets.load_dataset(dataset_id, split=split)
    rows = []
    for i, r in enumerate(ds):
        if question_field not in r or answer_field not in r:
            raise DataError(f"{dataset_id} [{split}] row {i}: no field {question_field!r} / {answer_field!r} "
                            f"(fields: {', '.join(r)}); set task.question_field / task.answer_field")
        rows.append({"question": r[question_field], "answer": generic_answer(r[answer_field]),
                     "_where": f"{dataset_id} [{split}] row {i}"})
    return _finish(rows, dataset_id, skip_bad)
