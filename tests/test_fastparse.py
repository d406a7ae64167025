"""The strict-XML fast path reads well-formed RSS 2.0 to the same values as feedparser, field by
field and story by story; whatever it is not sure of, it leaves to feedparser."""

from __future__ import annotations

import json
import random
import sys
from email.utils import format_datetime
from html import escape

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feeds.fastparse import parse_rss
from feeds.models import ParsedFeed, Source
from feeds.normalize import normalize_feed
from feeds.parse import _parse_xml_feed, parse_feed
from tests.conftest import DATA, NOW, ROOT, rss, story_item

sys.path.insert(0, str(ROOT / "scripts"))
from bench import Corpus
from dedup_eval import feed_xml

URL = "http://feeds.test/dir/feed.xml"
SOURCE = Source("s", URL)
FEED_FIELDS = ("format", "title", "link", "id", "updated", "ttl", "hub", "self_url")
ENTRY_FIELDS = ("id", "link", "title", "title_is_html", "authors", "categories", "enclosures", "published", "updated")


def both(body: bytes) -> tuple[ParsedFeed | None, ParsedFeed]:
    return parse_rss(body, {}, url=URL), _parse_xml_feed("s", body, {"content-type": "application/xml"}, url=URL, fast=False)


def assert_same(fast: ParsedFeed, slow: ParsedFeed) -> None:
    for name in FEED_FIELDS:
        assert getattr(fast, name) == getattr(slow, name), name
    assert len(fast.entries) == len(slow.entries)
    for mine, theirs in zip(fast.entries, slow.entries, strict=True):
        for name in ENTRY_FIELDS:
            if name == "title" and mine.title_is_html:
                continue  # feedparser re-serializes an HTML title (`&` -> `&amp;`); the stories below compare the text
            assert getattr(mine, name) == getattr(theirs, name), name
    assert normalize_feed(fast, SOURCE, base=URL, now=NOW) == normalize_feed(slow, SOURCE, base=URL, now=NOW)


def samples() -> list[tuple[str, bytes]]:
    found = [(p.name, p.read_bytes()) for p in sorted((DATA / "feeds" / "wellformed").glob("rss20*.xml"))]
    found += [(p.name, p.read_bytes()) for p in sorted((ROOT / "config" / "samples").glob("*.xml"))]
    escaped = [{**item, "description": escape(item["description"], quote=False)} for item in (story_item(i) for i in range(5))]
    found.append(("conftest", rss(*escaped).encode()))
    corpus = Corpus(4, 12)
    found += [(f"bench-{i}", corpus.body(i)) for i in (0, 2)]
    stories = [json.loads(line) for line in (DATA / "dedup-dev" / "stories.jsonl").read_text().splitlines()[:60]]
    found.append(("dedup-dev", feed_xml("Outlet", stories).encode()))
    return found


@pytest.mark.parametrize(("name", "body"), samples(), ids=[name for name, _ in samples()])
def test_every_rss2_sample_reads_the_same_on_both_paths(name: str, body: bytes) -> None:
    fast, slow = both(body)
    assert fast is not None, f"{name}: the fast path declined a plain RSS 2.0 feed"
    assert_same(fast, slow)


def test_what_the_fast_path_is_not_sure_of_goes_to_feedparser() -> None:
    declined = [
        b'<?xml version="1.0"?><rss version="0.91"><channel><title>t</title></channel></rss>',
        b'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>t</title></feed>',
        rss({"title": "x", "author": "ann@example.org (Ann)"}).encode(),  # feedparser splits the e-mail out
        rss({"title": "x", "pubDate": "sometime last week"}).encode(),  # a date only feedparser may read
        rss({"title": "x"}, extra='<itunes:author xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd">A</itunes:author>').encode(),
        rss({"title": "x", "description": "a &nbsp; b"}).encode(),  # not well-formed XML
        rss(story_item(1)).encode(),  # markup inside <description>: feedparser serializes it its own way
        b'<?xml version="1.0"?><rss version="2.0" xml:base="http://other.example/"><channel><title>t</title></channel></rss>',
    ]
    for body in declined:
        assert parse_rss(body, {}, url=URL) is None, body[:80]
        parse_feed("s", body, {}, url=URL)  # and feedparser reads it (or says why not)


