"""The demo's report: figures from what the emulated API recorded, in plain words and as files.

Pure: nothing here talks to the broker or the API. :mod:`consumer.sandbox.demo` gathers the
run's records (the emulator's receipts and request log, the message timestamps read back from
the topics, the service's metrics) and hands them to :func:`latency`, :func:`fault_episode` and
:func:`timeline`; :class:`Report` then gives the summary lines (:meth:`Report.summary`), the
JSON form (:meth:`Report.to_dict`) and a self-contained HTML page with inline SVG charts
(:func:`render_html`: no script, nothing fetched from anywhere). :func:`write_report` writes
``report.json`` and ``report.html`` into a directory and returns their paths.

Latency is "message timestamp → API receipt": the Kafka message's (producer) timestamp to the
moment the emulated API accepted the item, per item, both wall-clock times of this machine.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DeadLetterSample",
    "EntityFigures",
    "FaultEpisode",
    "Latency",
    "Report",
    "Timeline",
    "fault_episode",
    "latency",
    "percentile",
    "render_html",
    "timeline",
    "write_report",
]

#: Chart line colours per series name (entities first); others take the fallback.
_COLOURS = {
    "agent": "#1f77b4",
    "conversation": "#ff7f0e",
    "customer": "#2ca02c",
    "p50": "#1f77b4",
    "p99": "#d62728",
}
#: Candidate bucket widths of the timeline, seconds; the smallest giving <= _MAX_BUCKETS wins.
_BUCKET_WIDTHS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
_MAX_BUCKETS = 80


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``ordered`` (sorted, non-empty)."""
    if not ordered:
        raise ValueError("percentile of no values")
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True, slots=True)
class Latency:
    """Percentiles of message timestamp → API receipt, seconds, over ``samples`` items."""

    p50_s: float
    p99_s: float
    max_s: float
    samples: int


def latency(values_s: Iterable[float]) -> Latency | None:
    """p50/p99/max of ``values_s``; None when there are none."""
    ordered = sorted(values_s)
    if not ordered:
        return None
    return Latency(percentile(ordered, 50), percentile(ordered, 99), ordered[-1], len(ordered))


@dataclass(frozen=True, slots=True)
class FaultAnswer:
    """One API answer that was not a normal one: a 429, a 5xx, or none at all (status 0)."""

    t_s: float  # seconds since the timeline's start
    status: int
    retry_after: str | None = None


@dataclass(frozen=True, slots=True)
class FaultEpisode:
    """What the API did wrong during the run (from its request log) and what the service did
    about it (from its metrics): ``answers`` counts the 429, 5xx and unanswered (0) requests by
    status; ``retry_after`` lists the distinct ``Retry-After`` values sent with the 429s."""

    answers: Mapping[int, int]
    retry_after: tuple[str, ...]
    retries: int
    waited_s: float
    marks: tuple[FaultAnswer, ...] = ()

    def explain(self, nothing_lost: bool) -> str:
        """The episode in one sentence, e.g. "ASAPP answered 429 once (Retry-After 1 s) and 503
        three times; the service waited and retried (4 retries, 1.9 s waited); nothing was
        lost." ``nothing_lost`` says whether the run accounted for every event."""
        if not self.answers:
            return "ASAPP answered every request normally (no 429, no 5xx)."
        parts = []
        for status in sorted(self.answers, key=lambda s: (s != 429, s)):
            what = "no answer (connection dropped)" if status == 0 else str(status)
            part = f"{what} {_times(self.answers[status])}"
            if status == 429 and self.retry_after:
                part += " (Retry-After " + ", ".join(f"{v} s" for v in self.retry_after) + ")"
            parts.append(part)
        said = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        outcome = "nothing was lost" if nothing_lost else "but not every event was accounted for"
        return (
            f"ASAPP answered {said}; the service waited and retried "
            f"({self.retries} {'retry' if self.retries == 1 else 'retries'}, "
            f"{self.waited_s:.1f} s waited); {outcome}."
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "answers": {str(k): v for k, v in sorted(self.answers.items())},
            "retry_after": list(self.retry_after),
            "retries": self.retries,
            "waited_s": round(self.waited_s, 3),
        }


