"""Ingest worker processes: the same results as the in-process step, whatever a worker does.

Starting a worker costs about a second (a fresh interpreter importing the step), so the pools
are module-scoped: ``pool`` (two workers, small chunks) for results and order, ``solo`` (one
worker, started with secrets in the environment) for the environment, a stopped worker and a
killed one; the close and crash-loop tests start their own.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consumer.errors import RegistryUnavailable
from consumer.ingest import Ingest, Unavailable
from consumer.records import DeadLetter, Entity, Item, Message, Position
from consumer.sandbox.events import encode_plain, generate
from consumer.service import build_ingest
from consumer.settings import DEFAULT_TOPICS, Settings
from consumer.workers import IngestPool, default_workers, worker_environment
from tests.unit.fakes import FakeClock

SECRET = "s3cr3t-api-value"
SETTINGS = Settings(bootstrap_servers="localhost:9092", api_id="app", api_secret=SECRET)
AGENTS, CONVERSATIONS, CUSTOMERS = (DEFAULT_TOPICS[e] for e in Entity)
#: Values the test decoder treats specially (in every process alike).
REGISTRY_DOWN = b"\xferegistry-down"
BOOM = b"\xffboom"


class _TestDecoder:
    """The real decoder, except that ``REGISTRY_DOWN`` is a registry outage and ``BOOM`` a
    bug (an exception the step does not expect)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def decode(self, value: bytes | None) -> dict[str, Any]:
        if value == REGISTRY_DOWN:
            raise RegistryUnavailable("registry down", retry_after_s=7.0)
        if value == BOOM:
            raise RuntimeError("the step has a bug")
        record: dict[str, Any] = self.inner.decode(value)
        return record


def build_for_tests(settings: Settings) -> Ingest:
    """The service's step with :class:`_TestDecoder` around each decoder."""
    ingest = build_ingest(settings)
    return Ingest(
        topic_entities=ingest.topic_entities,
        decoders={e: _TestDecoder(d) for e, d in ingest.decoders.items()},
        validators=ingest.validators,
        mapper=ingest.mapper,
    )


def build_dying_in_workers(settings: Settings) -> Ingest:
    """The service's step in the parent; a worker (``python -c``) exits while building it."""
    if sys.argv[:1] == ["-c"]:
        os._exit(3)
    return build_ingest(settings)


def message(value: bytes | None, topic: str = AGENTS, offset: int = 0, **kw: Any) -> Message:
    return Message(Position(topic, offset % 3, offset), b"k", value, 1_700_000_000_000, **kw)


def valid(entity: Entity, i: int = 0) -> bytes:
    return encode_plain(entity, generate(entity, 1, start=i)[0])


def invalid_agent() -> bytes:
    [agent] = generate(Entity.AGENT, 1)
    agent["externalAgentId"] = "not allowed!"
    return encode_plain(Entity.AGENT, agent)


def mixed(n: int) -> list[Message]:
    """``n`` messages cycling through every kind of result."""
    kinds = [
        lambda i: message(valid(Entity.AGENT, i), AGENTS, i),
        lambda i: message(valid(Entity.CONVERSATION, i), CONVERSATIONS, i),
        lambda i: message(valid(Entity.CUSTOMER, i), CUSTOMERS, i),
        lambda i: message(b"\x00garbage", AGENTS, i),
        lambda i: message(invalid_agent(), AGENTS, i),
        lambda i: message(None, CUSTOMERS, i, error="Local: Bad message format"),
        lambda i: message(None, CONVERSATIONS, i),
        lambda i: message(REGISTRY_DOWN, AGENTS, i),
    ]
    return [kinds[i % len(kinds)](i) for i in range(n)]


LOCAL = build_for_tests(SETTINGS)


@pytest.fixture(scope="module")
def pool() -> Iterator[IngestPool]:
    with IngestPool(SETTINGS, 2, chunk=16, build=build_for_tests) as p:
        yield p


@pytest.fixture(scope="module")
def solo() -> Iterator[IngestPool]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ASAPP_API_SECRET", SECRET)
        env.setenv("KAFKA_SASL_PASSWORD", SECRET)
        p = IngestPool(SETTINGS, 1, chunk=32, build=build_for_tests)
    with p:
        yield p


def died_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "ingest_worker_died"]


