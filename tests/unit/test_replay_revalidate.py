"""consumer.replay's revalidation: which dead letters would fail the service's checks again,
and what a run does with them (skipped and counted with --revalidate, a warning without)."""

from __future__ import annotations

import io
from typing import Any

import pytest

from consumer.avro_encode import encode_plain
from consumer.decoder import PlainAvroDecoder
from consumer.errors import RegistryUnavailable
from consumer.records import Entity
from consumer.replay import DeadLetterRecord, Revalidator, Selection, Verdict, run
from consumer.settings import Settings

GOOD = {"externalAgentId": "agent1", "agentName": "Jane"}
BAD = {"externalAgentId": "has spaces!", "agentName": "Jane"}


def letter(value: bytes | None, offset: int = 0, entity: str | None = "agent") -> DeadLetterRecord:
    headers: list[tuple[str, bytes | None]] = [
        ("dlq.source.topic", b"asapp.metadata.agent"),
        ("dlq.reason", b"validation"),
    ]
    if entity is not None:
        headers.append(("dlq.entity", entity.encode()))
    return DeadLetterRecord("dlq", 0, offset, None, b"k", value, tuple(headers))


class DownDecoder:
    def decode(self, value: bytes | None) -> dict[str, Any]:
        raise RegistryUnavailable("registry down")


PLAIN = Revalidator({e: PlainAvroDecoder(e) for e in Entity})


@pytest.mark.parametrize(
    ("revalidator", "record", "verdict"),
    [
        pytest.param(PLAIN, letter(encode_plain(Entity.AGENT, GOOD)), Verdict(), id="passes"),
        pytest.param(
            PLAIN,
            letter(encode_plain(Entity.AGENT, BAD)),
            Verdict(failure="validation: externalAgentId: does not match [a-zA-Z0-9\\-\\_]+"),
            id="validation",
        ),
        pytest.param(PLAIN, letter(b"\x07junk"), "decode: ", id="decode"),
        pytest.param(
            PLAIN,
            letter(b"", entity=None),
            Verdict(unchecked="no dlq.entity header"),
            id="no-entity",
        ),
        pytest.param(
            Revalidator({Entity.AGENT: DownDecoder()}),
            letter(b"x"),
            Verdict(unchecked="registry unavailable: registry down"),
            id="registry-down",
        ),
    ],
)
def test_verdicts(
    revalidator: Revalidator, record: DeadLetterRecord, verdict: Verdict | str
) -> None:
    got = revalidator(record)
    if isinstance(verdict, str):
        assert got.failure is not None and got.failure.startswith(verdict)
    else:
        assert got == verdict


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[bytes | None] = []

    def produce(
        self, topic: str, *, key: Any, value: Any, headers: Any, on_delivery: Any, **_: Any
    ) -> None:
        self.sent.append(value)
        on_delivery(None, None)

    def poll(self, _timeout: float) -> int:
        return 0

    def flush(self, _timeout: float) -> int:
        return 0


SETTINGS = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "b:9092"}, require_credentials=False)
RECORDS = [letter(encode_plain(Entity.AGENT, GOOD), 0), letter(encode_plain(Entity.AGENT, BAD), 1)]


@pytest.mark.parametrize(
    ("revalidate", "sent", "out_phrase", "err_phrase"),
    [
        pytest.param(True, 1, "would fail again 1 (skipped)", "", id="revalidate"),
        pytest.param(False, 2, "replayed 2", "warning: 1 selected record(s) would fail", id="warn"),
    ],
)
def test_run_skips_or_warns(revalidate: bool, sent: int, out_phrase: str, err_phrase: str) -> None:
    producer, out, err = FakeProducer(), io.StringIO(), io.StringIO()
    code = run(
        SETTINGS,
        Selection(),
        execute=True,
        limit=0,
        records=iter(RECORDS),
        producer=producer,
        out=out,
        err=err,
        revalidator=PLAIN,
        revalidate=revalidate,
    )
    assert code == 0
    assert len(producer.sent) == sent
    assert out_phrase in out.getvalue()
    assert err_phrase in err.getvalue()
    if revalidate:
        assert "would fail again dlq[0]@1: validation: externalAgentId" in out.getvalue()
