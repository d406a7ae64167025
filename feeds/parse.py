"""Bytes and headers -> ParsedFeed: feedparser for RSS/Atom, a small adapter for JSON Feed.

Pure: no network, files or clock. feedparser is handed bytes and headers, never a URL or a path
(it would fetch them itself). Imports no `requests`, `sqlite3` or `apscheduler`.
"""

from __future__ import annotations

import contextlib
import html
import json
import re
import warnings
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from html.parser import HTMLParser
from itertools import islice
from typing import Any, NoReturn

import feedparser

from feeds.errors import ParseError
from feeds.fastparse import parse_rss
from feeds.models import Author, Enclosure, ParsedEntry, ParsedFeed
from feeds.timeutil import from_struct, parse_rfc3339
from feeds.untrusted import (
    MAX_AUTHORS,
    MAX_CATEGORIES,
    MAX_ENCLOSURES,
    MAX_HTML,
    MAX_ID,
    MAX_MESSAGE,
    MAX_NAME,
    MAX_RAW_TITLE,
    MAX_URL,
    clamp_seconds,
    clean_text,
    web_url,
)

_JSONFEED_PREFIX = "https://jsonfeed.org/version/"
_SY_PERIODS = {"hourly": 3600, "daily": 86400, "weekly": 604800, "monthly": 2592000, "yearly": 31536000}
_WHITESPACE = b" \t\r\n\f\v"
_DOCTYPE_NAME = re.compile(rb"[\w:.-]{1,100}")


_EMAIL = r"[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,8}"
_AUTHOR_FORMS = re.compile(
    rf"^\s*(?:(?P<email>{_EMAIL})\s*\((?P<name>[^()]{{1,200}})\)|(?P<name2>[^<>()@]{{1,200}}?)\s*<(?P<email2>{_EMAIL})>)\s*$"
)


def _bound_feedparser() -> None:
    """feedparser looks for an e-mail address in every author with a regex that is quadratic in
    the author's length (minutes for a long one, holding the GIL). Authors are cut to MAX_NAME
    first; the cut is what `feeds` keeps anyway. Whatever else feedparser does slowly is bounded
    by the parse time limit of the worker process it runs in."""
    mixin = feedparser.mixin._FeedParserMixin
    original = mixin._sync_author_detail
    if getattr(original, "_bounded", False):
        return

    def sync_author_detail(self: Any, key: str = "author") -> None:
        context = self._get_context()
        value = context.get(key)
        if isinstance(value, str) and len(value) > MAX_NAME:
            context[key] = value = value[:MAX_NAME]
        detail = context.get(f"{key}s", [feedparser.util.FeedParserDict()])[-1]
        # RSS's "e-mail (name)" and the "name <e-mail>" form, read whole: feedparser's own regex
        # takes a top-level domain of at most 4 letters, so "ines@wire.example (Ines Calder)"
        # became the name "ple (Ines Calder".
        match = _AUTHOR_FORMS.match(value) if isinstance(value, str) and not detail else None
        if match:
            context.setdefault(f"{key}_detail", detail)
            detail["name"] = (match.group("name") or match.group("name2")).strip()
            detail["email"] = match.group("email") or match.group("email2")
            return
        original(self, key)

    sync_author_detail._bounded = True  # type: ignore[attr-defined]
    mixin._sync_author_detail = sync_author_detail


_bound_feedparser()
_CHARREF = re.compile(rb"&#(x[0-9a-fA-F]{1,8}|X[0-9a-fA-F]{1,8}|[0-9]{1,10});")
_FEED_MARKERS = (b"<rss", b"<feed", b"<rdf", b"<channel", b":rss", b":feed", b":rdf")
MAX_DISCOVERY = 256 * 1024  # a page's <link rel="alternate"> tags are in its head
MAX_JSON_NUMBER = 18  # digits; longer numbers in a JSON Feed are dropped, not parsed
MAX_JSON_DEPTH = 64  # arrays and objects nested deeper in a JSON Feed become null
_FEED_TYPES = ("application/rss+xml", "application/atom+xml", "application/feed+json", "application/json")