# --------------------------------------------------------------------------- results
@pytest.mark.parametrize(
    "msg, kind",
    [
        pytest.param(message(valid(Entity.AGENT), AGENTS), Item, id="agent"),
        pytest.param(message(valid(Entity.CONVERSATION), CONVERSATIONS), Item, id="conversation"),
        pytest.param(message(valid(Entity.CUSTOMER), CUSTOMERS), Item, id="customer"),
        pytest.param(message(b"\x00garbage"), DeadLetter, id="undecodable"),
        pytest.param(message(invalid_agent()), DeadLetter, id="failing-validation"),
        pytest.param(message(None, error="Local: Bad message format"), DeadLetter, id="consume"),
        pytest.param(message(None), DeadLetter, id="none-value"),
        pytest.param(message(REGISTRY_DOWN), Unavailable, id="registry-down"),
    ],
)
def test_each_kind_of_result_equals_the_in_process_one(
    pool: IngestPool, msg: Message, kind: type
) -> None:
    [result] = pool.submit([msg]).result(timeout_s=30)
    assert isinstance(result, kind)
    assert result == LOCAL([msg])[0]
    assert result.message is msg  # rebuilt around the original message


def test_order_and_equality_hold_across_many_chunks_and_both_workers(pool: IngestPool) -> None:
    messages = mixed(800)  # 50 chunks of 16
    pendings = [pool.submit(messages[i : i + 200]) for i in range(0, 800, 200)]
    results = [r for p in pendings for r in p.result(timeout_s=30)]
    assert results == LOCAL(messages)
    assert [r.message for r in results] == messages
    assert all(p.done() for p in pendings)


def test_an_empty_submit_is_done_with_no_results(pool: IngestPool) -> None:
    pending = pool.submit([])
    assert pending.done() and pending.result(timeout_s=0) == []


def test_a_step_that_raises_in_a_worker_raises_in_the_parent(
    pool: IngestPool, caplog: pytest.LogCaptureFixture
) -> None:
    pending = pool.submit([message(valid(Entity.AGENT)), message(BOOM)])
    with pytest.raises(RuntimeError, match="has a bug"):
        pending.result(timeout_s=30)
    [line] = [r for r in caplog.records if getattr(r, "event", None) == "ingest_worker_error"]
    assert "RuntimeError" in line.getMessage()
    assert len(pool.pids) == 2  # the worker lives on


# --------------------------------------------------------------------------- the worker process
def test_a_worker_starts_without_secrets_in_its_arguments_or_environment(solo: IngestPool) -> None:
    [pid] = solo.pids
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert b"-c" in cmdline.split(b"\0")
    assert SECRET.encode() not in cmdline and SECRET.encode() not in environ
    assert b"PATH=" in environ


@pytest.mark.parametrize(
    "name, kept",
    [
        pytest.param("PATH", True, id="path"),
        pytest.param("HTTPS_PROXY", True, id="proxy"),
        pytest.param("ASAPP_API_SECRET", False, id="api-secret"),
        pytest.param("ASAPP_API_ID", False, id="our-variable"),
        pytest.param("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", False, id="registry-auth"),
        pytest.param("KAFKA_SASL_USERNAME", False, id="kafka-property"),
        pytest.param("AWS_SECRET_ACCESS_KEY", False, id="foreign-secret"),
        pytest.param("GITHUB_TOKEN", False, id="foreign-token"),
    ],
)
def test_worker_environment_drops_our_variables_and_secret_looking_names(
    name: str, kept: bool
) -> None:
    assert (name in worker_environment({name: "v", "HOME": "/h"})) is kept


def test_a_stopped_worker_times_result_out_then_answers_when_continued(solo: IngestPool) -> None:
    [pid] = solo.pids
    messages = mixed(64)
    os.kill(pid, signal.SIGSTOP)
    try:
        pending = solo.submit(messages)
        with pytest.raises(TimeoutError):
            pending.result(timeout_s=0.05)
        assert not pending.done()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert pending.result(timeout_s=30) == LOCAL(messages)


