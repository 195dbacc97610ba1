"""Structured logging: JSON lines (default, for containers) or plain text.

Lifecycle events carry an ``event`` field (assign, revoke, commit, commit_failed,
backoff_start, backoff_end, dead_letter, stop, ...); message-scoped lines carry topic,
partition and offset. Payloads and secrets are never logged: callers pass positions, reasons
and error texts only, and :func:`scrub` masks the configured secrets should one slip into a
foreign library's message.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class _Scrubber:
    def __init__(self) -> None:
        self.secrets: list[str] = []

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret and secret in text:
                text = text.replace(secret, "***")
        return text


scrub = _Scrubber()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = scrub(value) if isinstance(value, str) else value
        if record.exc_info:
            out["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``; a record whose ``extra`` has a ``settings`` mapping (the
    start line) also shows it, as ``name=value`` pairs after the message (JSON shows every
    ``extra`` field as it is)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        fields = getattr(record, "settings", None)
        if isinstance(fields, Mapping):
            text += "".join(f" {k}={_text_value(v)}" for k, v in fields.items())
        return text

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def _text_value(value: object) -> str:
    """A value as one shell-like token: JSON for containers, the text itself otherwise."""
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, default=str, separators=(",", ":"))
    text = "null" if value is None else str(value)
    return text if text and " " not in text else json.dumps(text)


def setup(fmt: str = "json", level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    """Configure the root logger once, writing to stderr."""
    scrub.secrets = [s for s in secrets if s and len(s) >= 4]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Per-request INFO lines of the HTTP clients (ours and the schema registry's) would drown
    # the lifecycle events; their failures reach us as exceptions and are logged once.
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
