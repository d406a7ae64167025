"""Parsing: every format in the matrix, and every ill-formed sample, as their .expected.json say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feeds.errors import ParseError
from feeds.models import Source
from feeds.normalize import normalize_feed
from feeds.parse import discover_feeds, parse_feed
from feeds.timeutil import to_rfc3339
from tests.conftest import DATA, NOW

WELLFORMED = sorted(p for p in (DATA / "feeds" / "wellformed").iterdir() if not p.name.endswith(".expected.json"))
ILLFORMED = sorted(p for p in (DATA / "feeds" / "illformed").iterdir() if not p.name.endswith(".expected.json"))
BASE = "http://feeds.test/feed"


def expected(path: Path) -> dict:
    return json.loads(path.with_name(path.stem + ".expected.json").read_text())


def headers_for(path: Path) -> dict[str, str]:
    return {"content-type": "application/feed+json" if path.suffix == ".json" else "application/xml"}


def check_first(feed, want: dict) -> None:
    story = normalize_feed(feed, Source("s", BASE), base=BASE, now=NOW)[0]
    entry = feed.entries[0]
    for key, value in want.items():
        if key == "id":
            assert entry.id == value
        elif key == "title":
            assert story.title == value
        elif key == "title_contains":
            assert value in story.title
        elif key == "link":
            assert story.link == value
        elif key in ("published", "updated"):
            stamp = getattr(story, key)
            assert (to_rfc3339(stamp) if stamp else None) == value, key
        elif key == "authors":
            assert [a.name for a in story.authors] == value
        elif key == "categories":
            assert list(story.categories) == value
        elif key == "enclosures":
            assert [e.url for e in story.enclosures] == value
        elif key == "content_contains":
            assert value in (story.content_html or story.summary_html or "")
        else:
            raise AssertionError(f"unknown expectation {key}")


@pytest.mark.parametrize("path", WELLFORMED, ids=lambda p: p.name)
def test_wellformed_feed_parses_as_expected(path: Path) -> None:
    want = expected(path)
    feed = parse_feed("sample", path.read_bytes(), headers_for(path), url=BASE)
    assert feed.format == want["format"]
    assert feed.title == want["title"]
    assert len(feed.entries) == want["entries"]
    assert feed.warning is None
    if "ttl_seconds" in want:
        assert feed.ttl is not None and feed.ttl.total_seconds() == want["ttl_seconds"]
    if "hub" in want:
        assert feed.hub == want["hub"]
    check_first(feed, want["first"])


@pytest.mark.parametrize("path", ILLFORMED, ids=lambda p: p.name)
def test_illformed_feed_is_a_clear_error_or_a_warned_parse(path: Path) -> None:
    want = expected(path)
    if "error" in want:
        with pytest.raises(ParseError) as caught:
            parse_feed("broken-source", path.read_bytes(), headers_for(path), url=BASE)
        assert want["error"] in str(caught.value)
        assert "source=broken-source" in str(caught.value)
    else:
        feed = parse_feed("sloppy", path.read_bytes(), headers_for(path), url=BASE)
        assert len(feed.entries) == want["entries"]
        assert feed.warning and want["warning"] in feed.warning
        check_first(feed, want["first"])


def test_entry_cap_keeps_the_first_entries_and_says_so() -> None:
    items = "".join(f"<item><title>t{i}</title><link>https://x.example/{i}</link></item>" for i in range(30))
    body = f'<rss version="2.0"><channel><title>Big</title>{items}</channel></rss>'.encode()
    feed = parse_feed("big", body, {}, url=BASE, max_entries=10)
    assert [e.title for e in feed.entries] == [f"t{i}" for i in range(10)]
    assert feed.warning == "30 entries; kept the first 10"


def test_discover_feeds_reads_alternate_links() -> None:
    page = (
        b'<html><head><link rel="alternate" type="application/atom+xml" href="/a.atom"><link rel="stylesheet" href="x.css"></head></html>'
    )
    assert discover_feeds(page, "https://blog.example/post/1") == ["https://blog.example/a.atom"]


def test_feedparser_updated_fallback_is_not_trusted() -> None:
    body = b'<rss version="2.0"><channel><title>t</title><item><title>a</title><pubDate>Tue, 24 Nov 2026 08:00:00 GMT</pubDate></item></channel></rss>'
    entry = parse_feed("s", body, {}, url=BASE).entries[0]
    assert entry.published is not None
    assert entry.updated is None  # feedparser would silently hand back pubDate as `updated`
