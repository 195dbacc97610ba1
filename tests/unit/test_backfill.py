"""consumer.backfill: the inverse mapping, keys, line checks, pacing, the run's report."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from consumer.backfill import (
    BadLine,
    Encoder,
    Pacer,
    Prepared,
    Progress,
    Sink,
    json_lines,
    kafka_key,
    parse_date_time,
    run,
    summary_json,
    to_record,
)
from consumer.decoder import PlainAvroDecoder
from consumer.errors import ValidationError
from consumer.mapping import to_item
from consumer.records import Entity


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "2022-07-08T11:15:53.237Z", datetime(2022, 7, 8, 11, 15, 53, 237000, UTC), id="z"
        ),
        pytest.param(
            "2022-07-08T11:15:53.237517000Z",
            datetime(2022, 7, 8, 11, 15, 53, 237517, UTC),
            id="nanos",
        ),
        pytest.param(
            "2022-07-08T13:15:53+02:00", datetime(2022, 7, 8, 11, 15, 53, tzinfo=UTC), id="offset"
        ),
    ],
)
def test_parse_date_time(text: str, expected: datetime) -> None:
    assert parse_date_time(text) == expected


@pytest.mark.parametrize("text", ["2022-07-08", "yesterday", "2022-13-08T00:00:00Z"])
def test_parse_date_time_rejects(text: str) -> None:
    with pytest.raises(ValidationError, match="startTs"):
        parse_date_time(text)


ITEM = {
    "externalAgentId": "agent1",
    "eventId": "e-1",
    "startTs": "2022-07-08T11:15:53.237Z",
    "agentName": "Jane Doe",
    "languages": ["en-US"],
    "concurrency": 3,
    "lobId": None,
    "attributes": [{"name": "tier", "value": "gold"}],
}


def test_to_record_is_the_inverse_of_to_item() -> None:
    record = to_record(Entity.AGENT, ITEM)
    assert "lobId" not in record
    back = to_item(Entity.AGENT, record, topic="t", partition=0, offset=0)
    assert back == {k: v for k, v in ITEM.items() if v is not None}


def test_encoded_item_decodes_to_the_same_item() -> None:
    event = Encoder(Entity.AGENT, "t").item(1, ITEM)
    decoded = PlainAvroDecoder(Entity.AGENT).decode(event.value)
    item = to_item(Entity.AGENT, decoded, topic="t", partition=0, offset=0)
    assert item == {k: v for k, v in ITEM.items() if v is not None}
    assert event.key == b"agent1"


@pytest.mark.parametrize(
    ("entity", "item", "key"),
    [
        pytest.param(Entity.AGENT, {"externalAgentId": "a1"}, b"a1", id="agent"),
        pytest.param(Entity.CONVERSATION, {"externalConversationId": "c1"}, b"c1", id="conv"),
        pytest.param(
            Entity.CUSTOMER,
            {"externalConversationId": "c1", "externalCustomerId": "u@x.com"},
            b"c1/u@x.com",
            id="customer",
        ),
    ],
)
def test_kafka_key_is_the_entity_id(entity: Entity, item: dict[str, Any], key: bytes) -> None:
    assert kafka_key(entity, item) == key


@pytest.mark.parametrize(
    ("item", "phrase"),
    [
        pytest.param([1], "not a JSON object but an array", id="array"),
        pytest.param({"agentName": "x"}, "externalAgentId", id="missing-id"),
        pytest.param({"externalAgentId": "a b"}, "does not match", id="pattern"),
        pytest.param({"externalAgentId": "a", "nickname": "x"}, "nickname", id="unknown-field"),
        pytest.param({"externalAgentId": "a", "startTs": 5}, "startTs", id="ts-type"),
        pytest.param({"externalAgentId": "a", "concurrency": 2**40}, "Avro", id="int32"),
    ],
)
def test_bad_items_are_refused_with_a_reason(item: Any, phrase: str) -> None:
    with pytest.raises(ValidationError, match=phrase):
        Encoder(Entity.AGENT, "t").item(1, item)


def test_json_lines_numbers_lines_and_skips_blanks() -> None:
    got = list(json_lines(io.StringIO('{"a": 1}\n\n{oops\n')))
    assert got[0] == (1, {"a": 1})
    assert got[1][0] == 3 and isinstance(got[1][1], BadLine)
    assert got[1][1].reason.startswith("not JSON")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def test_pacer_spaces_events_at_the_rate() -> None:
    clock = FakeClock()
    pacer = Pacer(4.0, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        pacer.wait()
    assert clock.now == pytest.approx(101.0)  # 5 events at 4/s: the 5th at t0 + 1 s
    assert Pacer(None, clock=clock, sleep=clock.sleep).wait() is None


class ListSink(Sink):
    def __init__(self) -> None:
        super().__init__(None)
        self.got: list[tuple[str, Prepared]] = []

    def send(self, topic: str, event: Prepared) -> None:
        self.got.append((topic, event))


def test_run_reports_bad_lines_by_number_and_sends_the_rest() -> None:
    lines = io.StringIO('{"externalAgentId": "a1"}\nnot json\n{"externalAgentId": "a 2"}\n')
    sink, err = ListSink(), io.StringIO()
    tally = run(
        [(Encoder(Entity.AGENT, "topic-a"), json_lines(lines), True)],
        sink,
        pacer=Pacer(None),
        err=err,
        progress=Progress(io.StringIO()),
    )
    assert (tally.lines, tally.sent, [b.line for b in tally.bad]) == (3, {"topic-a": 1}, [2, 3])
    assert [t for t, _ in sink.got] == ["topic-a"]
    assert err.getvalue().splitlines()[0].startswith("line 2: not JSON")
    assert "line 3: externalAgentId: does not match" in err.getvalue()


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("out", "drawn"),
    [pytest.param(Tty(), True, id="tty"), pytest.param(io.StringIO(), False, id="pipe")],
)
def test_progress_only_on_a_terminal(out: io.StringIO, drawn: bool) -> None:
    run(
        [(Encoder(Entity.AGENT, "t"), [(1, {"externalAgentId": "a"})], True)],
        ListSink(),
        pacer=Pacer(None),
        err=io.StringIO(),
        progress=Progress(out),
    )
    assert ("1 queued" in out.getvalue()) is drawn


def _tally_of(text: str) -> Any:
    return run(
        [(Encoder(Entity.AGENT, "topic-a"), json_lines(io.StringIO(text)), True)],
        ListSink(),
        pacer=Pacer(None),
        err=io.StringIO(),
        progress=Progress(io.StringIO()),
    )


@pytest.mark.parametrize(
    ("dry_run", "unacked", "produced"),
    [
        pytest.param(False, 0, 2, id="produced"),
        pytest.param(False, 1, 1, id="one-not-acknowledged"),
        pytest.param(True, 0, 0, id="dry-run"),
    ],
)
def test_the_json_summary_counts_and_lists_bad_lines(
    dry_run: bool, unacked: int, produced: int
) -> None:
    tally = _tally_of('{"externalAgentId": "a1"}\n[1]\n{"externalAgentId": "a3"}\n')
    report = summary_json(tally, dry_run=dry_run, unacked=unacked, elapsed_s=0.5)
    assert report["read"] == 3
    assert (report["produced"], report["valid"], report["per_topic"]) == (
        produced,
        2,
        {"topic-a": 2},
    )
    assert [b["line"] for b in report["bad"]] == [2]
    assert (report["dry_run"], report["not_acknowledged"]) == (dry_run, unacked)
    assert json.loads(json.dumps(report)) == report