# Well-formed HTML: on broken markup the two paths' HTML parsers may guess differently (both
# results are sanitized the same way afterwards), so equivalence is asked of well-formed HTML only.
HTML = st.lists(
    st.sampled_from(
        ["<p>Text &amp; more</p>", "<a href='/x'>l</a>", "<b>bold</b>", "<img src='i.png'>", "plain", " &lt;tag&gt; ", "<br>", "é—"]
    ),
    max_size=6,
).map("".join)
PIECES = [*"abc XYZ<>&;\"'/=#?é—", "&amp;", "&lt;b&gt;", "<b>", "</b>", "&#233;", " <a href='/x'>l</a> "]
TEXT = st.lists(st.sampled_from(PIECES), max_size=12).map("".join)


@st.composite
def rss_items(draw: st.DrawFn) -> bytes:
    items = []
    for n in range(draw(st.integers(1, 4))):
        item = {}
        if draw(st.booleans()):
            item["title"] = escape(draw(TEXT), quote=False)
        if draw(st.booleans()):
            item["link"] = draw(
                st.sampled_from(["https://a.example/1", "/relative/2", "https://a.example/p?q=1&amp;utm_source=x", " https://a.example/3 "])
            )
        if draw(st.booleans()):
            item["description"] = draw(
                st.sampled_from(["", "<![CDATA[<p>Hi <a href='/x'>there</a></p>]]>", escape(draw(HTML), quote=False)])
            )
        if draw(st.booleans()):
            item["pubDate"] = format_datetime(NOW.replace(hour=draw(st.integers(0, 23))), usegmt=draw(st.booleans()))
        if draw(st.booleans()):
            item["category"] = escape(draw(TEXT), quote=False)
        body = "".join(f"<{k}>{v}</{k}>" for k, v in item.items())
        if draw(st.booleans()):
            permalink = draw(st.sampled_from(["", ' isPermaLink="false"', ' isPermaLink="true"', ' isPermaLink="True"']))
            body += f"<guid{permalink}>{draw(st.sampled_from(['g1', 'https://a.example/g', ' g2 ']))}{n}</guid>"
        if draw(st.booleans()):
            body += '<enclosure url="https://a.example/a.mp3" length="12" type="audio/mpeg"/>'
        if draw(st.booleans()):
            body += f'<dc:creator xmlns:dc="http://purl.org/dc/elements/1.1/">{escape(draw(TEXT), quote=False)}</dc:creator>'
        if draw(st.booleans()):
            stamp = draw(st.sampled_from(["2026-11-20T10:00:00Z", "2026-11-20T10:00:00+02:00", "2026-11-20", "garbage"]))
            body += f'<dc:date xmlns:dc="http://purl.org/dc/elements/1.1/">{stamp}</dc:date>'
        if draw(st.booleans()):
            body += f'<dc:subject xmlns:dc="http://purl.org/dc/elements/1.1/">{escape(draw(TEXT), quote=False)}</dc:subject><category>two</category>'
        if draw(st.booleans()):
            body += f"<content:encoded xmlns:content='http://purl.org/rss/1.0/modules/content/'><![CDATA[{draw(HTML)}]]></content:encoded>"
        items.append(f"<item>{body}</item>")
    rng = random.Random(draw(st.integers(0, 10)))
    extra = rng.choice(["", "<ttl>30</ttl>", '<atom:link xmlns:atom="http://www.w3.org/2005/Atom" rel="self" href="/feed"/>'])
    return (
        f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>{escape(draw(TEXT), quote=False)}</title>'
        f"<link>https://a.example/</link>{extra}{''.join(items)}</channel></rss>"
    ).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(rss_items())
def test_generated_rss2_reads_the_same_on_both_paths_or_goes_to_feedparser(body: bytes) -> None:
    fast, slow = both(body)
    if fast is not None:
        assert_same(fast, slow)
