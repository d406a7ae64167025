"""Normalization: canonical URLs, safe HTML, plain titles, stable ids, UTC stamps."""

from __future__ import annotations

from datetime import timedelta

import pytest

from feeds.models import ParsedEntry, ParsedFeed, Source
from feeds.normalize import canonical_url, normalize_entry, normalize_feed, sanitize_html
from tests.conftest import NOW

SOURCE = Source("src", "https://src.example/feed")
BASE = "https://src.example/feed"


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("HTTP://WWW.Example.COM:80/a/b/?utm_source=x&b=2&a=1#frag", "https://example.com/a/b?a=1&b=2"),
        ("https://example.com:443/a", "https://example.com/a"),
        ("https://example.com:8443/a", "https://example.com:8443/a"),
        ("https://example.com/a/index.html", "https://example.com/a"),
        ("https://amp.example.com/2026/story/amp/", "https://example.com/2026/story"),
        ("https://example.com/2026/story.amp.html", "https://example.com/2026/story.html"),
        ("https://example.com/story?amp", "https://example.com/story"),
        ("https://example.com/s?fbclid=1&gclid=2&mc_eid=3&id=9", "https://example.com/s?id=9"),
        ("https://example.com/", "https://example.com/"),
        ("mailto:someone@example.com", None),
        ("javascript:alert(1)", None),
        ("", None),
    ],
)
def test_canonical_url(url: str, want: str | None) -> None:
    assert canonical_url(url) == want


def test_canonical_url_resolves_relative_links() -> None:
    assert canonical_url("../b?utm_medium=rss", base="https://x.example/a/c/") == "https://x.example/a/b"


@pytest.mark.parametrize(
    "payload",
    [
        '<script>alert("x")</script>',
        '<img src="x.png" onerror="alert(1)">',
        '<a href="javascript:alert(1)">click</a>',
        '<a href="JaVaScRiPt:alert(1)">click</a>',
        '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
        "<svg><script>alert(1)</script></svg>",
        '<form action="https://evil.example"><input name="pw"></form>',
        '<iframe src="https://evil.example"></iframe>',
        '<div style="background:url(javascript:alert(1))" onclick="alert(1)">x</div>',
        '<object data="evil.swf"></object><embed src="evil.swf">',
    ],
)
def test_sanitize_removes_everything_executable(payload: str) -> None:
    cleaned = sanitize_html(f"<p>ok</p>{payload}", base=BASE) or ""
    lowered = cleaned.lower()
    for bad in ("<script", "onerror", "onclick", "javascript:", "data:", "<iframe", "<form", "<svg", "<object", "<embed", "style="):
        assert bad not in lowered, (payload, cleaned)
    assert "<p>ok</p>" in cleaned


def test_tracking_pixels_are_dropped_real_images_kept() -> None:
    html = '<p>hi<img src="https://t.example/p.gif" width="1" height="1"><IMG SRC=x.gif HEIGHT=0 WIDTH=0><img src="a.png" width=600 height=400></p>'
    cleaned = sanitize_html(html, base="https://b.example/") or ""
    assert "t.example" not in cleaned and "x.gif" not in cleaned
    assert 'src="https://b.example/a.png"' in cleaned


def test_sanitize_makes_links_absolute_and_safe() -> None:
    cleaned = sanitize_html('<a href="/about">about</a> <img src="pic.jpg" alt="p">', base="https://blog.example/posts/1") or ""
    assert 'href="https://blog.example/about"' in cleaned
    assert 'src="https://blog.example/posts/pic.jpg"' in cleaned
    assert 'rel="noopener noreferrer nofollow"' in cleaned


def entry(**kwargs: object) -> ParsedEntry:
    return ParsedEntry(**kwargs)  # type: ignore[arg-type]


def test_title_is_plain_text() -> None:
    story = normalize_entry(entry(title="<b>Big</b> &amp; bold", title_is_html=True, link="/x"), SOURCE, base=BASE, now=NOW)
    assert story.title == "Big & bold"
    assert story.link == "https://src.example/x"


def test_missing_title_comes_from_the_text() -> None:
    story = normalize_entry(entry(summary="<p>" + "word " * 40 + "</p>", link="https://src.example/1"), SOURCE, base=BASE, now=NOW)
    assert story.title.startswith("word word") and story.title.endswith("…")


def test_ids_are_stable_and_derived_when_missing() -> None:
    first = normalize_entry(entry(title="t", link="https://src.example/1"), SOURCE, base=BASE, now=NOW)
    again = normalize_entry(entry(title="t", link="https://src.example/1"), SOURCE, base=BASE, now=NOW + timedelta(hours=1))
    assert first.id == again.id and first.guid == "https://src.example/1"
    no_link = normalize_entry(entry(title="t", summary="body"), SOURCE, base=BASE, now=NOW)
    assert no_link.guid.startswith("urn:feeds:entry:")
    other_source = normalize_entry(entry(title="t", link="https://src.example/1"), Source("other", BASE), base=BASE, now=NOW)
    assert other_source.id != first.id


def test_dates_are_utc_missing_stays_none_future_is_clamped() -> None:
    future = normalize_entry(entry(title="t", published=NOW + timedelta(days=300)), SOURCE, base=BASE, now=NOW)
    assert future.published == NOW
    undated = normalize_entry(entry(title="t"), SOURCE, base=BASE, now=NOW)
    assert undated.published is None and undated.when == NOW and undated.first_seen.tzinfo is not None


def test_non_http_links_and_enclosures_are_dropped() -> None:
    from feeds.models import Enclosure

    story = normalize_entry(
        entry(title="t", link="javascript:alert(1)", enclosures=(Enclosure("file:///etc/passwd"), Enclosure("https://a.example/x.mp3"))),
        SOURCE,
        base=BASE,
        now=NOW,
    )
    assert story.link is None
    assert [e.url for e in story.enclosures] == ["https://a.example/x.mp3"]


def test_repeated_guid_in_one_feed_is_one_story() -> None:
    feed = ParsedFeed(format="rss20", entries=(entry(id="a", title="one"), entry(id="a", title="two"), entry(id="b", title="three")))
    assert [s.title for s in normalize_feed(feed, SOURCE, base=BASE, now=NOW)] == ["one", "three"]


def test_field_lengths_are_capped() -> None:
    story = normalize_entry(entry(title="x" * 50_000, content="<p>" + "y" * 2_000_000 + "</p>"), SOURCE, base=BASE, now=NOW)
    assert len(story.title) <= 1000
    assert len(story.content_html or "") <= 500_100
