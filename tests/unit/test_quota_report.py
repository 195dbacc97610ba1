"""``metadata-consumer quota``: the pure report over ledger records, the wait for the ledger,
and the command's output and exit codes over a fake ledger (no broker)."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Mapping

import pytest

from consumer.quota import MemberRecord
from consumer.quota_report import build_report, main, read_ledger
from consumer.settings import Settings

#: 2026-12-01 06:00:00 UTC: a quarter of the day has passed.
SIX_AM = 1_796_104_800.0
DAY = "2026-12-01"


def rec(pod: str, requests: int, day: str = DAY, ts: float = SIX_AM - 5) -> MemberRecord:
    return MemberRecord(pod=pod, day=day, requests=requests, demand=0.0, ts=ts)


@pytest.mark.parametrize(
    ("members", "quota", "used", "remaining", "projection"),
    [
        pytest.param({}, 1000, 0, 1000, "lasts until 00:00 UTC", id="nothing-used"),
        pytest.param(
            {"a": rec("a", 100), "b": rec("b", 100)},
            1000,
            200,
            800,
            "lasts until 00:00 UTC",
            id="a-fifth-in-a-quarter-day-lasts",
        ),
        pytest.param(
            {"a": rec("a", 300), "b": rec("b", 200)},
            1000,
            500,
            500,
            "runs out at 12:00 UTC",
            id="half-in-a-quarter-day-runs-out-at-noon",
        ),
        pytest.param(
            {"a": rec("a", 250), "old": rec("old", 9000, day="2026-11-30")},
            1000,
            250,
            750,
            "lasts until 00:00 UTC",
            id="yesterday-left-out",
        ),
        pytest.param(
            {"a": rec("a", 600), "b": rec("b", 500)},
            1000,
            1100,
            0,
            "exhausted",
            id="overspent",
        ),
    ],
)
def test_report_sums_todays_pods_and_projects_the_average_rate(
    members: Mapping[str, MemberRecord], quota: int, used: int, remaining: int, projection: str
) -> None:
    report = build_report(members, now=SIX_AM, quota=quota, topic="q")
    assert (report.used, report.remaining) == (used, remaining)
    assert report.projection.startswith(projection)
    assert report.as_dict()["projection"] == report.projection
    assert report.day == DAY


def test_report_lists_pods_largest_first_with_their_last_update() -> None:
    report = build_report(
        {"b": rec("b", 5, ts=SIX_AM - 60), "a": rec("a", 7)}, now=SIX_AM, quota=100, topic="q"
    )
    assert [p.pod for p in report.pods] == ["a", "b"]
    as_dict = report.as_dict()
    assert as_dict["pods"][1] == {"pod": "b", "requests": 5, "updated": "2026-12-01T05:59:00Z"}
    assert as_dict["runs_out_at"] is None and as_dict["exhausted"] is False
    assert as_dict["rate_per_s"] == pytest.approx(12 / 21_600, abs=1e-6)
    text = report.text()
    assert "used       12 of 100 requests" in text and "remaining  88" in text
    assert "a  " in text and "updated 2026-12-01T05:59:55Z" in text


class FakeLedger:
    """A ledger whose answers follow a script, one per ``members()`` call."""

    def __init__(self, answers: list[Mapping[str, MemberRecord] | None], problem: str) -> None:
        self.answers, self._problem, self.closed = answers, problem, False

    def members(self) -> Mapping[str, MemberRecord] | None:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def problem(self) -> str | None:
        return self._problem

    def close(self) -> None:
        self.closed = True


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


@pytest.mark.parametrize(
    ("answers", "problem", "found", "reason"),
    [
        pytest.param([None, None, {"a": rec("a", 1)}], "not read yet", True, None, id="read"),
        pytest.param([None], "quota ledger topic q does not exist", False, "does not exist",
                     id="missing-at-once"),
        pytest.param([None], "quota ledger not read yet", False, "after 2s", id="timeout"),
    ],
)  # fmt: skip
def test_read_ledger_waits_for_the_first_read_or_gives_the_reason(
    answers: list[Mapping[str, MemberRecord] | None],
    problem: str,
    found: bool,
    reason: str | None,
) -> None:
    t = FakeTime()
    members, why = read_ledger(
        FakeLedger(answers, problem), timeout_s=2.0, clock=t.clock, sleep=t.sleep
    )
    assert (members is not None) == found
    assert (why is None) if reason is None else (reason in (why or ""))
    if reason == "does not exist":
        assert t.now == 0.0  # no waiting for a topic that is not there


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    monkeypatch.setenv("DAILY_REQUEST_QUOTA", "1000")


@pytest.mark.parametrize(
    ("as_json", "answers", "code"),
    [
        pytest.param(True, [{"a": rec("a", 300), "b": rec("b", 200)}], 0, id="json"),
        pytest.param(False, [{"a": rec("a", 300)}], 0, id="text"),
        pytest.param(False, [None], 1, id="unreadable"),
    ],
)
def test_main_prints_the_report_and_exits(
    env: None,
    capsys: pytest.CaptureFixture[str],
    as_json: bool,
    answers: list[Mapping[str, MemberRecord] | None],
    code: int,
) -> None:
    opened: list[tuple[str, FakeLedger]] = []

    def open_ledger(settings: Settings, topic: str) -> FakeLedger:
        ledger = FakeLedger(answers, "quota ledger topic x does not exist")
        opened.append((topic, ledger))
        return ledger

    out = io.StringIO()
    args = argparse.Namespace(json=as_json, timeout_s=1.0)
    assert main(args, out, open_ledger=open_ledger, wall_clock=lambda: SIX_AM) == code
    assert opened[0][0] == "asapp.metadata.quota" and opened[0][1].closed
    if code == 1:
        assert "cannot read the ledger" in capsys.readouterr().err and out.getvalue() == ""
    elif as_json:
        body = json.loads(out.getvalue())
        assert (body["used"], body["remaining"], body["quota"]) == (500, 500, 1000)
        assert body["runs_out_at"] == "2026-12-01T12:00:00Z"
    else:
        assert "used       300 of 1000 requests" in out.getvalue()


def test_main_reports_a_configuration_error_with_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    monkeypatch.setenv("DAILY_REQUEST_QUOTA", "lots")
    args = argparse.Namespace(json=False, timeout_s=1.0)
    assert main(args, io.StringIO(), open_ledger=lambda s, t: FakeLedger([None], "")) == 2
    assert "DAILY_REQUEST_QUOTA" in capsys.readouterr().err
