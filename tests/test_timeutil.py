"""Time helpers: durations, HTTP dates, Retry-After, RFC 3339."""

from __future__ import annotations

from datetime import timedelta

import pytest

from feeds.timeutil import format_duration, parse_duration, parse_http_date, parse_retry_after, parse_rfc3339, to_rfc3339
from tests.conftest import NOW


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("2h", 7200), ("3d", 259200), ("1w", 604800), (45, 45), ("30", 30)]
)
def test_parse_duration(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("bad", ["soon", "5 minutes", "-3m", ""])
def test_parse_duration_rejects_nonsense(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format_duration() -> None:
    assert format_duration(timedelta(minutes=15)) == "15m"
    assert format_duration(timedelta(days=1, hours=6, minutes=5)) == "1d6h"


def test_retry_after_seconds_and_dates() -> None:
    assert parse_retry_after("120", now=NOW) == NOW + timedelta(seconds=120)
    assert parse_retry_after("Wed, 25 Nov 2026 13:00:00 GMT", now=NOW) == NOW + timedelta(hours=1)
    assert parse_retry_after("whenever", now=NOW) is None


def test_rfc3339_round_trip_and_offsets() -> None:
    assert to_rfc3339(parse_rfc3339("2026-11-25T14:00:00+02:00")) == "2026-11-25T12:00:00Z"  # type: ignore[arg-type]
    assert parse_rfc3339("2026-11-25T12:00:00Z") == NOW
    assert parse_rfc3339("not a date") is None
    assert parse_http_date("Wed, 25 Nov 2026 12:00:00 GMT") == NOW
