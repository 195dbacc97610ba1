"""The quota ledger (consumer.kafka.QuotaLedger) against the real local broker.

The local broker accepts ``cleanup.policy=compact,delete`` and ``retention.ms`` when a topic is
created (and reports them back), so the ledger topic is created here as it is in production.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.kafka import QuotaLedger, ledger_key
from consumer.quota import MemberRecord, utc_day
from consumer.sandbox.broker import LocalBroker
from consumer.settings import Settings
from tests.integration.conftest import wait_until

#: The production configuration of the ledger topic (see QuotaLedger's docstring).
LEDGER_CONFIG = {"cleanup.policy": "compact,delete", "retention.ms": "172800000"}


def create_ledger_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=1, replication_factor=1, config=LEDGER_CONFIG)],
        request_timeout=10,
    )
    for fut in futures.values():
        fut.result(timeout=10)


@pytest.fixture
def topic(broker: LocalBroker) -> str:
    name = f"it.quota.{uuid.uuid4().hex[:8]}"
    create_ledger_topic(broker.bootstrap_servers, name)
    return name


@pytest.fixture
def settings(broker: LocalBroker) -> Settings:
    return Settings(bootstrap_servers=broker.bootstrap_servers, api_id="x", api_secret="y")


class Ledgers:
    """Opens ledgers with a short interval and closes every one at the end of the test."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.open: list[QuotaLedger] = []

    def __call__(self, group: str, pod: str, topic: str, **kw: float) -> QuotaLedger:
        kw.setdefault("publish_interval_s", 0.3)
        kw.setdefault("stale_after_s", 10.0)
        ledger = QuotaLedger(self.settings, group=group, pod=pod, topic=topic, **kw)
        self.open.append(ledger)
        return ledger


@pytest.fixture
def ledgers(settings: Settings) -> Iterator[Ledgers]:
    made = Ledgers(settings)
    yield made
    for ledger in made.open:
        ledger.close()


def record(pod: str, requests: int, ts: float | None = None) -> MemberRecord:
    now = time.time() if ts is None else ts
    return MemberRecord(pod=pod, day=utc_day(now), requests=requests, demand=1.5, ts=now)


def pods_seen(ledger: QuotaLedger) -> dict[str, int]:
    members = ledger.members()
    return {} if members is None else {p: r.requests for p, r in members.items()}


def test_two_ledgers_of_one_group_see_each_others_records(topic: str, ledgers: Ledgers) -> None:
    a, b = ledgers("g1", "pod-a", topic), ledgers("g1", "pod-b", topic)
    other = ledgers("g2", "pod-x", topic)  # another group on the same topic: never counted
    a.publish(record("pod-a", 7))
    b.publish(record("pod-b", 11))
    other.publish(record("pod-x", 1000))
    want = {"pod-a": 7, "pod-b": 11}
    wait_until(lambda: pods_seen(a) == want and pods_seen(b) == want, 20, "both records")
    a.publish(record("pod-a", 9))  # the latest record per pod wins
    wait_until(lambda: pods_seen(b) == {"pod-a": 9, "pod-b": 11}, 20, "the update")
    assert a.problem() is None and b.problem() is None
    members = b.members()
    assert members is not None
    assert members["pod-a"].demand == 1.5 and members["pod-a"].day == utc_day(time.time())
    assert pods_seen(other) == {"pod-x": 1000}


def test_a_restarted_ledger_sees_the_earlier_pods_records(topic: str, ledgers: Ledgers) -> None:
    first = ledgers("g1", "pod-1", topic)
    first.publish(record("pod-1", 42))
    first.close()  # the final write: the record reaches the topic before close returns
    ledgers.open.remove(first)
    restarted = ledgers("g1", "pod-2", topic)
    wait_until(lambda: restarted.members() is not None, 20, "the restarted ledger read")
    assert pods_seen(restarted) == {"pod-1": 42}
    restarted.publish(record("pod-2", 3))
    wait_until(lambda: pods_seen(restarted) == {"pod-1": 42, "pod-2": 3}, 20, "its own record")


def test_records_of_an_earlier_day_stay_in_members(topic: str, ledgers: Ledgers) -> None:
    ledger = ledgers("g1", "pod-1", topic)
    yesterday = time.time() - 86_400
    ledger.publish(record("pod-old", 5, ts=yesterday))
    wait_until(lambda: pods_seen(ledger) == {"pod-old": 5}, 20, "yesterday's record")
    members = ledger.members()
    assert members is not None and members["pod-old"].day == utc_day(yesterday)