def parse_feed(
    source: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    url: str,
    max_entries: int = 500,
) -> ParsedFeed:
    """Read one fetched body; raise ParseError naming `source` if it is not a feed."""
    if not body.strip():
        raise ParseError(source, "empty body: the server sent nothing")
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    stripped = body.lstrip()
    if content_type in ("application/feed+json", "application/json") or stripped[:1] == b"{":
        feed = _parse_json_feed(source, body, url=url)
    else:
        feed = _parse_xml_feed(source, body, headers, url=url)
    if len(feed.entries) > max_entries:
        warning = f"{len(feed.entries)} entries; kept the first {max_entries}"
        feed = _replace(feed, entries=feed.entries[:max_entries], warning=_join(feed.warning, warning))
    return feed


def _replace(feed: ParsedFeed, **changes: Any) -> ParsedFeed:
    fields = {name: getattr(feed, name) for name in feed.__dataclass_fields__}
    fields.update(changes)
    return ParsedFeed(**fields)


def _join(first: str | None, second: str) -> str:
    return f"{first}; {second}" if first else second


def neutralize_entities(body: bytes) -> tuple[bytes, bool]:
    """Drop a DTD internal subset that declares entities (entity expansion and external entities).

    Real feeds do not need it; attackers do. Expat would stop the expansion too, but only after
    seconds and tens of megabytes. A linear scan (str.find, no regex over the body) keeps time and
    memory bounded by the body's size.
    """
    lower = body[:65536].lower()
    start = lower.find(b"<!doctype")
    if start < 0:
        return body, False
    bracket, close = lower.find(b"[", start), lower.find(b">", start)
    if bracket < 0 or 0 <= close < bracket:
        return body, False  # no internal subset
    end = _subset_end(body, bracket)
    subset = body[bracket:end]
    if b"<!entity" not in subset.lower():
        return body, False
    name_at = start + len(b"<!doctype")
    while name_at < len(body) and body[name_at] in _WHITESPACE:
        name_at += 1
    name = _DOCTYPE_NAME.match(body, name_at)
    doctype = b"<!DOCTYPE " + (name.group(0) if name else b"feed") + b">"
    return body[:start] + doctype + body[end:], True


def _subset_end(body: bytes, bracket: int) -> int:
    """Where the internal subset opened at `bracket` ends: after the first `]` followed by `>`."""
    at = bracket
    while True:
        at = body.find(b"]", at + 1)
        if at < 0:
            return len(body)  # never closed: the rest is the subset
        after = at + 1
        while after < len(body) and body[after] in _WHITESPACE:
            after += 1
        if body[after : after + 1] == b">":
            return after + 1


def looks_like_html(body: bytes) -> bool:
    """True when a body starts (after space and comments) with an HTML doctype or <html>."""
    head = body[:65536]
    at = 0
    while True:
        while at < len(head) and head[at] in _WHITESPACE:
            at += 1
        if head.startswith(b"<!--", at):
            end = head.find(b"-->", at + 4)
            if end < 0:
                return False
            at = end + 3
            continue
        start = head[at : at + 20].lower()
        return start.startswith((b"<html", b"<!doctype html")) or b"<html" in head[:2048].lower()


def could_be_feed(body: bytes) -> bool:
    """False when the start of a body names no feed root (rss, feed, RDF, channel): feedparser's
    tolerant parser would spend seconds per megabyte of junk to find nothing. Bodies in UTF-16
    or UTF-32 (a BOM or NUL bytes up front) are left to feedparser."""
    head = body[:65536].lower()
    if b"\x00" in head[:4] or head.startswith((b"\xfe\xff", b"\xff\xfe")):
        return True
    return any(marker in head for marker in _FEED_MARKERS)


def _charref(match: re.Match[bytes]) -> bytes:
    text = match.group(1)
    number = int(text[1:], 16) if text[:1] in b"xX" else int(text)
    allowed = number in (0x9, 0xA, 0xD) or 0x20 <= number <= 0xD7FF or 0xE000 <= number <= 0xFFFD or 0x10000 <= number <= 0x10FFFF
    return match.group(0) if allowed else b"&#xFFFD;"


def fix_charrefs(body: bytes) -> bytes:
    """Character references to what XML cannot carry (`&#1;`, `&#xD800;`, `&#xFFFE;`) become
    U+FFFD: one such reference makes the whole document ill-formed, and feedparser's tolerant
    parser crashes on a surrogate."""
    return _CHARREF.sub(_charref, body) if b"&#" in body else body


