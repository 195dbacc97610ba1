"""``metadata-consumer sandbox`` end to end, as a subprocess: it prints an environment that
works (a producer reaches the broker, the registry holds our subjects, the API answers with the
printed credentials, after the selected fault), stops on
SIGTERM with exit 0 and leaves no temporary file behind; a taken port is named."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as KTopicPartition

from consumer.avro_encode import encode_plain
from consumer.mapping import to_item
from consumer.records import Entity
from consumer.sandbox.broker import free_port
from consumer.sandbox.events import generate

TOPIC = "asapp.metadata.agent"


def _start(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "consumer", "sandbox", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )


def _exported(proc: subprocess.Popen[str]) -> tuple[dict[str, str], list[str]]:
    """The printed environment, read up to the ready line."""
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith("sandbox ready"):
            break
    exports = [ln for ln in lines if ln.startswith("export ")]
    assert exports, lines
    env = dict(w.split("=", 1) for w in shlex.split(exports[0])[1:])
    return env, lines


def test_sandbox_serves_the_printed_environment_and_cleans_up(tmp_path: Path) -> None:
    broker_port, api_port, registry_port = free_port(), free_port(), free_port()
    proc = _start(
        tmp_path,
        *("--broker-port", str(broker_port), "--api-port", str(api_port)),
        *("--registry", "--registry-port", str(registry_port)),
        *("--faults", '{"sequence": [503]}'),
    )
    try:
        env, lines = _exported(proc)
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == f"127.0.0.1:{broker_port}"
        assert env["ASAPP_API_BASE_URL"] == f"http://127.0.0.1:{api_port}"
        assert env["METRICS_HOST"] == "127.0.0.1"
        assert env["SCHEMA_REGISTRY_URL"] == f"http://127.0.0.1:{registry_port}"
        subjects = httpx.get(f"{env['SCHEMA_REGISTRY_URL']}/subjects", timeout=5).json()
        assert f"{TOPIC}-value" in subjects
        assert any("asapp.metadata.quota" in ln for ln in lines)

        record = generate(Entity.AGENT, 1, seed=3)[0]
        producer = Producer({"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"]})
        producer.produce(TOPIC, key=b"agent-1", value=encode_plain(Entity.AGENT, record))
        assert producer.flush(10) == 0
        reader = Consumer(
            {"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"], "group.id": "sandbox-test"}
        )
        try:
            total = sum(
                reader.get_watermark_offsets(KTopicPartition(TOPIC, p), timeout=5)[1]
                for p in range(3)
            )
            assert total == 1  # the event is on the printed broker's topic
        finally:
            reader.close()

        item = to_item(Entity.AGENT, record, topic=TOPIC, partition=0, offset=0)
        answers = [
            httpx.post(
                f"{env['ASAPP_API_BASE_URL']}/metadata-ingestion/v1/many-agent-metadata",
                json={"items": [item]},
                headers={
                    "asapp-api-id": env["ASAPP_API_ID"],
                    "asapp-api-secret": env["ASAPP_API_SECRET"],
                },
                timeout=5,
            )
            for _ in range(2)
        ]
        assert [a.status_code for a in answers] == [503, 200]  # the selected fault, then normal
        answer = answers[1]
        assert answer.json()["errorCount"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert list(tmp_path.iterdir()) == []
    for port in (broker_port, api_port, registry_port):  # everything it started is gone
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_a_taken_port_is_named_with_exit_2(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "consumer",
                "sandbox",
                "--api-port",
                str(port),
                "--broker-port",
                str(free_port()),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert proc.returncode == 2
    assert f"--api-port={port} cannot be bound" in proc.stderr