def _times(n: int) -> str:
    return {1: "once", 2: "twice", 3: "three times"}.get(n, f"{n} times")


def fault_episode(
    answers: Iterable[tuple[float, int, str | None]], *, retries: int, waited_s: float
) -> FaultEpisode:
    """The episode from the API's request log: ``(t_s, status, retry_after)`` per request
    (``t_s`` from the timeline's start); only 429s, 5xx and unanswered ones (0) count."""
    marks = tuple(
        FaultAnswer(t, status, retry_after)
        for t, status, retry_after in answers
        if status == 429 or status >= 500 or status == 0
    )
    counts = Counter(m.status for m in marks)
    sent = sorted(
        {m.retry_after for m in marks if m.status == 429 and m.retry_after is not None},
        key=float,
    )
    return FaultEpisode(dict(counts), tuple(sent), retries, waited_s, marks)


@dataclass(frozen=True, slots=True)
class Timeline:
    """The run in buckets of ``bucket_s`` seconds from its start: items accepted per second per
    entity, the p50/p99 latency of the items accepted in each bucket (None when none were),
    and API requests per second."""

    bucket_s: float
    t_s: tuple[float, ...]
    throughput: Mapping[str, tuple[float, ...]]
    latency_p50_s: tuple[float | None, ...]
    latency_p99_s: tuple[float | None, ...]
    requests: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "bucket_s": self.bucket_s,
            "t_s": list(self.t_s),
            "throughput_items_per_s": {k: list(v) for k, v in self.throughput.items()},
            "latency_p50_s": list(self.latency_p50_s),
            "latency_p99_s": list(self.latency_p99_s),
            "requests_per_s": list(self.requests),
        }