def _parse_xml_feed(source: str, body: bytes, headers: Mapping[str, str], *, url: str, fast: bool = True) -> ParsedFeed:
    if not could_be_feed(body):
        _not_a_feed(source, body, url, "no RSS, Atom or JSON Feed found")
    body, neutralized = neutralize_entities(fix_charrefs(body))
    if fast and not neutralized:
        feed = parse_rss(body, dict(headers), url=url)
        if feed is not None:
            return feed
    response_headers = {"content-location": url, **{k.lower(): v for k, v in headers.items()}}
    response_headers.setdefault("content-type", "application/xml")
    # feedparser already cleans; we sanitize again with nh3 in normalize, after resolving links.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # Relative links stay resolved by feedparser: it honours xml:base, which a later pass cannot see.
            result = feedparser.parse(body, response_headers=response_headers, sanitize_html=False)
        except Exception as exc:  # a feedparser bug on an input nobody foresaw: this feed fails, cleanly
            raise ParseError(source, f"feedparser could not read it: {type(exc).__name__}: {_describe(exc)}") from exc
    version = result.get("version", "")
    entries, dropped = _each(_xml_entry, result.get("entries", []))
    warning = None
    if result.get("bozo"):
        warning = f"malformed feed: {_describe(result.get('bozo_exception'))}"
    if neutralized:
        warning = _join(warning, "DTD entity declarations ignored")
    if dropped:
        warning = _join(warning, dropped)
    if not version and not entries:
        _not_a_feed(source, body, url, warning or "no RSS, Atom or JSON Feed found")
    feed = result.get("feed", {})
    links = [lk for lk in feed.get("links", []) if isinstance(lk, Mapping)][:50]
    return ParsedFeed(
        format=version or "unknown",
        title=clean_text(feed.get("title"), MAX_NAME),
        link=web_url(feed.get("link"), base=url),
        id=clean_text(feed.get("id"), MAX_URL),
        updated=from_struct(_own(feed, "updated_parsed")) or from_struct(_own(feed, "published_parsed")),
        entries=entries,
        warning=warning,
        ttl=_ttl(feed),
        hub=next((web_url(lk.get("href"), base=url) for lk in links if lk.get("rel") == "hub"), None),
        self_url=next((web_url(lk.get("href"), base=url) for lk in links if lk.get("rel") == "self"), None),
    )


def _not_a_feed(source: str, body: bytes, url: str, why: str) -> NoReturn:
    if looks_like_html(body):
        advertised = discover_feeds(body, url)
        hint = f"; the page advertises a feed at {advertised[0]}" if advertised else ""
        raise ParseError(source, f"not a feed: got an HTML page{hint}")
    raise ParseError(source, f"not a feed: {why}")


def _each(read: Callable[[Any], ParsedEntry], raw: object) -> tuple[tuple[ParsedEntry, ...], str | None]:
    """Read every entry; one that cannot be read is dropped and counted, never the feed."""
    entries: list[ParsedEntry] = []
    dropped, first = 0, ""
    for item in raw if isinstance(raw, list) else []:
        try:
            entries.append(read(item))
        except Exception as exc:  # one odd entry, whatever is odd about it, costs only itself
            dropped += 1
            first = first or f"{type(exc).__name__}: {exc}"
    if not dropped:
        return tuple(entries), None
    return tuple(entries), clean_text(f"{dropped} entries could not be read and were dropped (first: {first})", MAX_MESSAGE)


def _describe(exc: object) -> str:
    text = str(exc) if exc is not None else "unknown error"
    return clean_text(text.splitlines()[0][:200] if text else type(exc).__name__, MAX_MESSAGE) or type(exc).__name__


def _own(mapping: Mapping[str, Any], key: str) -> Any:
    """A key's own value: feedparser's `get("updated")` silently falls back to `published`."""
    return dict.get(mapping, key) if isinstance(mapping, dict) else None


def _ttl(feed: Mapping[str, Any]) -> timedelta | None:
    ttl = feed.get("ttl")
    if isinstance(ttl, str) and ttl.strip().isdigit():
        return clamp_seconds(int(ttl.strip()[:12]) * 60)
    period = _SY_PERIODS.get(str(feed.get("sy_updateperiod", ""))[:20].strip().lower())
    if period:
        frequency = str(feed.get("sy_updatefrequency", "1"))[:12].strip()
        count = int(frequency) if frequency.isdigit() and int(frequency) > 0 else 1
        return clamp_seconds(period / count)
    return None


