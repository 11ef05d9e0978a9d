"""The HTML run report: its data, its size, the CLI, and (marker `browser`) headless Chromium drawing it."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from histories import healthy, record, write_run

from groupo.cli import main
from groupo.report.html import PLOTS, run_data, write_page, write_report
from groupo.report.keys import KEYS, documented, markdown_table

ROOT = Path(__file__).resolve().parents[1]


def _payload(page: str) -> dict:
    m = re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S)
    return json.loads(m.group(1))


def test_run_data_merges_held_out_accuracy_into_the_step_axis(tmp_path):
    rows = healthy(3)
    rows[1]["alarms"] = [{"name": "kl", "step": 2, "action": "warn", "message": "m", "advice": "a"}]
    run = write_run(tmp_path / "r", rows, evals=[{"step": 0, "accuracy": 0.25, "n": 4},
                                                 {"step": 3, "accuracy": 0.5, "n": 4}])
    d = run_data(run)
    s = d["series"]
    assert s["step"] == [0, 1, 2, 3]
    assert s["accuracy/eval"] == [0.25, None, None, 0.5]
    assert s["reward/mean"][0] is None and s["reward/mean"][1] == pytest.approx(0.353)  # 0.3 + 0.003 + 0.05
    assert d["alarms"] == [{"name": "kl", "step": 2, "action": "warn", "message": "m", "advice": "a"}]
    assert len(d["samples"]) == 12 and d["config"].startswith("model:")


def test_a_200_step_report_is_one_offline_file_under_1_mb(tmp_path):
    run = write_run(tmp_path / "r", healthy(200))
    path = write_report(run, {"steps": 200})
    page = path.read_text(encoding="utf-8")
    assert len(page.encode()) < 1_000_000
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched: scripts and data inline
    assert "uPlot" in page and json.loads((run / "summary.json").read_text()) == {"steps": 200}
    data = _payload(page)
    assert [p[0] for p in data["plots"]] == [p[0] for p in PLOTS] and len(data["runs"][0]["samples"]) == 800


def test_every_plotted_and_logged_key_is_in_the_table_and_the_docs():
    for _, _, keys in PLOTS:
        assert all(documented(k.replace("*", "x")) for k in keys), keys
    assert all(documented(k) for k in record(1))
    assert markdown_table() in (ROOT / "docs" / "report.md").read_text(encoding="utf-8")
    assert "reward/fn/<name>" in KEYS


def test_cli_overlays_several_runs(tmp_path, capsys):
    a = write_run(tmp_path / "a", healthy(5))
    b = write_run(tmp_path / "b", healthy(3, **{"optim/lr": 1e-4}))
    out = tmp_path / "both.html"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    data = _payload(out.read_text(encoding="utf-8"))
    assert [r["name"] for r in data["runs"]] == ["a", "b"]
    assert data["runs"][1]["series"]["optim/lr"][1:] == [1e-4] * 3
    assert main(["report", str(a)]) == 0 and (a / "report.html").is_file()
    assert main(["report", str(tmp_path)]) == 2  # not a run directory: a clear error
    assert "no metrics.jsonl" in capsys.readouterr().err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _need_chromium() -> None:
    """Skip without Chromium, or fail: .ci/run installs it and sets GROUPO_REQUIRE_BROWSER, so CI
    cannot skip a browser test."""
    if _chromium() is None:
        (pytest.fail if os.environ.get("GROUPO_REQUIRE_BROWSER") else pytest.skip)(
            "needs chromium: apt-get install chromium")


def _headless(args: list[str], page: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", *args,
                           page.as_uri()], capture_output=True, text=True, timeout=120)


@pytest.mark.browser
def test_chromium_draws_every_plot_without_console_errors(tmp_path):
    _need_chromium()
    rows = healthy(200)
    rows[119]["alarms"] = [{"name": "kl", "step": 120, "action": "warn", "message": "KL rose", "advice": "beta"}]
    a = write_run(tmp_path / "a", rows)
    b = write_run(tmp_path / "b", healthy(150, **{"optim/lr": 3e-4}))
    page = write_page([a, b], tmp_path / "report.html")
    dom = _headless(["--dump-dom"], page)
    body = re.search(r"<body[^>]*>", dom.stdout).group(0)
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', body))
    assert attrs.get("ready") == "1", (body, dom.stderr[-2000:])
    assert attrs["plots"] == str(len(PLOTS)) and attrs["drawn"] == str(len(PLOTS)) and attrs["empty"] == "0"
    assert json.loads(attrs["errors"].replace("&quot;", '"')) == []
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console
    shot = tmp_path / "report.png"
    _headless([f"--screenshot={shot}", "--window-size=1300,3200"], page)
    assert shot.stat().st_size > 50_000  # the plots, not a blank page (a blank PNG is ~10 KB)
    keep = ROOT / ".pytest_cache" / "report.png"  # for a person to look at
    keep.parent.mkdir(exist_ok=True)
    shutil.copy(shot, keep)



@pytest.mark.browser
def test_chromium_draws_a_report_whose_samples_hold_comment_and_script_tags(tmp_path):
    _need_chromium()
    run = write_run(tmp_path / "r", healthy(3))
    with open(run / "samples.jsonl", "a", encoding="utf-8") as fh:  # what any model output can carry
        fh.write(json.dumps({"step": 3, "prompt": "What is 0 + 1? <!--<script> x", "answer": "1",
                             "completion": "</script><script>document.title='x'</script>",
                             "rewards": {"accuracy": 1.0}}) + "\n")
    dom = _headless(["--dump-dom"], write_page([run], tmp_path / "report.html"))
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', re.search(r"<body[^>]*>", dom.stdout).group(0)))
    assert attrs.get("ready") == "1" and attrs["drawn"] == str(len(PLOTS) - int(attrs["empty"])), dom.stderr[-2000:]
    assert json.loads(attrs["errors"].replace("&quot;", '"')) == []


EPISODE = {"step": 2, "prompt": "What is 123456 * 789?", "answer": "97406784", "completion": "...",
           "finish_reason": "stop", "rewards": {"accuracy": 1.0},
           "messages": [{"role": "assistant", "content": "```python\nprint(123456 * 789)\n```"},
                        {"role": "tool", "name": "python", "content": "97406784\n"},
                        {"role": "assistant", "content": "<answer>97406784</answer>",
                         "tool_calls": [{"type": "function", "function": {"name": "calculator",
                                                                          "arguments": {"expression": "1+1"}}}]}]}


def test_an_episode_reaches_the_report_as_its_turns_with_the_calls_written_out(tmp_path):
    run = write_run(tmp_path / "r", healthy(3))
    long = dict(EPISODE, messages=[*EPISODE["messages"], {"role": "tool", "name": "python", "content": "x" * 5000}])
    (run / "samples.jsonl").write_text(json.dumps(long) + "\n", encoding="utf-8")
    [sample] = run_data(run)["samples"]
    turns = sample["messages"]
    assert [(t["role"], t["name"]) for t in turns] == [("assistant", ""), ("tool", "python"), ("assistant", ""),
                                                       ("tool", "python")]
    assert turns[1]["content"] == "97406784\n"
    assert turns[2]["content"] == '<answer>97406784</answer>\n[call] calculator({"expression": "1+1"})'
    assert turns[3]["content"].startswith("x" * 2000) and turns[3]["content"].endswith("[3000 more characters]")


@pytest.mark.browser
def test_chromium_marks_the_tool_turns_of_an_episode(tmp_path):
    _need_chromium()
    run = write_run(tmp_path / "r", healthy(3))
    (run / "samples.jsonl").write_text(json.dumps(EPISODE) + "\n", encoding="utf-8")
    dom = _headless(["--dump-dom"], write_page([run], tmp_path / "report.html")).stdout
    turns = re.findall(r'<div class="turn (\w+)"><span class="who">([^<]*)</span><pre>([^<]*)</pre></div>', dom)
    assert [(kind, who) for kind, who, _ in turns] == [("model", "model"), ("tool", "tool: python"),
                                                       ("model", "model")]
    assert turns[1][2] == "97406784\n"