def timeline(
    receipts: Iterable[tuple[str, float, float]],
    request_times_s: Iterable[float],
    entities: Sequence[str],
) -> Timeline:
    """Bucket ``receipts`` — ``(entity, t_s, latency_s)`` per accepted item, ``t_s`` from the
    run's start — and the requests' arrival times; the bucket width is the smallest of
    0.1 s, 0.25 s, 0.5 s, 1 s... that gives at most 80 buckets."""
    items = list(receipts)
    times = list(request_times_s)
    span = max([0.0, *(t for _, t, _ in items), *times])
    width = next((w for w in _BUCKET_WIDTHS_S if span / w <= _MAX_BUCKETS), _BUCKET_WIDTHS_S[-1])
    n = max(1, math.floor(span / width) + 1)
    counts = {e: [0] * n for e in entities}
    lat: list[list[float]] = [[] for _ in range(n)]
    for entity, t, value in items:
        i = min(n - 1, max(0, int(t // width)))
        counts.setdefault(entity, [0] * n)[i] += 1
        lat[i].append(value)
    req = [0] * n
    for t in times:
        req[min(n - 1, max(0, int(t // width)))] += 1
    ordered = [sorted(values) for values in lat]
    return Timeline(
        bucket_s=width,
        t_s=tuple(round(i * width, 3) for i in range(n)),
        throughput={e: tuple(c / width for c in counts[e]) for e in counts},
        latency_p50_s=tuple(percentile(v, 50) if v else None for v in ordered),
        latency_p99_s=tuple(percentile(v, 99) if v else None for v in ordered),
        requests=tuple(c / width for c in req),
    )


@dataclass(frozen=True, slots=True)
class EntityFigures:
    """One entity's counts: events produced (``bad_on_purpose`` of them made to fail),
    delivered (accepted by the API) and dead-lettered, and their latency."""

    entity: str
    produced: int
    bad_on_purpose: int
    delivered: int
    dead_lettered: int
    latency: Latency | None

    def to_dict(self) -> dict[str, Any]:
        lat = self.latency
        return {
            "produced": self.produced,
            "bad_on_purpose": self.bad_on_purpose,
            "delivered": self.delivered,
            "dead_lettered": self.dead_lettered,
            "latency_s": None
            if lat is None
            else {
                "p50": round(lat.p50_s, 4),
                "p99": round(lat.p99_s, 4),
                "max": round(lat.max_s, 4),
                "samples": lat.samples,
            },
        }


@dataclass(frozen=True, slots=True)
class DeadLetterSample:
    """One dead-letter record: where it sits in the DLQ, its key and its headers (values
    decoded as UTF-8, secrets already masked by the caller)."""

    topic: str
    partition: int
    offset: int
    key: str | None
    headers: tuple[tuple[str, str], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": self.key,
            "headers": dict(self.headers),
        }


@dataclass(frozen=True, slots=True)
class Report:
    """Everything the demo found out. ``ok``: every produced event was delivered or
    dead-lettered as expected and committed. ``join_s``: service start to the group's
    assignment; ``delivery_s``: first event produced to everything committed (a ``hold_s``
    after it is not counted)."""

    ok: bool
    wire_format: str
    entities: tuple[EntityFigures, ...]
    requests: int
    statuses: Mapping[str, int]
    episode: FaultEpisode
    dead_by_reason: Mapping[str, int]
    sample: DeadLetterSample | None
    committed_ok: bool
    join_s: float
    delivery_s: float
    hold_s: float
    timeline: Timeline
    started_at: str
    notes: tuple[str, ...] = field(default=())

    @property
    def delivered(self) -> int:
        return sum(e.delivered for e in self.entities)

    @property
    def produced(self) -> int:
        return sum(e.produced for e in self.entities)

    @property
    def dead_lettered(self) -> int:
        return sum(e.dead_lettered for e in self.entities)

    def summary(self) -> list[str]:
        """The summary in plain words, one string per line."""
        bad = sum(e.bad_on_purpose for e in self.entities)
        lines = [
            f"The service joined the consumer group in {self.join_s:.1f} s; then "
            f"{self.produced} events were produced ({bad} of them bad on purpose, "
            f"{self.wire_format} Avro).",
            "",
            f"  {'entity':<13}{'produced':>9}{'delivered':>10}{'dead-lettered':>15}"
            f"{'latency p50':>13}{'p99':>9}",
        ]
        for e in self.entities:
            p50 = p99 = "-"
            if e.latency is not None:
                p50, p99 = f"{e.latency.p50_s:.2f} s", f"{e.latency.p99_s:.2f} s"
            lines.append(
                f"  {e.entity:<13}{e.produced:>9}{e.delivered:>10}{e.dead_lettered:>15}"
                f"{p50:>13}{p99:>9}"
            )
        lines += [
            "  (latency: from the Kafka message's timestamp to the API's receipt of the item)",
            "",
            f"The API took {self.delivered} items in {self.requests} requests "
            f"({self.delivered / max(self.requests, 1):.0f} items a request on average).",
            self.episode.explain(self.ok),
        ]
        if self.dead_lettered:
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.dead_by_reason.items()))
            lines.append(
                f"{self.dead_lettered} events could never succeed and were dead-lettered "
                f"({reasons}), each with headers saying why"
                + (". One of them:" if self.sample else ".")
            )
            if self.sample is not None:
                s = self.sample
                lines.append(f"  {s.topic}[{s.partition}] offset {s.offset}, key {s.key}")
                lines += [f"    {k}: {v}" for k, v in s.headers]
        else:
            lines.append("No event was dead-lettered.")
        lines.append(
            "The committed offsets reached the end of every partition: the group will not read "
            "these events again."
            if self.committed_ok
            else "The committed offsets did NOT reach the end of every partition."
        )
        held = f" (the {self.hold_s:.0f} s hold is not counted)" if self.hold_s else ""
        lines.append(
            f"Delivery took {self.delivery_s:.1f} s from the first event produced to the last "
            f"offset committed{held}."
        )
        lines += list(self.notes)
        lines.append(
            "Result: OK, every event was delivered or dead-lettered."
            if self.ok
            else "Result: FAILED, not every event was accounted for."
        )
        return lines

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (``report.json``)."""
        return {
            "result": "OK" if self.ok else "FAILED",
            "started_at": self.started_at,
            "wire_format": self.wire_format,
            "entities": {e.entity: e.to_dict() for e in self.entities},
            "requests": {"total": self.requests, "statuses": dict(self.statuses)},
            "fault_episode": {
                **self.episode.to_dict(),
                "explanation": self.episode.explain(self.ok),
            },
            "dead_letters": {
                "total": self.dead_lettered,
                "by_reason": dict(self.dead_by_reason),
                "sample": None if self.sample is None else self.sample.to_dict(),
            },
            "committed_to_end": self.committed_ok,
            "timing_s": {
                "group_join": round(self.join_s, 3),
                "delivery": round(self.delivery_s, 3),
                "hold": self.hold_s,
            },
            "summary": [line for line in self.summary() if line],
            "timeline": self.timeline.to_dict(),
        }


def write_report(report: Report, directory: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``directory`` (created if missing,
    existing reports replaced); returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, html_path = directory / "report.json", directory / "report.html"
    json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    html_path.write_text(render_html(report), encoding="utf-8")
    return json_path, html_path


# ---- HTML --------------------------------------------------------------------------------------

_W, _H = 760, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 60, 120, 30, 40


def _ticks(top: float, n: int = 4) -> list[float]:
    """Round tick values from 0 to at least ``top``."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / n
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(math.ceil(top / step) + 1)]


def _fmt(v: float) -> str:
    return f"{v:g}" if v < 10 else f"{v:.0f}"


def _chart(
    title: str,
    unit: str,
    t_s: Sequence[float],
    series: Sequence[tuple[str, Sequence[float | None]]],
    marks: Sequence[FaultAnswer] = (),
    *,
    dots: bool = False,
) -> str:
    """One line chart as an ``<svg>``: a polyline per series (gaps where a value is None; a
    dot at each value with ``dots``, and at lone values always), axes with ticks, a dashed
    vertical line per fault answer."""
    values = [v for _, vs in series for v in vs if v is not None]
    ticks_y = _ticks(max(values, default=0.0))
    top_y = ticks_y[-1]
    span = max([*t_s, *(m.t_s for m in marks), 0.0]) or 1.0
    ticks_x = _ticks(span, 6)
    span = ticks_x[-1]
    pw, ph = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def x(t: float) -> float:
        return _LEFT + pw * t / span

    def y(v: float) -> float:
        return _TOP + ph * (1 - v / top_y)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
        f'viewBox="0 0 {_W} {_H}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{_LEFT}" y="18" class="title">{html.escape(title)}</text>',
    ]
    for v in ticks_y:
        out.append(
            f'<line x1="{_LEFT}" x2="{_LEFT + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>'
            f'<text x="{_LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{_fmt(v)}</text>'
        )
    for t in ticks_x:
        out.append(
            f'<text x="{x(t):.1f}" y="{_TOP + ph + 16}" text-anchor="middle">{_fmt(t)} s</text>'
        )
    out.append(
        f'<text x="14" y="{_TOP + ph / 2:.0f}" transform="rotate(-90 14 {_TOP + ph / 2:.0f})" '
        f'text-anchor="middle">{html.escape(unit)}</text>'
    )
    for m in marks:
        label = "no answer" if m.status == 0 else str(m.status)
        out.append(
            f'<line x1="{x(m.t_s):.1f}" x2="{x(m.t_s):.1f}" y1="{_TOP}" y2="{_TOP + ph}" '
            f'class="fault" data-status="{m.status}"><title>{label} at {m.t_s:.2f} s</title>'
            "</line>"
            f'<text x="{x(m.t_s) + 2:.1f}" y="{_TOP + 10}" class="faultlabel">{label}</text>'
        )
    for n, (name, vs) in enumerate(series):
        colour = _COLOURS.get(name, "#555")
        segment: list[str] = []
        segments: list[list[str]] = []
        for t, value in zip(t_s, vs, strict=True):
            if value is None:
                if segment:
                    segments.append(segment)
                segment = []
            else:
                segment.append(f"{x(t):.1f},{y(value):.1f}")
        if segment:
            segments.append(segment)
        for seg in segments:
            out.append(
                f'<polyline data-series="{html.escape(name)}" fill="none" stroke="{colour}" '
                f'stroke-width="2" points="{" ".join(seg)}"/>'
            )
            if dots or len(seg) == 1:  # a lone value would be an invisible line
                for point in seg:
                    cx, cy = point.split(",")
                    out.append(
                        f'<circle data-series="{html.escape(name)}" cx="{cx}" cy="{cy}" r="2.5" '
                        f'fill="{colour}"/>'
                    )
        ly = _TOP + 14 + 18 * n
        out.append(
            f'<line x1="{_LEFT + pw + 12}" x2="{_LEFT + pw + 30}" y1="{ly - 4}" y2="{ly - 4}" '
            f'stroke="{colour}" stroke-width="3"/>'
            f'<text x="{_LEFT + pw + 36}" y="{ly}">{html.escape(name)}</text>'
        )
    out.append(
        f'<line x1="{_LEFT}" x2="{_LEFT}" y1="{_TOP}" y2="{_TOP + ph}" class="axis"/>'
        f'<line x1="{_LEFT}" x2="{_LEFT + pw}" y1="{_TOP + ph}" y2="{_TOP + ph}" class="axis"/>'
        "</svg>"
    )
    return "\n".join(out)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 60em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; } td, th { padding: .25em .8em; border-bottom: 1px solid #ddd; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #1a7f37; } .failed { color: #cf222e; }
svg text { font-size: 11px; fill: #333; } svg .title { font-size: 13px; font-weight: 600; }
svg .grid { stroke: #eee; } svg .axis { stroke: #888; }
svg .fault { stroke: #cf222e; stroke-dasharray: 4 3; } svg .faultlabel { fill: #cf222e; }
code { background: #f4f4f4; padding: 0 .2em; }
"""


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page: the result, the per-entity table, the
    fault episode, a sample dead letter, and two inline SVG charts over the run (throughput
    per entity; latency p50/p99), fault answers marked. No script, no external resource."""
    tl = report.timeline
    esc = html.escape
    result = "OK" if report.ok else "FAILED"
    rows = "\n".join(
        f"<tr><td>{esc(e.entity)}</td><td class=n>{e.produced}</td><td class=n>{e.delivered}"
        f"</td><td class=n>{e.dead_lettered}</td><td class=n>"
        + ("-" if e.latency is None else f"{e.latency.p50_s:.3f} s")
        + "</td><td class=n>"
        + ("-" if e.latency is None else f"{e.latency.p99_s:.3f} s")
        + "</td></tr>"
        for e in report.entities
    )
    throughput = _chart(
        f"Items accepted by the API per second (buckets of {tl.bucket_s:g} s)",
        "items/s",
        tl.t_s,
        [(name, values) for name, values in tl.throughput.items()],
        report.episode.marks,
    )
    latency_chart = _chart(
        "Latency, message timestamp to API receipt",
        "seconds",
        tl.t_s,
        [("p50", tl.latency_p50_s), ("p99", tl.latency_p99_s)],
        report.episode.marks,
        dots=True,
    )
    sample = "<p>No dead letter.</p>"
    if report.sample is not None:
        s = report.sample
        headers = "\n".join(
            f"<tr><td><code>{esc(k)}</code></td><td>{esc(v)}</td></tr>" for k, v in s.headers
        )
        sample = (
            f"<p><code>{esc(s.topic)}[{s.partition}]</code> offset {s.offset}, key "
            f"<code>{esc(str(s.key))}</code></p><table>{headers}</table>"
        )
    summary = "\n".join(esc(line) for line in report.summary())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>metadata-consumer demo: {result}</title>
<style>{_STYLE}</style></head>
<body>
<h1>metadata-consumer demo: <span class="{result.lower()}">{result}</span></h1>
<p>Run started {esc(report.started_at)}; {report.produced} events, {report.delivered} delivered,
{report.dead_lettered} dead-lettered, {report.requests} API requests; delivery took
{report.delivery_s:.1f} s.</p>
<h2>Per entity</h2>
<table><tr><th>entity</th><th class=n>produced</th><th class=n>delivered</th>
<th class=n>dead-lettered</th><th class=n>latency p50</th><th class=n>p99</th></tr>
{rows}</table>
<h2>Fault episode</h2>
<p>{esc(report.episode.explain(report.ok))}</p>
<h2>Over the run</h2>
<p>Time is seconds since the first event was produced; dashed red lines are the API's
fault answers.</p>
<figure id="throughput">{throughput}</figure>
<figure id="latency">{latency_chart}</figure>
<h2>A dead letter</h2>
{sample}
<h2>Summary</h2>
<pre>{summary}</pre>
</body></html>
"""
