"""JSON log lines with extra fields; configured secrets scrubbed from messages and tracebacks."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from consumer import logs
from consumer.logs import JsonFormatter, TextFormatter, scrub

SECRET = "hunter2-api-secret"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """setup() reconfigures the root logger and the global scrubber: put both back."""
    root = logging.getLogger()
    handlers, level, secrets = root.handlers[:], root.level, scrub.secrets[:]
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    scrub.secrets = secrets


def record(msg: str, *args: Any, exc: bool = False, **extra: Any) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError(f"request failed with header asapp-api-secret={SECRET}")
        except RuntimeError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("consumer.test", logging.WARNING, __file__, 1, msg, args, exc_info)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_json_line_has_standard_and_extra_fields() -> None:
    rec = record(
        "committed %d partitions",
        3,
        event="commit",
        topic="t",
        partition=0,
        offset=42,
    )
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    out = json.loads(line)
    assert out["level"] == "warning"
    assert out["logger"] == "consumer.test"
    assert out["msg"] == "committed 3 partitions"
    assert out["ts"].endswith("Z") and "T" in out["ts"]
    assert {k: out[k] for k in ("event", "topic", "partition", "offset")} == {
        "event": "commit",
        "topic": "t",
        "partition": 0,
        "offset": 42,
    }
    # LogRecord internals do not leak into the line.
    assert not {"args", "levelno", "pathname", "lineno", "exc_info"} & set(out)


def test_non_json_extra_values_are_stringified() -> None:
    out = json.loads(JsonFormatter().format(record("x", when=object, ratio=0.5)))
    assert out["ratio"] == 0.5
    assert "object" in out["when"]


def test_secret_scrubbed_from_message_and_exception() -> None:
    scrub.secrets = [SECRET]
    rec = record("API said: bad secret %s", SECRET, exc=True)
    line = JsonFormatter().format(rec)
    assert SECRET not in line
    out = json.loads(line)
    assert out["msg"] == "API said: bad secret ***"
    assert "RuntimeError" in out["exc"]
    assert "asapp-api-secret=***" in out["exc"]


def test_text_format_scrubs_too() -> None:
    scrub.secrets = [SECRET]
    text = TextFormatter().format(record("leaked %s", SECRET, exc=True))
    assert SECRET not in text
    assert "leaked ***" in text
    assert "WARNING" in text


def test_setup_writes_json_to_stderr_and_scrubs(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("json", "INFO", secrets=[SECRET, "", "abc"])
    assert scrub.secrets == [SECRET]  # empty and very short "secrets" would mangle every line
    log = logging.getLogger("consumer.setup_test")
    log.debug("hidden")
    log.info("token is %s", SECRET, extra={"event": "x"})
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(line["msg"], line["event"]) for line in lines] == [("token is ***", "x")]
    assert logging.getLogger("httpx").level == logging.WARNING


def test_setup_text_format(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("text", "DEBUG", secrets=[SECRET])
    logging.getLogger("consumer.setup_test").debug("value %s", SECRET)
    err = capsys.readouterr().err
    assert "DEBUG" in err and "value ***" in err
    assert SECRET not in err