def _xml_entry(entry: Mapping[str, Any]) -> ParsedEntry:
    content = [c for c in entry.get("content") or [] if isinstance(c, Mapping)]
    html_content = next((c.get("value") for c in content if "html" in str(c.get("type", ""))), None)
    if html_content is None and content:
        html_content = content[0].get("value")
    title_detail = entry.get("title_detail") or {}
    authors = tuple(
        Author(name=clean_text(a.get("name"), MAX_NAME), email=clean_text(a.get("email"), MAX_NAME), uri=web_url(a.get("href")))
        for a in islice(entry.get("authors", []), MAX_AUTHORS * 5)
        if isinstance(a, Mapping) and (clean_text(a.get("name"), MAX_NAME) or clean_text(a.get("email"), MAX_NAME))
    )[:MAX_AUTHORS]
    if not authors and clean_text(entry.get("author"), MAX_NAME):
        authors = (Author(name=clean_text(entry.get("author"), MAX_NAME)),)
    enclosures: list[Enclosure] = []
    for enc in islice(entry.get("enclosures", []), MAX_ENCLOSURES * 5):
        href = web_url(enc.get("href")) if isinstance(enc, Mapping) else None
        if href and len(enclosures) < MAX_ENCLOSURES:
            length = str(enc.get("length", ""))[:19].strip()
            kind = clean_text(enc.get("type"), MAX_NAME)
            enclosures.append(Enclosure(url=href, type=kind, length=int(length) if length.isdigit() else None))
    summary = clean_text(entry.get("summary"), MAX_HTML)
    html_content = clean_text(html_content, MAX_HTML)
    tags = (clean_text(t.get("term"), MAX_NAME) for t in islice(entry.get("tags", []), MAX_CATEGORIES * 5) if isinstance(t, Mapping))
    return ParsedEntry(
        id=clean_text(entry.get("id"), MAX_ID),
        link=clean_text(entry.get("link"), MAX_URL),
        title=clean_text(entry.get("title"), MAX_RAW_TITLE),
        title_is_html="html" in str(title_detail.get("type", "")),
        summary=summary if summary != html_content else None,
        content=html_content,
        authors=authors,
        categories=tuple(t for t in tags if t)[:MAX_CATEGORIES],
        enclosures=tuple(enclosures),
        published=from_struct(_own(entry, "published_parsed")),
        updated=from_struct(_own(entry, "updated_parsed")),
    )


def limit_json_depth(body: bytes, *, depth: int = MAX_JSON_DEPTH) -> bytes:
    """`body` with every array or object nested deeper than `depth` replaced by null, in one
    linear pass that knows JSON strings: one absurdly deep field costs that field, not the feed
    (json.loads raises RecursionError for the whole document)."""
    out = bytearray()
    level = skip_from = 0
    skipping = in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            level += 1
            if level == depth + 1 and not skipping:
                skipping, skip_from = True, level
                out += b"null"
        elif byte in (0x5D, 0x7D):  # ] }
            level -= 1
            if skipping and level < skip_from:
                skipping = False
                continue
        if not skipping:
            out.append(byte)
    return bytes(out)


def _json_number(text: str) -> int | None:
    """JSON integers past MAX_JSON_NUMBER digits are dropped (Python refuses 4300+ digits)."""
    return int(text) if len(text.lstrip("-")) <= MAX_JSON_NUMBER else None


def _parse_json_feed(source: str, body: bytes, *, url: str) -> ParsedFeed:
    try:
        try:
            data = json.loads(body, parse_int=_json_number)
        except RecursionError:  # rare: only then pay for the linear pass that prunes deep fields
            data = json.loads(limit_json_depth(body), parse_int=_json_number)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParseError(source, f"not a feed: invalid JSON ({_describe(exc)})") from exc
    if not isinstance(data, dict) or not str(data.get("version", ""))[:100].startswith(_JSONFEED_PREFIX):
        raise ParseError(source, "not a feed: JSON without a JSON Feed version (https://jsonfeed.org/version/1.1)")
    items = data.get("items")
    if not isinstance(items, list):
        raise ParseError(source, "not a feed: JSON Feed without an items list")
    home = web_url(data.get("home_page_url"), base=url)
    feed_authors = _json_authors(data)
    entries, dropped = _each(lambda item: _json_entry(item, url=url, feed_authors=feed_authors), items)
    hubs: list[Any] = data["hubs"] if isinstance(data.get("hubs"), list) else []
    return ParsedFeed(
        format="json" + str(data["version"])[:100].rsplit("/", 1)[-1].replace(".", ""),
        title=clean_text(data.get("title"), MAX_NAME),
        link=home,
        id=clean_text(data.get("feed_url"), MAX_URL) or home,
        updated=_newest(entries),
        entries=entries,
        warning=dropped,
        hub=next(
            (web_url(h.get("url"), base=url) for h in hubs[:50] if isinstance(h, dict) and str(h.get("type")).lower() == "websub"), None
        ),
        self_url=web_url(data.get("feed_url"), base=url),
    )