def test_a_missing_topic_gives_no_members_and_a_problem(
    broker: LocalBroker, ledgers: Ledgers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="consumer.kafka")
    name = f"it.quota.missing.{uuid.uuid4().hex[:8]}"
    ledger = ledgers("g1", "pod-1", name)
    ledger.publish(record("pod-1", 1))
    wait_until(lambda: "does not exist" in (ledger.problem() or ""), 20, "the problem")
    assert ledger.members() is None
    time.sleep(1.0)  # several cycles: still one warning, and nothing auto-created by a write
    warnings = [r for r in caplog.records if getattr(r, "event", "") == "quota_ledger_unusable"]
    assert len(warnings) == 1
    meta = AdminClient({"bootstrap.servers": broker.bootstrap_servers}).list_topics(timeout=5)
    assert name not in meta.topics

    create_ledger_topic(broker.bootstrap_servers, name)  # the operator creates it: recovery
    wait_until(lambda: pods_seen(ledger) == {"pod-1": 1}, 30, "recovery")
    assert ledger.problem() is None
    recovered = [r for r in caplog.records if getattr(r, "event", "") == "quota_ledger_ok"]
    assert len(recovered) == 1


def test_a_ledger_not_read_for_longer_than_stale_after_gives_none(
    broker: LocalBroker, topic: str, settings: Settings
) -> None:
    clock = [time.time()]
    ledger = QuotaLedger(
        settings,
        group="g1",
        pod="pod-1",
        topic=topic,
        clock=lambda: clock[0],
        publish_interval_s=0.3,
        stale_after_s=15.0,
    )
    wait_until(lambda: ledger.members() is not None, 20, "first read")
    ledger.close()  # the reader stops: nothing is read any more
    clock[0] += 14.0
    assert ledger.members() is not None  # within stale_after_s: still trusted
    clock[0] += 2.0
    assert ledger.members() is None
    assert "not read for" in (ledger.problem() or "")


def test_keys_name_group_day_and_pod() -> None:
    assert ledger_key("g", "2026-12-01", "pod-1") == b"g|2026-12-01|pod-1"


def run_quota_command(bootstrap: str, group: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m consumer quota ARGS`` configured only through its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "QUOTA_", "DAILY_"))}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        KAFKA_GROUP_ID=group,
        QUOTA_TOPIC="asapp.metadata.quota",
        DAILY_REQUEST_QUOTA="1000",
    )
    return subprocess.run(
        [sys.executable, "-m", "consumer", "quota", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_quota_command_prints_the_sum_of_two_pods(broker: LocalBroker, ledgers: Ledgers) -> None:
    """``metadata-consumer quota --json`` as a subprocess, after two ledgers published."""
    topic = "asapp.metadata.quota"  # the default: what the command reads without QUOTA_TOPIC
    try:
        create_ledger_topic(broker.bootstrap_servers, topic)
    except KafkaException as exc:
        assert "TOPIC_ALREADY_EXISTS" in str(exc)
    group = f"g-report-{uuid.uuid4().hex[:6]}"
    a, b = ledgers(group, "pod-a", topic), ledgers(group, "pod-b", topic)
    a.publish(record("pod-a", 120))
    b.publish(record("pod-b", 80))
    wait_until(lambda: pods_seen(a) == {"pod-a": 120, "pod-b": 80}, 20, "both records")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "QUOTA_", "DAILY_"))}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
        KAFKA_GROUP_ID=group,
        QUOTA_TOPIC=topic,
        DAILY_REQUEST_QUOTA="1000",
    )
    done = subprocess.run(
        [sys.executable, "-m", "consumer", "quota", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["used"], report["remaining"], report["quota"]) == (200, 800, 1000)
    assert [(p["pod"], p["requests"]) for p in report["pods"]] == [("pod-a", 120), ("pod-b", 80)]
    assert report["topic"] == topic


def test_quota_command_without_the_ledger_topic_exits_1(tmp_path: Path) -> None:
    with LocalBroker(log_path=tmp_path / "broker.log") as empty:  # no topic at all
        done = run_quota_command(empty.bootstrap_servers, "g-nobody", "--timeout-s", "10")
    assert done.returncode == 1
    assert "does not exist" in done.stderr and done.stdout == ""


def test_a_broker_gone_makes_the_ledger_stale_after_stale_after_s(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="consumer.kafka")
    own = LocalBroker(log_path=tmp_path / "broker.log").start()
    try:
        create_ledger_topic(own.bootstrap_servers, "asapp.metadata.quota")
        settings = Settings(bootstrap_servers=own.bootstrap_servers, api_id="x", api_secret="y")
        ledger = QuotaLedger(
            settings, group="g1", pod="p", publish_interval_s=0.3, stale_after_s=2, timeout_s=1
        )
        try:
            ledger.publish(record("p", 4))
            wait_until(lambda: pods_seen(ledger) == {"p": 4}, 20, "the record")
            own.stop()
            gone = time.monotonic()
            wait_until(lambda: ledger.members() is None, 20, "staleness")
            assert time.monotonic() - gone >= 1.0  # tolerated for a while, not at once
            assert "not read for" in (ledger.problem() or "")
            wait_until(
                lambda: any(
                    getattr(r, "event", "") == "quota_ledger_unusable" for r in caplog.records
                ),
                10,
                "the warning",
            )
        finally:
            ledger.close()
    finally:
        own.stop()
    unusable = [r for r in caplog.records if getattr(r, "event", "") == "quota_ledger_unusable"]
    assert len(unusable) == 1
