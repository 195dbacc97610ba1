"""consumer.check without a network: configuration rows (every problem, did-you-mean), the
Kafka rows over a hand-written cluster fake, exit codes, the table and the JSON report."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

import pytest

from consumer.check import Result, as_json, configuration, exit_code, kafka, run_checks, table
from consumer.errors import BrokerError
from consumer.kafka import PartitionLag, TopicInfo
from consumer.settings import Settings

BASE = {
    "KAFKA_BOOTSTRAP_SERVERS": "b:9092",
    "ASAPP_API_ID": "app",
    "ASAPP_API_SECRET": "secret-value",
    "TOPIC_AGENT": "agents",
    "TOPIC_CONVERSATION": "",
    "TOPIC_CUSTOMER": "",
    "DLQ_TOPIC": "dlq",
}


class FakeCluster:
    """Answers from fixed tables; ``down`` makes every call raise BrokerError."""

    def __init__(
        self,
        topics: dict[str, TopicInfo],
        lags: list[PartitionLag],
        *,
        down: bool = False,
        group_down: bool = False,
    ) -> None:
        self.topics, self.lags, self.down, self.group_down = topics, lags, down, group_down
        self.closed = False

    def describe_topics(self, topics: Iterable[str]) -> tuple[int, dict[str, TopicInfo]]:
        if self.down:
            raise BrokerError("reading the cluster metadata failed: transport failure")
        wanted = list(topics)
        missing = TopicInfo("?", 0, "UNKNOWN_TOPIC_OR_PART: the topic does not exist")
        return 3, {t: self.topics.get(t, missing) for t in wanted}

    def group_offsets(self, topics: Mapping[str, int]) -> list[PartitionLag]:
        if self.group_down:
            raise BrokerError("reading the group's committed offsets failed: timed out")
        return [x for x in self.lags if x.topic in topics]

    def close(self) -> None:
        self.closed = True


GOOD = {"agents": TopicInfo("agents", 2), "dlq": TopicInfo("dlq", 1)}
LAGS = [PartitionLag("agents", 0, 5, 9), PartitionLag("agents", 1, None, 3)]


def statuses(results: list[Result]) -> dict[str, str]:
    return {r.check: r.status for r in results}


def test_configuration_lists_every_problem_and_stops() -> None:
    results = run_checks({"BATCH_MAX_ITEMS": "x"}, cluster=lambda s, t: FakeCluster({}, []))
    failed = [r.detail for r in results if r.status == "fail"]
    assert [d.split(" ")[0] for d in failed] == [
        "KAFKA_BOOTSTRAP_SERVERS",
        "ASAPP_API_ID",
        "ASAPP_API_SECRET",
        "BATCH_MAX_ITEMS='x'",
    ]
    assert results[-1] == Result("connectivity", "skip", "fix the configuration first")
    assert exit_code(results) == 2


def test_configuration_warns_with_did_you_mean() -> None:
    settings, results = configuration({**BASE, "BATCH_MAX_ITEM": "5", "RATE_LIMIT_RPS": "500"})
    assert settings is not None
    warnings = [r.detail for r in results if r.status == "warn"]
    assert warnings[0] == (
        "BATCH_MAX_ITEM is not a variable this service reads: did you mean BATCH_MAX_ITEMS?"
    )
    assert "RATE_LIMIT_RPS=500" in warnings[1]
    assert exit_code(results) == 0


@pytest.mark.parametrize(
    ("cluster", "expected", "code"),
    [
        pytest.param(
            FakeCluster(GOOD, LAGS),
            {
                "broker": "pass",
                "topic (agent) agents": "pass",
                "dlq topic dlq": "pass",
                "group asapp-metadata-consumer on agents": "pass",
            },
            0,
            id="all-good",
        ),
        pytest.param(
            FakeCluster({"agents": TopicInfo("agents", 2)}, LAGS),
            {
                "broker": "pass",
                "topic (agent) agents": "pass",
                "dlq topic dlq": "fail",
                "group asapp-metadata-consumer on agents": "pass",
            },
            1,
            id="dlq-missing",
        ),
        pytest.param(
            FakeCluster(GOOD, LAGS, down=True),
            {"broker": "fail", "topics": "skip"},
            1,
            id="broker-down",
        ),
        pytest.param(
            FakeCluster(GOOD, LAGS, group_down=True),
            {
                "broker": "pass",
                "topic (agent) agents": "pass",
                "dlq topic dlq": "pass",
                "group asapp-metadata-consumer": "fail",
            },
            1,
            id="coordinator-down",
        ),
    ],
)
def test_kafka_rows(cluster: FakeCluster, expected: dict[str, str], code: int) -> None:
    results = kafka(Settings.from_env(BASE), cluster)
    assert statuses(results) == expected
    assert exit_code(results) == code


def test_lag_row_counts_committed_partitions_and_lag() -> None:
    results = kafka(Settings.from_env(BASE), FakeCluster(GOOD, LAGS))
    row = next(r for r in results if r.check.startswith("group"))
    # partition 0: 9 - 5; partition 1: nothing committed, all 3 behind
    assert row.detail == "committed on 1/2 partition(s), lag 7"


def test_unknown_end_offset_is_said_not_guessed() -> None:
    lags = [PartitionLag("agents", 0, 5, None), PartitionLag("agents", 1, None, 3)]
    results = kafka(Settings.from_env(BASE), FakeCluster(GOOD, lags))
    row = next(r for r in results if r.check.startswith("group"))
    assert row.detail.endswith("lag unknown (end offsets unread)")


def test_table_and_json_agree_on_the_verdict() -> None:
    results = [
        Result("broker", "pass", "b:9092: 3 broker(s)"),
        Result("configuration", "warn", "X is not a variable"),
        Result("dlq topic dlq", "fail", "does not exist"),
    ]
    text = table(results)
    assert text.splitlines()[0].split() == ["CHECK", "RESULT", "DETAIL"]
    assert "dlq topic dlq  FAIL    does not exist" in text
    assert text.endswith("1 check(s) failed, 1 warning(s)")
    report = json.loads(as_json(results))
    assert (report["ok"], report["exit_code"]) == (False, 1)
    assert report["checks"][2] == {
        "check": "dlq topic dlq",
        "status": "fail",
        "detail": "does not exist",
    }
