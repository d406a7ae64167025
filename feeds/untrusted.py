"""Rules for every value that comes from outside: caps, XML-safe text, one URL policy, clamps.

A feed, a response header, a request or a config file may hold anything. Each value is capped
first, then scanned in linear time (no regex here can backtrack), and made safe once, where it
enters the model: text loses the characters XML 1.0 cannot carry (C0 controls, U+FFFE/U+FFFF,
lone surrogates), URLs are http(s) only and lose their userinfo, server-given numbers are
clamped. Pure: imports only the standard library; everything may import it.
"""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import urljoin, urlsplit, urlunsplit

# Field caps (characters), applied before any other processing.
MAX_TITLE = 1_000  # a title as published
MAX_RAW_TITLE = 10_000  # a title before its markup is stripped
MAX_HTML = 500_000  # summary or content HTML
MAX_NAME = 300  # author names, outlet titles, categories, media types
MAX_URL = 2_048  # links, enclosure and author URLs, hubs
MAX_ID = 2_000  # entry ids (guids)
MAX_MESSAGE = 500  # error and warning messages kept in a source's state
MAX_HEADER = 1_000  # response header values we interpret
MAX_AUTHORS = 20
MAX_CATEGORIES = 50
MAX_ENCLOSURES = 20
MAX_DEPTH = 200  # nesting of HTML elements kept (html5ever is quadratic in depth)
MAX_DELTA = timedelta(days=7)  # no server-given wait (Retry-After, max-age, ttl) is longer

# Characters XML 1.0 forbids (C0 controls but tab/newline/return, U+FFFE, U+FFFF, lone surrogates).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]+")
# Characters a terminal interprets: C0 and C1 controls, DEL, bidirectional overrides.
_NOT_TERMINAL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]+")
_WEB = ("http", "https")


def xml_safe(text: str) -> str:
    """`text` without the characters XML 1.0 cannot carry (each run becomes one U+FFFD)."""
    return _NOT_XML.sub("\ufffd", text) if not text.isascii() or not text.isprintable() else text


def clean_text(value: object, cap: int) -> str | None:
    """A string from outside, capped, XML-safe and stripped; None for anything else or blank."""
    if not isinstance(value, str):
        return None
    text = xml_safe(value[:cap]).strip()
    return text or None


def terminal_safe(text: str) -> str:
    """`text` with control characters shown as `?`, so it cannot drive the terminal it is printed on."""
    return _NOT_TERMINAL.sub("?", text)


def strip_userinfo(url: str) -> str:
    """`url` without `user:password@` (a secret in a configured URL never leaves the process)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def host_of(url: str) -> str | None:
    """The lowercase host name of a URL, the key of per-host politeness; None without one."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return host.rstrip(".") if host else None


def web_url(value: object, *, base: str | None = None) -> str | None:
    """A URL from outside, made absolute against `base`, if it is http(s) with a host: capped,
    XML-safe, without userinfo. javascript:, data:, file: and anything unparsable give None."""
    text = clean_text(value, MAX_URL + 1)
    if text is None or len(text) > MAX_URL:
        return None
    try:
        absolute = urljoin(base, text) if base else text
        parts = urlsplit(absolute)
        if parts.scheme.lower() not in _WEB or not parts.hostname:
            return None
        parts.port  # noqa: B018  # raises ValueError for a port that is not a number
    except ValueError:
        return None
    if any(c in absolute for c in "\t\n\r ") or len(absolute) > MAX_URL:
        return None
    return strip_userinfo(absolute)


def clamp_seconds(value: int | float, *, cap: timedelta = MAX_DELTA) -> timedelta:
    """A server-given number of seconds as a duration, never negative, never above `cap`."""
    return timedelta(seconds=min(max(float(value), 0.0), cap.total_seconds()))


def digits(text: str | None, *, limit: int = 18) -> int | None:
    """A short run of ASCII digits as an int (`²`, `٣`, signs and 5000-digit numbers give None)."""
    if text is None:
        return None
    text = text.strip()
    if not text or len(text) > limit or not (text.isascii() and text.isdigit()):
        return None
    return int(text)
