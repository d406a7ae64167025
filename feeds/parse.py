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
from collections.abc import Mapping
from datetime import datetime, timedelta
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin

import feedparser

from feeds.errors import ParseError
from feeds.models import Author, Enclosure, ParsedEntry, ParsedFeed
from feeds.timeutil import from_struct, parse_rfc3339

_JSONFEED_PREFIX = "https://jsonfeed.org/version/"
_SY_PERIODS = {"hourly": 3600, "daily": 86400, "weekly": 604800, "monthly": 2592000, "yearly": 31536000}
_HTML_START = re.compile(rb"^\s*(<!--.*?-->\s*)*(<!doctype\s+html|<html)", re.IGNORECASE | re.DOTALL)
# An internal DTD subset that declares entities: the billion-laughs and external-entity vectors.
_ENTITY_SUBSET = re.compile(rb"<!DOCTYPE\s+([\w:.-]+)[^\[>]*\[(?:(?!\]\s*>).)*?<!ENTITY.*?\]\s*>", re.IGNORECASE | re.DOTALL)
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
    seconds and tens of megabytes; this keeps time and memory bounded by the body's size.
    """
    head = body[:65536]
    match = _ENTITY_SUBSET.search(head)
    if not match:
        return body, False
    return body[: match.start()] + b"<!DOCTYPE " + match.group(1) + b">" + body[match.end() :], True


def _parse_xml_feed(source: str, body: bytes, headers: Mapping[str, str], *, url: str) -> ParsedFeed:
    body, neutralized = neutralize_entities(body)
    response_headers = {"content-location": url, **{k.lower(): v for k, v in headers.items()}}
    response_headers.setdefault("content-type", "application/xml")
    # feedparser already cleans; we sanitize again with nh3 in normalize, after resolving links.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = feedparser.parse(body, response_headers=response_headers, sanitize_html=False)
    version = result.get("version", "")
    entries = tuple(_xml_entry(e) for e in result.get("entries", []))
    warning = None
    if result.get("bozo"):
        warning = f"malformed feed: {_describe(result.get('bozo_exception'))}"
    if neutralized:
        warning = _join(warning, "DTD entity declarations ignored")
    if not version and not entries:
        if _HTML_START.match(body) or b"<html" in body[:2048].lower():
            advertised = discover_feeds(body, url)
            hint = f"; the page advertises a feed at {advertised[0]}" if advertised else ""
            raise ParseError(source, f"not a feed: got an HTML page{hint}")
        raise ParseError(source, f"not a feed: {warning or 'no RSS, Atom or JSON Feed found'}")
    feed = result.get("feed", {})
    return ParsedFeed(
        format=version or "unknown",
        title=_text(feed.get("title")),
        link=feed.get("link"),
        id=feed.get("id"),
        updated=from_struct(_own(feed, "updated_parsed")) or from_struct(_own(feed, "published_parsed")),
        entries=entries,
        warning=warning,
        ttl=_ttl(feed),
        hub=next((lk.get("href") for lk in feed.get("links", []) if lk.get("rel") == "hub"), None),
        self_url=next((lk.get("href") for lk in feed.get("links", []) if lk.get("rel") == "self"), None),
    )


def _describe(exc: object) -> str:
    text = str(exc) if exc is not None else "unknown error"
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _own(mapping: Mapping[str, Any], key: str) -> Any:
    """A key's own value: feedparser's `get("updated")` silently falls back to `published`."""
    return dict.get(mapping, key) if isinstance(mapping, dict) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _ttl(feed: Mapping[str, Any]) -> timedelta | None:
    ttl = feed.get("ttl")
    if isinstance(ttl, str) and ttl.strip().isdigit():
        return timedelta(minutes=int(ttl.strip()))
    period = _SY_PERIODS.get(str(feed.get("sy_updateperiod", "")).strip().lower())
    if period:
        frequency = str(feed.get("sy_updatefrequency", "1")).strip()
        count = int(frequency) if frequency.isdigit() and int(frequency) > 0 else 1
        return timedelta(seconds=period / count)
    return None


def _xml_entry(entry: Mapping[str, Any]) -> ParsedEntry:
    content = entry.get("content") or []
    html_content = next((c.get("value") for c in content if "html" in c.get("type", "")), None)
    if html_content is None and content:
        html_content = content[0].get("value")
    title_detail = entry.get("title_detail") or {}
    authors = tuple(
        Author(name=_text(a.get("name")), email=_text(a.get("email")), uri=_text(a.get("href")))
        for a in entry.get("authors", [])
        if isinstance(a, Mapping) and (a.get("name") or a.get("email"))
    )
    if not authors and _text(entry.get("author")):
        authors = (Author(name=entry.get("author")),)
    enclosures = []
    for enc in entry.get("enclosures", []):
        href = enc.get("href")
        if href:
            length = str(enc.get("length", "")).strip()
            enclosures.append(Enclosure(url=href, type=enc.get("type") or None, length=int(length) if length.isdigit() else None))
    summary = entry.get("summary")
    return ParsedEntry(
        id=_text(entry.get("id")),
        link=_text(entry.get("link")),
        title=_text(entry.get("title")),
        title_is_html="html" in title_detail.get("type", ""),
        summary=summary if summary != html_content else None,
        content=html_content,
        authors=authors,
        categories=tuple(t["term"] for t in entry.get("tags", []) if _text(t.get("term"))),
        enclosures=tuple(enclosures),
        published=from_struct(_own(entry, "published_parsed")),
        updated=from_struct(_own(entry, "updated_parsed")),
    )


def _parse_json_feed(source: str, body: bytes, *, url: str) -> ParsedFeed:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParseError(source, f"not a feed: invalid JSON ({exc})") from exc
    if not isinstance(data, dict) or not str(data.get("version", "")).startswith(_JSONFEED_PREFIX):
        raise ParseError(source, "not a feed: JSON without a JSON Feed version (https://jsonfeed.org/version/1.1)")
    items = data.get("items")
    if not isinstance(items, list):
        raise ParseError(source, "not a feed: JSON Feed without an items list")
    home = _str(data.get("home_page_url"))
    feed_authors = _json_authors(data)
    entries = []
    skipped = 0
    for item in items:
        if not isinstance(item, dict):
            skipped += 1
            continue
        link = _str(item.get("url")) or _str(item.get("external_url"))
        entries.append(
            ParsedEntry(
                id=_str(item.get("id")) if not isinstance(item.get("id"), int | float) else str(item["id"]),
                link=urljoin(url, link) if link else None,
                title=_str(item.get("title")),
                summary=_str(item.get("summary")),
                content=_str(item.get("content_html")) or _plain_to_html(_str(item.get("content_text"))),
                authors=_json_authors(item) or feed_authors,
                categories=tuple(t for t in item.get("tags", []) if isinstance(t, str)) if isinstance(item.get("tags"), list) else (),
                enclosures=tuple(
                    Enclosure(
                        url=a["url"],
                        type=_str(a.get("mime_type")),
                        length=a.get("size_in_bytes") if isinstance(a.get("size_in_bytes"), int) else None,
                    )
                    for a in item.get("attachments", []) or []
                    if isinstance(a, dict) and _str(a.get("url"))
                ),
                published=parse_rfc3339(_str(item.get("date_published"))),
                updated=parse_rfc3339(_str(item.get("date_modified"))),
            )
        )
    hubs: list[Any] = data["hubs"] if isinstance(data.get("hubs"), list) else []
    return ParsedFeed(
        format="json" + str(data["version"]).rsplit("/", 1)[-1].replace(".", ""),
        title=_str(data.get("title")),
        link=home,
        id=_str(data.get("feed_url")) or home,
        updated=_newest(tuple(entries)),
        entries=tuple(entries),
        warning=f"{skipped} items are not objects and were skipped" if skipped else None,
        hub=next((h.get("url") for h in hubs if isinstance(h, dict) and h.get("type", "").lower() == "websub"), None),
        self_url=_str(data.get("feed_url")),
    )


def _str(value: object) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _plain_to_html(text: str | None) -> str | None:
    if not text:
        return None
    return "".join(f"<p>{html.escape(p)}</p>" for p in text.split("\n\n") if p.strip())


def _json_authors(obj: Mapping[str, Any]) -> tuple[Author, ...]:
    raw = obj.get("authors")
    if not isinstance(raw, list):
        raw = [obj["author"]] if isinstance(obj.get("author"), dict) else []
    return tuple(Author(name=_str(a.get("name")), uri=_str(a.get("url"))) for a in raw if isinstance(a, dict) and _str(a.get("name")))


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
        finder.feed(html[:1_000_000].decode("utf-8", "replace"))
    return [urljoin(base_url, href) for href in finder.found]
