"""consumer.inspect_dlq's pure parts: time arguments (ISO-8601 or relative) and the error
class of a dead letter's error text."""

from __future__ import annotations

import pytest

from consumer.inspect_dlq import error_class, parse_when
from consumer.replay import UsageError

NOW_MS = 1_700_000_000_000


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(None, None, id="unset"),
        pytest.param("90s", NOW_MS - 90_000, id="seconds"),
        pytest.param("30m", NOW_MS - 1_800_000, id="minutes"),
        pytest.param("2h", NOW_MS - 7_200_000, id="hours"),
        pytest.param("1.5d", NOW_MS - 129_600_000, id="fractional-days"),
        pytest.param("1w", NOW_MS - 604_800_000, id="week"),
        pytest.param("2024-05-01T00:00:00Z", 1_714_521_600_000, id="iso-utc"),
        pytest.param("2024-05-01", 1_714_521_600_000, id="iso-date-naive-utc"),
        pytest.param("2024-05-01T02:00:00+02:00", 1_714_521_600_000, id="iso-offset"),
    ],
)
def test_parse_when(raw: str | None, expected: int | None) -> None:
    assert parse_when(raw, "--since", now_ms=NOW_MS) == expected


@pytest.mark.parametrize("raw", ["yesterday", "2x", "-2h", "h2"])
def test_parse_when_rejects_naming_the_flag(raw: str) -> None:
    with pytest.raises(UsageError, match="--until"):
        parse_when(raw, "--until", now_ms=NOW_MS)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param("FAIL_BAD_PARAMS: ERROR: agent id", "FAIL_BAD_PARAMS", id="api-code"),
        pytest.param("FAIL_BAD_PARAMS", "FAIL_BAD_PARAMS", id="bare-code"),
        pytest.param("DecodeError: invalid Avro body", "DecodeError", id="exception-name"),
        pytest.param("HTTP 500 after 5 attempts", "HTTP N after", id="words-digits"),
        pytest.param("field  attributes\nhas 11 items", "field attributes has", id="spaces"),
        pytest.param("", "(none)", id="empty"),
        pytest.param(None, "(none)", id="absent"),
    ],
)
def test_error_class(error: str | None, expected: str) -> None:
    assert error_class(error) == expected