def _json_entry(item: object, *, url: str, feed_authors: tuple[Author, ...]) -> ParsedEntry:
    if not isinstance(item, dict):
        raise TypeError(f"an item is a {type(item).__name__}, not an object")
    link = web_url(item.get("url"), base=url) or web_url(item.get("external_url"), base=url)
    raw_id = item.get("id")
    tags: list[Any] = item["tags"] if isinstance(item.get("tags"), list) else []
    attachments: list[Any] = item["attachments"] if isinstance(item.get("attachments"), list) else []
    return ParsedEntry(
        id=str(raw_id) if isinstance(raw_id, int | float) and not isinstance(raw_id, bool) else clean_text(raw_id, MAX_ID),
        link=link,
        title=clean_text(item.get("title"), MAX_RAW_TITLE),
        summary=clean_text(item.get("summary"), MAX_HTML),
        content=clean_text(item.get("content_html"), MAX_HTML) or _plain_to_html(clean_text(item.get("content_text"), MAX_HTML)),
        authors=_json_authors(item) or feed_authors,
        categories=tuple(t for t in (clean_text(t, MAX_NAME) for t in tags[: MAX_CATEGORIES * 5]) if t)[:MAX_CATEGORIES],
        enclosures=tuple(
            Enclosure(
                url=web_url(a["url"], base=url) or "",
                type=clean_text(a.get("mime_type"), MAX_NAME),
                length=a.get("size_in_bytes") if isinstance(a.get("size_in_bytes"), int) else None,
            )
            for a in attachments[: MAX_ENCLOSURES * 5]
            if isinstance(a, dict) and web_url(a.get("url"), base=url)
        )[:MAX_ENCLOSURES],
        published=parse_rfc3339(clean_text(item.get("date_published"), 100)),
        updated=parse_rfc3339(clean_text(item.get("date_modified"), 100)),
    )


def _plain_to_html(text: str | None) -> str | None:
    if not text:
        return None
    return "".join(f"<p>{html.escape(p)}</p>" for p in text.split("\n\n") if p.strip())


def _json_authors(obj: Mapping[str, Any]) -> tuple[Author, ...]:
    raw = obj.get("authors")
    if not isinstance(raw, list):
        raw = [obj["author"]] if isinstance(obj.get("author"), dict) else []
    return tuple(
        Author(name=clean_text(a.get("name"), MAX_NAME), uri=web_url(a.get("url")))
        for a in raw[: MAX_AUTHORS * 5]
        if isinstance(a, dict) and clean_text(a.get("name"), MAX_NAME)
    )[:MAX_AUTHORS]


def _newest(entries: tuple[ParsedEntry, ...]) -> datetime | None:
    stamps = [s for e in entries for s in (e.updated, e.published) if s]
    return max(stamps) if stamps else None


class _AlternateLinks(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "link":
            return
        values = {k.lower(): (v or "") for k, v in attrs}
        rels = values.get("rel", "").lower().split()
        if "alternate" in rels and values.get("type", "").lower() in _FEED_TYPES and values.get("href"):
            self.found.append(values["href"])


def discover_feeds(html: bytes, base_url: str) -> list[str]:
    """Feed URLs an HTML page advertises with <link rel="alternate">, made absolute."""
    finder = _AlternateLinks()
    with contextlib.suppress(ValueError, AssertionError):
        finder.feed(html[:MAX_DISCOVERY].decode("utf-8", "replace"))
    return [url for url in (web_url(href, base=base_url) for href in finder.found[:20]) if url]
