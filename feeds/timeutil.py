"""Time conversions: aware UTC everywhere, HTTP dates, Retry-After, RFC 3339, durations.

Pure: never reads the clock. Imports only the standard library.
"""

from __future__ import annotations

import calendar
import re
import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from feeds.untrusted import MAX_DELTA, clamp_seconds

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str | int | float) -> timedelta:
    """`'90s'`, `'15m'`, `'2h'`, `'3d'`, `'1w'` or a number of seconds -> timedelta."""
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, int | float):
        return timedelta(seconds=float(text))
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration (use e.g. 90s, 15m, 2h, 3d): {text!r}")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2) or "s"])


def format_duration(delta: timedelta) -> str:
    """A short human form: `15m`, `2h`, `1d6h`."""
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts[:2])


def ago(value: datetime | None, *, now: datetime) -> str:
    """A time as people say it: "just now", "3 min ago", "5 h ago", "9 days ago" (or "in 4 min");
    "-" for none."""
    if value is None:
        return "-"
    seconds = (now - value).total_seconds()
    future, seconds = seconds < 0, abs(seconds)
    if seconds < 45:
        return "just now" if not future else "now"
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size * (1.5 if unit == "days" else 1):
            amount = round(seconds / size)
            text = f"{amount} {'day' if unit == 'days' and amount == 1 else unit}"
            return f"in {text}" if future else f"{text} ago"
    return "in 1 min" if future else "1 min ago"


def from_struct(value: time.struct_time | None) -> datetime | None:
    """feedparser's `*_parsed` struct (always UTC) -> aware UTC datetime."""
    if value is None:
        return None
    try:
        return _plausible(datetime.fromtimestamp(calendar.timegm(value), UTC))
    except (OverflowError, ValueError, OSError, TypeError):
        return None


def _plausible(value: datetime) -> datetime | None:
    """A stamp from outside, or None when it is before 1970 (year 1, year 0 after an offset)."""
    return value if value >= EPOCH else None


def parse_rfc3339(text: str | None) -> datetime | None:
    """RFC 3339 / ISO 8601 text -> aware UTC datetime; naive values are taken as UTC."""
    if not text or not isinstance(text, str):
        return None
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(value[:64])
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return _plausible(parsed.astimezone(UTC))
    except (ValueError, OverflowError):  # year 9999 with a negative offset overflows
        return None


def to_rfc3339(value: datetime) -> str:
    """Aware datetime -> `2026-11-25T21:29:27Z`."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_http_date(text: str | None) -> datetime | None:
    """An HTTP-date header value -> aware UTC datetime, or None if unreadable."""
    if not text:
        return None
    try:
        parsed = parsedate_to_datetime(text[:100])
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return _plausible(parsed.astimezone(UTC))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def parse_retry_after(text: str | None, *, now: datetime) -> datetime | None:
    """`Retry-After` (delta-seconds or HTTP-date) -> the instant before which we must not ask;
    never more than MAX_DELTA away, however far the server asks."""
    if not text:
        return None
    text = text.strip()
    if text.isascii() and text.isdigit():
        return now + clamp_seconds(int(text[:12]))
    when = parse_http_date(text)
    return min(when, now + MAX_DELTA) if when is not None else None


def clamp(value: datetime | None, *, now: datetime) -> datetime | None:
    """A stamp in the future is clamped to `now` (publishers' clocks and typos)."""
    if value is None:
        return None
    return min(value, now)
