"""``metadata-consumer demo`` end to end, as the real CLI in a subprocess: the summary in plain
words (the fault episode explained from what the emulated API did), the report files (JSON, and
HTML opened in headless Chromium to see its charts), no temporary folder left behind, events
added during ``--hold-s`` changing nothing; and the progress line in a real terminal (tmux)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from consumer.sandbox.demo import API_SECRET
from consumer.sandbox.produce import produce_events

pytestmark = pytest.mark.integration

DEMO = [sys.executable, "-m", "consumer", "demo", "--events", "30", "--bad-every", "10"]
HOLD_S = 2


@dataclass(frozen=True)
class DemoRun:
    returncode: int
    stdout: str
    report_dir: Path
    tmpdir: Path
    report: dict[str, Any]
    #: Between the "produced" line and the "serving metrics" line, as the test saw them.
    seen_delivery_s: float


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """One default demo run (the fault episode on) with a hold, during which a few more events
    (some bad) are produced; TMPDIR points at a fresh, empty folder."""
    root = tmp_path_factory.mktemp("demo")
    tmpdir, report_dir = root / "tmp", root / "report"
    tmpdir.mkdir()
    with open(root / "stderr.log", "w") as stderr:
        proc = subprocess.Popen(
            [*DEMO, "--hold-s", str(HOLD_S), "--report-dir", str(report_dir)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=root,
            env={**os.environ, "TMPDIR": str(tmpdir)},
        )
        assert proc.stdout is not None
        lines, bootstrap, produced_at, held_at = [], "", 0.0, 0.0
        for line in proc.stdout:
            lines.append(line)
            found = re.match(r"local broker on (\S+);", line)
            if found:
                bootstrap = found[1]
            if line.startswith("the group assigned every partition"):
                produced_at = time.monotonic()
            if line.startswith("all delivered; serving metrics"):
                held_at = time.monotonic()
                produce_events(bootstrap, count=4, start=5000, bad_every=2)  # during the hold
                break
        rest, _ = proc.communicate(timeout=120)
    out = "".join(lines) + rest
    report = json.loads((report_dir / "report.json").read_text()) if report_dir.exists() else {}
    return DemoRun(proc.returncode, out, report_dir, tmpdir, report, held_at - produced_at)


def test_the_demo_succeeds_and_says_so_in_plain_words(demo_run: DemoRun) -> None:
    out = demo_run.stdout
    assert demo_run.returncode == 0, out
    assert "Result: OK, every event was delivered or dead-lettered." in out
    for entity in ("agent", "conversation", "customer"):
        assert re.search(rf"^  {entity}\s+30\s+27\s+3\s+\d+\.\d\d s\s+\d+\.\d\d s$", out, re.M)
    assert "9 events could never succeed and were dead-lettered (6 decode, 3 validation)" in out
    assert "The committed offsets reached the end of every partition" in out
    assert f"(the {HOLD_S} s hold is not counted)" in out
    assert "{" not in out.split("=== demo summary ===")[1]  # no raw dicts


def test_the_summary_explains_the_fault_episode_from_what_the_api_did(demo_run: DemoRun) -> None:
    assert re.search(
        r"ASAPP answered 429 once \(Retry-After 1 s\) and 503 three times; the service waited "
        r"and retried \(4 retries, \d+\.\d s waited\); nothing was lost\.",
        demo_run.stdout,
    ), demo_run.stdout
    episode = demo_run.report["fault_episode"]
    assert episode["answers"] == {"429": 1, "503": 3}
    assert episode["retry_after"] == ["1"]
    assert episode["retries"] == 4


def test_a_sample_dead_letter_is_shown_with_its_headers_and_no_secret(demo_run: DemoRun) -> None:
    sample = demo_run.report["dead_letters"]["sample"]
    assert sample["headers"]["dlq.reason"] == "validation"
    assert re.search(r"^    dlq\.error: externalAgentId: ", demo_run.stdout, re.M)
    for text in (demo_run.stdout, *(p.read_text() for p in demo_run.report_dir.iterdir())):
        assert API_SECRET not in text


def test_the_report_holds_the_figures_taken_when_everything_was_committed(
    demo_run: DemoRun,
) -> None:
    report = demo_run.report
    assert report["result"] == "OK"
    assert report["dead_letters"]["total"] == 9  # not the ones added during the hold
    for figures in report["entities"].values():
        assert (figures["produced"], figures["delivered"], figures["dead_lettered"]) == (30, 27, 3)
        latency = figures["latency_s"]
        assert latency["samples"] == 27
        assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    assert report["timing_s"]["hold"] == HOLD_S
    # produce → commit; had the hold counted it would be about HOLD_S more than the test saw
    assert report["timing_s"]["delivery"] < demo_run.seen_delivery_s + HOLD_S / 2
    timeline = report["timeline"]
    assert sum(timeline["throughput_items_per_s"]["agent"]) * timeline["bucket_s"] == 27
    assert f"Report: {demo_run.report_dir / 'report.html'}" in demo_run.stdout


def test_no_temporary_file_or_folder_is_left_behind(demo_run: DemoRun) -> None:
    assert demo_run.returncode == 0
    assert list(demo_run.tmpdir.iterdir()) == []
    assert sorted(p.name for p in demo_run.report_dir.iterdir()) == [
        "broker.log",
        "report.html",
        "report.json",
    ]


def test_without_a_terminal_progress_is_a_few_plain_lines(demo_run: DemoRun) -> None:
    milestones = [int(m) for m in re.findall(r"^progress: (\d+)% ", demo_run.stdout, re.M)]
    assert milestones[-1] == 100 and milestones == sorted(set(milestones))
    assert set(milestones) <= {25, 50, 75, 100}
    assert "\r" not in demo_run.stdout and "\x1b" not in demo_run.stdout


def test_the_html_report_renders_its_charts_in_headless_chromium(
    demo_run: DemoRun, tmp_path: Path
) -> None:
    browser = shutil.which("chromium")
    assert browser, "chromium is missing: `make tools` installs it"
    done = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            (demo_run.report_dir / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    dom = done.stdout
    assert dom.count("<svg") == 2
    for series in ("agent", "conversation", "customer"):  # every bucket has a value
        points = re.search(rf'<polyline data-series="{series}"[^>]* points="([^"]+)"', dom)
        assert points, series
        assert len(points[1].split()) >= 2  # a line, not a dot
    for series in ("p50", "p99"):  # only buckets with deliveries: a dot for each
        assert re.search(rf'<circle data-series="{series}" cx="[\d.]+" cy="[\d.]+"', dom), series
    assert dom.count('data-status="429"') == 2  # one mark in each chart
    assert dom.count('data-status="503"') == 6
    assert "<script" not in dom and "http://" not in dom.replace("http://www.w3.org/", "")


def test_on_a_terminal_progress_is_one_line_rewritten_in_place(tmp_path: Path) -> None:
    tmux = shutil.which("tmux")
    assert tmux, "tmux is missing: `make tools` installs it"
    server = f"demo-test-{uuid.uuid4().hex[:8]}"
    command = " ".join(
        [
            f"cd {shlex.quote(str(tmp_path))} &&",
            *map(shlex.quote, DEMO),
            "--no-faults --report-dir report; echo DEMO-EXIT=$?; sleep 300",
        ]
    )
    try:
        subprocess.run(
            [tmux, "-L", server, "new-session", "-d", "-x", "200", "-y", "50", command],
            check=True,
            timeout=10,
            stdin=subprocess.DEVNULL,  # else tmux may size the window after pytest's terminal
        )
        screen, deadline = "", time.monotonic() + 120
        while "DEMO-EXIT=" not in screen and time.monotonic() < deadline:
            time.sleep(0.5)
            screen = subprocess.run(
                [tmux, "-L", server, "capture-pane", "-p", "-J", "-S", "-"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
    finally:
        subprocess.run([tmux, "-L", server, "kill-server"], timeout=10, check=False)
    assert "DEMO-EXIT=0" in screen, screen
    assert "progress: per entity delivered+dead-lettered/produced" in screen
    progress = [line for line in screen.splitlines() if " · lag " in line]
    assert len(progress) == 1, screen  # rewritten in place: the last state stays
    assert re.match(  # short names when the terminal is narrow
        r"\[\s*\d+\.\ds\] (agent|agt) 27\+3/30 · (conversation|conv) 27\+3/30 · "
        r"(customer|cust) 27\+3/30 · \d+ (requests|req) · lag 0",
        progress[0],
    ), progress[0]
    assert "progress: 25%" not in screen
    assert "ASAPP answered every request normally (no 429, no 5xx)." in screen