def test_a_killed_worker_loses_nothing_logs_once_and_is_replaced(
    solo: IngestPool, caplog: pytest.LogCaptureFixture
) -> None:
    [pid] = solo.pids
    messages = mixed(960)
    batches = [messages[i : i + 96] for i in range(0, 960, 96)]
    pendings = [solo.submit(b) for b in batches[:3]]
    os.kill(pid, signal.SIGKILL)  # mid-stream: chunks queued, in flight and still to come
    pendings += [solo.submit(b) for b in batches[3:]]
    assert [r for p in pendings for r in p.result(timeout_s=30)] == LOCAL(messages)
    [line] = died_lines(caplog)
    assert getattr(line, "pid", None) == pid
    assert str(-signal.SIGKILL) in line.getMessage()
    # The death is known (the line is out): the next submit starts a replacement.
    again = solo.submit(batches[0])
    [replacement] = solo.pids
    assert replacement != pid
    assert again.result(timeout_s=30) == LOCAL(batches[0])


def test_workers_dying_at_start_are_replaced_ever_more_slowly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    messages = mixed(16)
    expected = build_dying_in_workers(SETTINGS)(messages)
    with IngestPool(SETTINGS, 1, chunk=8, build=build_dying_in_workers, clock=clock) as p:
        first = p.pids
        assert p.submit(messages).result(timeout_s=30) == expected
        # the first replacement is immediate; it dies too, before answering anything
        pending = p.submit(messages)
        second = p.pids
        assert second and second != first
        assert pending.result(timeout_s=30) == expected
        assert len(died_lines(caplog)) == 2
        clock.advance(0.5)  # the next one waits RESPAWN_MIN_S: meanwhile all is in-process
        assert p.submit(messages).result(timeout_s=30) == expected
        assert p.pids == []
        clock.advance(0.5)
        p.submit(messages)
        assert p.pids and p.pids != second


def test_close_is_bounded_idempotent_and_leaves_results_computable() -> None:
    p = IngestPool(SETTINGS, 1, chunk=16, build=build_for_tests)
    [pid] = p.pids
    messages = mixed(48)
    os.kill(pid, signal.SIGSTOP)  # a stopped child ignores SIGTERM: close must SIGKILL it
    pending = p.submit(messages)
    started = time.monotonic()
    p.close(timeout_s=0.3)
    assert time.monotonic() - started < 2.0
    assert not Path(f"/proc/{pid}").exists()  # killed and reaped
    p.close()  # again: nothing to do
    assert pending.result(timeout_s=0) == LOCAL(messages)
    assert p.submit(messages).result(timeout_s=0) == LOCAL(messages)


# --------------------------------------------------------------------------- sizing
def _cgroup(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    "files, affinity, expected",
    [
        pytest.param({}, 1, 0, id="one-cpu-in-process"),
        pytest.param({}, 2, 1, id="two-cpus"),
        pytest.param({}, 3, 2, id="three-cpus"),
        pytest.param({}, 16, 4, id="capped-at-four"),
        pytest.param({"cpu.max": "max 100000\n"}, 3, 2, id="v2-no-quota"),
        pytest.param({"cpu.max": "200000 100000\n"}, 8, 1, id="v2-two-cpus"),
        pytest.param({"cpu.max": "150000 100000\n"}, 8, 0, id="v2-one-and-a-half"),
        pytest.param({"cpu.max": "250000 100000\n"}, 8, 1, id="v2-two-and-a-half"),
        pytest.param({"cpu.max": "800000 100000\n"}, 2, 1, id="v2-quota-above-affinity"),
        pytest.param({"cpu.max": "garbage\n"}, 3, 2, id="v2-unreadable"),
        pytest.param(
            {"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"},
            8,
            2,
            id="v1-three-cpus",
        ),
        pytest.param(
            {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
            3,
            2,
            id="v1-no-quota",
        ),
        pytest.param(
            {"cpu.cfs_quota_us": "100000\n", "cpu.cfs_period_us": "100000\n"},
            8,
            0,
            id="v1-flat-one-cpu",
        ),
    ],
)
def test_default_workers_from_the_cgroup_quota_and_affinity(
    tmp_path: Path, files: dict[str, str], affinity: int, expected: int
) -> None:
    assert default_workers(_cgroup(tmp_path, files), affinity=affinity) == expected


def test_default_workers_of_this_process_is_within_bounds() -> None:
    assert 0 <= default_workers() <= min(4, len(os.sched_getaffinity(0)) - 1 or 0)
