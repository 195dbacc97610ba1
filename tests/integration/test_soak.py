"""Soak (``make bench`` runs it; marked slow, kept out of CI): a continuous stream under random
API faults while members join, leave and get SIGKILLed. At the end every produced message is
delivered or dead-lettered, and nothing was committed past one that was neither.

``SOAK_SECONDS`` sets the duration (default 30, so ``make bench`` stays within 10 minutes).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from consumer.records import Entity
from consumer.sandbox.api import EmulatedApi, Faults
from consumer.sandbox.events import encode_plain, generate
from tests.integration.conftest import Env, audit_commits, wait_until
from tests.integration.test_failures import check_accounting

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_soak_with_faults_and_membership_churn(env: Env, api: EmulatedApi, start_service) -> None:
    duration = float(os.environ.get("SOAK_SECONDS", "30"))
    api.set_faults(
        Faults(
            error_rate=0.1,
            reset_rate=0.02,
            reject_rate=0.01,
            latency_ms=20,
            latency_jitter_ms=80,
            seed=7,
        )
    )
    stop = threading.Event()
    produced = {"n": 0}

    def keep_producing() -> None:
        start = 0
        while not stop.is_set():
            for e in Entity:
                env.produce_events(e, 50, seed=71, start=start)
            bad = generate(Entity.CUSTOMER, 1, seed=72, start=start)[0]
            bad["phoneNumber"] = "call me maybe"
            env.produce(
                Entity.CUSTOMER, [(encode_plain(Entity.CUSTOMER, bad), None), (b"\x07junk", None)]
            )
            start += 50
            produced["n"] = len(env.sent)
            time.sleep(0.1)

    producer = threading.Thread(target=keep_producing, daemon=True)
    producer.start()
    common = {
        "RETRY_MAX_BACKOFF_S": "0.5",
        "REVOKE_TIMEOUT_S": "3",
        "SHUTDOWN_TIMEOUT_S": "8",
        "BATCH_MAX_ITEMS": "200",
        "LOG_LEVEL": "WARNING",
    }
    anchor = start_service(**common)
    deadline = time.monotonic() + duration
    churn = 0
    while time.monotonic() < deadline:
        extra = start_service(**common)
        time.sleep(min(8.0, max(0.0, deadline - time.monotonic())))
        if churn % 2:
            extra.signal(signal.SIGTERM)
            assert extra.proc.wait(15) == 0, "a member failed to stop cleanly"
        else:
            extra.kill()  # crash: its uncommitted work is redelivered to the others
        churn += 1
    stop.set()
    producer.join(10)
    api.set_faults(Faults())
    wait_until(env.all_committed, 120, "everything committed after the soak")
    dead = env.dead_letters()
    print(
        f"\nSOAK {duration:.0f}s: {len(env.sent)} messages, {churn} membership changes, "
        f"{api.accepted_count()} items accepted (duplicates included), {len(dead)} dead letters, "
        f"API statuses {api.stats()['statuses']}"
    )
    check_accounting(env, api, dead)
    audit_commits(env, api)
    assert anchor.proc.poll() is None
    assert anchor.stop() == 0
