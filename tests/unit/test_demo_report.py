"""The demo's report (pure figures, the summary's words, the HTML) and its progress line."""

from __future__ import annotations

import io
import re

import pytest

from consumer.sandbox.demo import Display, Snapshot
from consumer.sandbox.report import (
    EntityFigures,
    FaultEpisode,
    Report,
    fault_episode,
    latency,
    percentile,
    render_html,
    timeline,
)

ENTITIES = ("agent", "conversation", "customer")


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        pytest.param([1.0], 50, 1.0, id="one"),
        pytest.param([1.0, 2.0, 3.0, 4.0], 50, 2.0, id="p50-nearest-rank"),
        pytest.param([float(i) for i in range(1, 101)], 99, 99.0, id="p99-of-100"),
        pytest.param([1.0, 2.0, 3.0], 99, 3.0, id="p99-small"),
    ],
)
def test_percentile_is_the_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


def test_latency_of_nothing_is_none_and_of_values_their_percentiles() -> None:
    assert latency([]) is None
    lat = latency([0.3, 0.1, 0.2])
    assert lat is not None and (lat.p50_s, lat.p99_s, lat.max_s, lat.samples) == (0.2, 0.3, 0.3, 3)


@pytest.mark.parametrize(
    ("answers", "lost", "expected"),
    [
        pytest.param(
            [(0.1, 429, "1"), (1.1, 503, None), (1.1, 503, None), (1.2, 503, None)],
            False,
            "ASAPP answered 429 once (Retry-After 1 s) and 503 three times; the service waited "
            "and retried (4 retries, 1.5 s waited); nothing was lost.",
            id="the-default-episode",
        ),
        pytest.param(
            [(0.1, 500, None), (0.2, 500, None), (0.3, 0, None)],
            True,
            "ASAPP answered no answer (connection dropped) once and 500 twice; the service "
            "waited and retried (4 retries, 1.5 s waited); but not every event was accounted "
            "for.",
            id="lost",
        ),
        pytest.param(
            [(0.1, 200, None), (0.2, 400, None)],
            False,
            "ASAPP answered every request normally (no 429, no 5xx).",
            id="no-fault",
        ),
    ],
)
def test_the_fault_episode_in_words(
    answers: list[tuple[float, int, str | None]], lost: bool, expected: str
) -> None:
    episode = fault_episode(answers, retries=4, waited_s=1.5)
    assert episode.explain(nothing_lost=not lost) == expected


def test_timeline_buckets_items_requests_and_latency() -> None:
    receipts = [("agent", 0.05, 0.5), ("agent", 0.15, 0.7), ("customer", 0.15, 0.9)]
    tl = timeline(receipts, [0.01, 0.12], ENTITIES)
    assert tl.bucket_s == 0.1
    assert tl.t_s == (0.0, 0.1)
    assert tl.throughput["agent"] == (10.0, 10.0)
    assert tl.throughput["conversation"] == (0.0, 0.0)
    assert tl.latency_p99_s == (0.5, 0.9)
    assert tl.requests == (10.0, 10.0)


def test_a_long_run_gets_wider_buckets() -> None:
    tl = timeline([("agent", 30.0, 1.0)], [], ENTITIES)
    assert tl.bucket_s == 0.5 and len(tl.t_s) <= 80
    assert tl.latency_p50_s[0] is None  # no item accepted there: a gap, not a zero


def _report(ok: bool = True) -> Report:
    return Report(
        ok=ok,
        wire_format="plain",
        entities=tuple(EntityFigures(e, 30, 3, 27, 3, latency([0.2, 0.4])) for e in ENTITIES),
        requests=7,
        statuses={"200": 3, "429": 1, "503": 3},
        episode=fault_episode([(0.4, 429, "1"), (1.4, 503, None)], retries=2, waited_s=1.1),
        dead_by_reason={"decode": 6, "validation": 3},
        sample=None,
        committed_ok=ok,
        join_s=3.2,
        delivery_s=2.0,
        hold_s=0,
        timeline=timeline([("agent", 1.5, 0.2), ("agent", 1.7, 0.4)], [0.4, 1.4], ENTITIES),
        started_at="2024-05-01T00:00:00Z",
    )


def test_the_summary_is_plain_words() -> None:
    text = "\n".join(_report().summary())
    assert "{" not in text
    assert re.search(r"^  agent\s+30\s+27\s+3\s+0\.20 s\s+0\.40 s$", text, re.M)
    assert "9 events could never succeed and were dead-lettered (6 decode, 3 validation)" in text
    assert text.endswith("Result: OK, every event was delivered or dead-lettered.")
    assert "Result: FAILED" in "\n".join(_report(ok=False).summary())


def test_the_html_is_self_contained_with_two_charts_and_the_fault_marks() -> None:
    page = render_html(_report())
    assert page.count("<svg") == 2
    assert '<polyline data-series="agent"' in page and '<polyline data-series="p99"' in page
    assert page.count('data-status="429"') == 2
    assert "<script" not in page and "src=" not in page and "href=" not in page
    assert page.count('<circle data-series="p50"') == 2  # one per bucket with deliveries


def _snapshot(**overrides: object) -> Snapshot:
    values: dict[str, object] = {
        "elapsed_s": 5.1,
        "produced": dict.fromkeys(ENTITIES, 3000),
        "delivered": dict.fromkeys(ENTITIES, 2994),
        "dead": dict.fromkeys(ENTITIES, 6),
        "requests": 19,
        "lag": 0,
        "joined": True,
    }
    values.update(overrides)
    return Snapshot(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("snapshot", "width", "expected"),
    [
        pytest.param(
            _snapshot(),
            200,
            "[ 5.1s] agent 2994+6/3000 · conversation 2994+6/3000 · customer 2994+6/3000 · "
            "19 requests · lag 0",
            id="wide",
        ),
        pytest.param(
            _snapshot(),
            79,
            "[ 5.1s] agt 2994+6/3000 · conv 2994+6/3000 · cust 2994+6/3000 · 19 req · lag 0",
            id="narrow",
        ),
        pytest.param(
            _snapshot(joined=False), 200, "[ 5.1s] joining the consumer group...", id="joining"
        ),
    ],
)
def test_the_progress_line(snapshot: Snapshot, width: int, expected: str) -> None:
    assert Display.line(snapshot, width) == expected


@pytest.mark.parametrize(
    ("finished", "shown"),
    [
        pytest.param([0, 800, 1500, 2300, 3000], ["25", "50", "75", "100"], id="each"),
        pytest.param([0, 1600, 3000, 3000], ["50", "100"], id="jumps-one-line-each"),
    ],
)
def test_without_a_terminal_progress_is_milestone_lines_only(
    finished: list[int], shown: list[str]
) -> None:
    out = io.StringIO()
    display = Display(out, tty=False)
    for done in finished:
        display.update(_snapshot(delivered=dict.fromkeys(ENTITIES, done), dead={}))
    assert re.findall(r"^progress: (\d+)%", out.getvalue(), re.M) == shown
    assert "\r" not in out.getvalue()


def test_on_a_terminal_the_line_is_rewritten_and_cleared_for_other_lines() -> None:
    out = io.StringIO()
    display = Display(out, tty=True)
    display.update(_snapshot())
    display.say("a log line")
    display.update(_snapshot())
    display.finish()
    text = out.getvalue()
    assert text.count("\r\x1b[K") == 1  # cleared once, before the other line
    assert text.endswith("lag 0\x1b[K\n")  # the last state stays


def test_an_episode_without_marks_has_no_answers() -> None:
    assert FaultEpisode({}, (), 0, 0.0).to_dict()["answers"] == {}
