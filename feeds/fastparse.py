"""A fast path for well-formed RSS 2.0: lxml instead of feedparser, the same ParsedFeed.

feedparser is the parser of record: it reads anything and its tolerance is why it is here, but
it costs about half of a first poll cycle's CPU. Most feeds are plain, well-formed RSS 2.0, and
for those a strict XML parse gives the same values at a fraction of the cost. This path is
entered only when the body parses as strict XML, has no DTD and no xml:base, is RSS 2.0, and
uses nothing but the elements below; anything else (a date it cannot read, an e-mail inside an
author, an unknown namespace in an item) returns None and feedparser reads the feed instead.
tests/test_fastparse.py holds the two paths to the same values, field by field.

Pure: no network, files or clock.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import mktime_tz, parsedate_tz
from typing import Any

from feedparser.mixin import _FeedParserMixin
from feedparser.urls import make_safe_absolute_uri
from lxml import etree

from feeds.models import Author, Enclosure, ParsedEntry, ParsedFeed
from feeds.normalize import sanitize_html
from feeds.timeutil import EPOCH, parse_rfc3339
from feeds.untrusted import (
    MAX_AUTHORS,
    MAX_CATEGORIES,
    MAX_ENCLOSURES,
    MAX_HTML,
    MAX_ID,
    MAX_NAME,
    MAX_RAW_TITLE,
    MAX_URL,
    clamp_seconds,
    clean_text,
    web_url,
)

CONTENT = "{http://purl.org/rss/1.0/modules/content/}"
DC = "{http://purl.org/dc/elements/1.1/}"
ATOM = "{http://www.w3.org/2005/Atom}"
# Item children this path reads, and those it may ignore because feedparser's result for them
# is not used by feeds; any other element sends the feed to feedparser.
_ITEM_READ = {
    "title",
    "link",
    "guid",
    "description",
    "pubDate",
    "category",
    "enclosure",
    f"{CONTENT}encoded",
    f"{DC}creator",
    f"{DC}date",
    f"{DC}subject",
}
_ITEM_IGNORED = {"comments", "source"}
_CHANNEL_IGNORED = {
    "description",
    "language",
    "copyright",
    "managingEditor",
    "webMaster",
    "generator",
    "docs",
    "image",
    "category",
    "cloud",
    "rating",
    "textInput",
    "skipHours",
    "skipDays",
}
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, remove_comments=True, remove_pis=True, load_dtd=False)


class _DeclineError(Exception):
    """This feed is not one the fast path reads exactly as feedparser would."""


def parse_rss(body: bytes, headers: dict[str, str], *, url: str) -> ParsedFeed | None:
    """The feed, read by lxml, or None when feedparser must read it."""
    if b"<!DOCTYPE" in body[:4096].upper() or b"xml:base" in body:
        return None
    try:
        root = etree.fromstring(body, _PARSER)
    except (etree.XMLSyntaxError, ValueError):
        return None
    if root.tag != "rss" or root.get("version") != "2.0":
        return None
    channel = root.find("channel")
    if channel is None or len(root) != 1:
        return None
    try:
        return _channel(channel, url)
    except _DeclineError:
        return None


def _text(element: Any) -> str:
    if len(element):
        raise _DeclineError  # markup where text was expected: feedparser has its ways with that
    return str(element.text or "")


def _channel(channel: Any, url: str) -> ParsedFeed:
    feed: dict[str, Any] = {"entries": [], "hub": None, "self_url": None}
    updated = published = None
    for child in channel:
        tag = child.tag
        if tag == "item":
            feed["entries"].append(_item(child, url))
        elif tag == "title":
            title = _text(child)
            if _looks_like_html(title):
                raise _DeclineError  # feedparser rewrites an HTML-looking feed title, shown as the outlet's name
            feed["title"] = clean_text(title, MAX_NAME)
        elif tag == "link":
            feed["link"] = web_url(_text(child).strip(), base=url)
        elif tag == "lastBuildDate":
            updated = _rfc822(_text(child))
        elif tag == "pubDate":
            published = _rfc822(_text(child))
        elif tag == "ttl":
            ttl = _text(child).strip()
            feed["ttl"] = clamp_seconds(int(ttl[:12]) * 60) if ttl.isdigit() else None
        elif tag == f"{ATOM}link":
            rel, href = child.get("rel"), child.get("href")
            if rel in ("hub", "self") and href:
                key = "hub" if rel == "hub" else "self_url"
                feed[key] = feed[key] or web_url(href, base=url)  # the first one counts, as in feedparser's reading
            elif rel not in ("alternate", None):
                raise _DeclineError
        elif tag not in _CHANNEL_IGNORED:
            raise _DeclineError
    return ParsedFeed(
        format="rss20",
        title=feed.get("title"),
        link=feed.get("link"),
        id=None,
        updated=updated or published,
        entries=tuple(feed["entries"]),
        ttl=feed.get("ttl"),
        hub=feed["hub"],
        self_url=feed["self_url"],
    )


def _item(item: Any, url: str) -> ParsedEntry:
    values: dict[str, Any] = {}
    categories: list[str] = []
    enclosures: list[Enclosure] = []
    authors: list[Author] = []
    guid_is_link = False
    for child in item:
        tag = child.tag
        if tag in _ITEM_IGNORED:
            continue
        if tag not in _ITEM_READ or (tag in values and tag not in ("category", f"{DC}subject", "enclosure", f"{DC}creator")):
            raise _DeclineError  # an element feedparser maps somewhere, or one given twice
        if tag == "enclosure":
            href = web_url(child.get("url"))
            length = (child.get("length") or "")[:19].strip()
            if href and len(enclosures) < MAX_ENCLOSURES:
                enclosures.append(Enclosure(href, clean_text(child.get("type"), MAX_NAME), int(length) if length.isdigit() else None))
            continue
        text = _text(child)
        if tag in ("category", f"{DC}subject"):
            term = clean_text(text, MAX_NAME)
            if term and term not in categories and len(categories) < MAX_CATEGORIES:  # feedparser keeps one of each
                categories.append(term)
        elif tag == f"{DC}creator":
            if "@" in text:
                raise _DeclineError  # feedparser splits an e-mail address out of it
            name = clean_text(text, MAX_NAME)
            if name and len(authors) < MAX_AUTHORS:
                authors.append(Author(name=name))
        elif tag == "guid":
            guid_is_link = child.get("isPermaLink", "true") == "true"
            values[tag] = text
        else:
            values[tag] = text
    guid = values.get("guid")
    if guid is not None and guid_is_link:
        guid = make_safe_absolute_uri(url, guid.strip())  # a permalink guid is a URL, resolved as feedparser does
    link = values.get("link")
    if link is not None:
        link = make_safe_absolute_uri(url, link.strip())  # as feedparser resolves an item's link
    elif guid_is_link and guid is not None:
        link = guid
    title = values.get("title")
    title_is_html = bool(title) and _looks_like_html(title or "")
    if title_is_html and "<" in (title or ""):
        raise _DeclineError  # feedparser rewrites markup in titles (quotes, relative links)
    description = _html(values.get("description"), url)
    content = _html(values.get(f"{CONTENT}encoded"), url)
    return ParsedEntry(
        id=clean_text(guid, MAX_ID),
        link=clean_text(link.strip() if link else None, MAX_URL),
        title=clean_text(title, MAX_RAW_TITLE),
        title_is_html=title_is_html,
        summary=description if description != content else None,
        content=content,
        authors=tuple(authors),
        categories=tuple(categories),
        enclosures=tuple(enclosures),
        published=_rfc822(values["pubDate"]) if "pubDate" in values else None,
        updated=_w3c(values[f"{DC}date"]) if f"{DC}date" in values else None,
    )


def _html(value: str | None, base: str) -> str | None:
    """HTML as feedparser leaves it: relative links resolved against the feed's URL."""
    text = clean_text(value, MAX_HTML)
    if text is None:
        return None
    return sanitize_html(text, base=base) if ("href" in text or "src" in text or "cite" in text) else text


def _looks_like_html(text: str) -> bool:
    """feedparser's own test of whether RSS text is HTML, so both paths agree."""
    return bool(_FeedParserMixin.looks_like_html(text[:MAX_RAW_TITLE]))


def _rfc822(text: str) -> datetime | None:
    value = text.strip()
    if not value:
        return None
    parts = parsedate_tz(value[:100])
    if parts is None or (parts[9] is None and not value.endswith(("GMT", "UT", "Z"))):
        raise _DeclineError  # feedparser knows more date shapes than the e-mail parser
    try:
        stamp = datetime.fromtimestamp(mktime_tz(parts), UTC)
    except (OverflowError, ValueError, OSError):
        raise _DeclineError from None
    return stamp if stamp >= EPOCH else None


def _w3c(text: str) -> datetime | None:
    value = parse_rfc3339(text.strip()[:64])
    if value is None and text.strip():
        raise _DeclineError
    return value
