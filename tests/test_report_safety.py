"""The report against hostile or damaged run files, and folders it cannot write."""

import json
import logging
import re
from html.parser import HTMLParser

import pytest
from faults import read_only
from histories import healthy, write_run

from groupo.cli import main
from groupo.report.html import run_data, write_page

HOSTILE = {"prompt": "What is 0 + 1? <!--<script> x", "answer": "1",
           "completion": "</script><script>document.body.innerHTML=''</script> a & b > c \u2028 \u2029 1"}


def _hostile_run(path):
    run = write_run(path, healthy(3))
    with open(run / "samples.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"step": 3, **HOSTILE, "finish_reason": "stop", "rewards": {"accuracy": 1.0}}) + "\n")
    return run


def _script_end(s: str, i: int) -> int:
    """Index of the `</script` that ends a script element whose text starts at s[i], following the
    HTML standard's script data states (escaped after `<!--`, double escaped after a further
    `<script`, where `</script` does not end the element), or -1."""
    def word(j: int) -> bool:  # "script" then whitespace, "/" or ">"
        return s[j:j + 6].lower() == "script" and s[j + 6:j + 7] in (" ", "\t", "\n", "\f", "/", ">")

    state = "data"
    while i < len(s):
        if state in ("data", "escaped") and s.startswith("</", i) and word(i + 2):
            return i
        if state == "data" and s.startswith("<!--", i):
            state, i = "escaped", i + 4
            continue
        if state != "data" and s[i] == ">" and s[i - 2:i] == "--":
            state = "data"
        elif state == "escaped" and s[i] == "<" and word(i + 1):
            state, i = "double", i + 7
            continue
        elif state == "double" and s.startswith("</", i) and word(i + 2):
            state, i = "escaped", i + 8
            continue
        i += 1
    return -1


class _Scripts(HTMLParser):
    def __init__(self):
        super().__init__()
        self.scripts, self._in = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self._in = [dict(attrs).get("id"), ""]

    def handle_data(self, data):
        if self._in is not None:
            self._in[1] += data

    def handle_endtag(self, tag):
        if tag == "script" and self._in is not None:
            self.scripts.append(tuple(self._in))
            self._in = None


def test_a_sample_with_comment_and_script_tags_cannot_swallow_the_page_scripts(tmp_path):
    page = write_page([_hostile_run(tmp_path / "r")], tmp_path / "report.html").read_text(encoding="utf-8")
    opening = '<script id="data" type="application/json">'
    start = page.index(opening) + len(opening)
    end = _script_end(page, start)
    assert end != -1 and re.match(r"</script>\s*<script>", page[end:])  # the library's own element follows
    assert "<" not in page[start:end]  # no tokenizer state can be entered from the data
    sample = json.loads(page[start:end])["runs"][0]["samples"][-1]
    assert {k: sample[k] for k in HOSTILE} == HOSTILE
    parsed = _Scripts()
    parsed.feed(page)
    assert [sid for sid, _ in parsed.scripts] == ["data", None, None]  # data, uPlot, report.js
    assert json.loads(parsed.scripts[0][1])["runs"][0]["samples"][-1]["completion"] == HOSTILE["completion"]
    assert "uPlot" in parsed.scripts[1][1] and parsed.scripts[2][1].strip()


@pytest.mark.parametrize("text", ["", "{\"steps\": 3", "not json", "[1, 2]", "\xff\xfe"])
def test_an_empty_or_damaged_summary_is_one_warning_and_the_report_still_renders(tmp_path, caplog, text):
    run = write_run(tmp_path / "r", healthy(4))
    (run / "summary.json").write_bytes(text.encode("latin-1"))
    with caplog.at_level(logging.WARNING, logger="groupo"):
        assert main(["report", str(run)]) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "\n" not in warned[0]
    assert str(run / "summary.json") in warned[0] and "without the run's summary" in warned[0]
    page = (run / "report.html").read_text(encoding="utf-8")
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S).group(1))
    assert data["runs"][0]["summary"] == {} and data["runs"][0]["series"]["step"] == [0, 1, 2, 3, 4]
    assert run_data(run)["series"]["reward/mean"] == data["runs"][0]["series"]["reward/mean"]


def test_report_into_a_read_only_folder_is_one_clear_line(tmp_path, capsys):
    with read_only(tmp_path / "ro", lambda d: write_run(d / "run", healthy(2))) as ro:
        assert main(["report", str(ro / "run")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"cannot write the report {ro / 'run' / 'report.html'}" in err
        assert "--out FILE.html" in err
        out = tmp_path / "elsewhere.html"  # the suggested way out works
        assert main(["report", str(ro / "run"), "--out", str(out)]) == 0 and out.stat().st_size > 10_000


def test_eval_out_into_a_read_only_folder_fails_before_evaluating(tmp_path, capsys):
    with read_only(tmp_path / "ro") as ro:
        # the model does not exist: the --out check comes first, before anything is loaded
        assert main(["eval", "--model", str(tmp_path / "no-model"), "--out", str(ro / "eval.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--out {ro / 'eval.jsonl'}: cannot write there" in err


def test_report_imports_no_code_a_run_names(tmp_path, monkeypatch):
    """docs/run-directory.md: `groupo report` reads the run's files as data only."""
    run = write_run(tmp_path / "r", healthy(2))
    marker = tmp_path / "imported"
    for name in ("evil.py", "evilmod.py"):
        (tmp_path / name).write_text(f"open({str(marker)!r}, 'w').close()\ndef f(*a, **k):\n    return [0.0]\n")
    (run / "config.yaml").write_text("model:\n  name: ./evil-model\nrewards:\n  funcs:\n    evil.py:f: 1.0\n"
                                     "    evilmod:f: 1.0\nrun:\n  sinks: [wandb]\n")
    monkeypatch.chdir(tmp_path)  # where the relative reward path and the module would be found
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["report", str(run)]) == 0
    assert not marker.exists()
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "evil.py:f" in page  # the config is shown as text
    from groupo.rewards.registry import load_user_fn

    load_user_fn("evil.py:f")  # what --resume would do with the same config: the marker appears
    assert marker.exists()
