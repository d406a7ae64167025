"""Untrusted input, by class: no feed, response, request or config can freeze, crash, breach or
bloat feeds. One section per class; each attacks the class (generated inputs under a CPU budget,
every field, every URL field, every route), not only the example that first showed it."""

from __future__ import annotations

import faulthandler
import html
import json
import os
import re
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import feedparser
import pytest
import requests
from hypothesis import HealthCheck, Phase, example, given, settings, strategies as st
from lxml import etree

from feeds import policy
from feeds.dedupe import fingerprint
from feeds.errors import ParseError
from feeds.fetch import Fetcher, is_private
from feeds.models import Author, Cluster, DedupeSettings, Enclosure, FetchResult, FetchSettings, OutputSpec, Source, SourceState, Story
from feeds.normalize import canonical_url, normalize_feed, plain_text, sanitize_html
from feeds.parse import discover_feeds, looks_like_html, neutralize_entities, parse_feed
from feeds.render import FeedView, SourceInfo, render_all
from feeds.server import river_item_html
from feeds.store import open_store
from feeds.timeutil import parse_http_date, parse_retry_after, parse_rfc3339
from feeds.untrusted import MAX_DELTA
from tests.conftest import NOW, ROOT, FeedServer, rss, run_feeds, settings_for, story_item, wait_for, write_config
from tests.test_poll import poll
from tests.test_server import free_port

# -- 1. Bounded cost for every byte we did not write -------------------------------------------

MEGABYTE = 1_000_000
# A budget linear in the input's size, generous for a noisy machine: a backtracking regex or a
# quadratic scan costs minutes to days on a megabyte, not seconds.
SECONDS_PER_MB = 10.0  # feedparser's tolerant parser alone costs about 6 s per megabyte of broken XML
SECONDS_FIXED = 2.0
WATCHDOG = 120  # a stage still running then is a hang: fail the whole run loudly, never wait days

# Pieces that make parsers, regexes and sanitizers work hard when repeated.
ATOMS = [
    "<", ">", "<!--", "-->", "<!-- -->", " ", "\n", "\t", "<!DOCTYPE a [", "<!ENTITY ", "]>", "<p", "<p ", "</p>", "<div>",
    "</div>", "<br", "<img ", "width=", "height=1 ", "&", "&#", "&#1;", "&amp;", "&lt;", "&lt;div&gt;", "a", "Z", "1", ".", "-",
    "—", ",", "(AP)", "/", "'", '"', "=", "http://", "x.example", "?utm_", "#", "%", "%2e", "@", "\\", ":", "\x00", "\x01",
    "\x1b[2J", "\ufffe", "\ud800", "é", "<![CDATA[", "]]>", "<a href='", "javascript:", "<html", "<script>", "max-age=",
    "OSLO, Norway --", "by ", "read more", "<svg><svg>", "<table><tr><td>", "<b>", "[", "]", "{", "}",
]
PREFIXES = ["", "<?xml version='1.0'?><rss version='2.0'><channel><item><description>", "<feed xmlns='http://www.w3.org/2005/Atom'>", "{"]


class Hostile(str):
    """A long hostile string that shows itself briefly (hypothesis prints failing examples)."""

    recipe = ""

    def __repr__(self) -> str:
        return f"Hostile({self.recipe})"


def hostile(pattern: str, *, prefix: str = "", size: int = MEGABYTE) -> Hostile:
    """About `size` characters: `pattern` repeated, behind `prefix`."""
    text = Hostile(prefix + (pattern * (size // len(pattern) + 1))[:size])
    text.recipe = f"{prefix!r} + {pattern!r} * ~{size // len(pattern)}"
    return text


@st.composite
def hostile_text(draw: st.DrawFn, size: int = MEGABYTE) -> Hostile:
    """A short pattern of hard pieces repeated, behind a plausible start."""
    pattern = "".join(draw(st.lists(st.sampled_from(ATOMS), min_size=1, max_size=6)))
    return hostile(pattern, prefix=draw(st.sampled_from(PREFIXES)), size=size)


@contextmanager
def cpu_budget(size: int) -> Iterator[None]:
    """The block must use at most a CPU time linear in `size`; a hang aborts the run loudly."""
    faulthandler.dump_traceback_later(WATCHDOG, exit=True)
    started = time.thread_time()
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
    spent = time.thread_time() - started
    budget = SECONDS_FIXED + SECONDS_PER_MB * size / MEGABYTE
    assert spent <= budget, f"{spent:.1f}s of CPU for {size} characters (budget {budget:.1f}s)"


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


# No shrinking: a failing megabyte is reported as its recipe, and shrinking it would take minutes.
HOSTILE = settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
SOURCE = Source("s", "http://feeds.test/feed")


def _story(text: str) -> Story:
    """A story whose every text field holds `text` (as normalize would have capped it)."""
    return Story(
        source="s",
        guid=text[:2000],
        id="0123456789abcdef01234567",
        title=text[:1000],
        link="https://news.example/a",
        canonical_url="https://news.example/a",
        first_seen=NOW,
        summary_html=text[:500_000],
        content_html=text[:500_000],
        authors=(Author(name=text[:300], email=text[:300], uri="https://news.example/me"),),
        categories=(text[:300],),
        enclosures=(Enclosure("https://news.example/a.mp3", text[:300], 10),),
    )


@HOSTILE
@given(hostile_text())
@example(hostile("<!-- -->", size=320) + "x")  # 321 bytes: exponential backtracking in the old HTML sniff, days per poll
@example(hostile("<!DOCTYPE a [<!ENTITY "))  # cubic in the old entity-subset regex
def test_parsing_any_body_costs_linear_time(text: str) -> None:
    body = _bytes(text)
    with cpu_budget(len(body)):
        looks_like_html(body)
        neutralize_entities(body)
        discover_feeds(body, "http://feeds.test/")
    for content_type in ("application/xml", "application/feed+json", "text/html"):
        with cpu_budget(len(body)):
            try:
                feed = parse_feed("s", body, {"content-type": content_type}, url="http://feeds.test/feed")
            except ParseError:
                continue
            for story in normalize_feed(feed, SOURCE, base="http://feeds.test/feed", now=NOW):
                fingerprint(story, DedupeSettings())


@HOSTILE
@given(hostile_text())
@example(hostile("<"))  # quadratic tag stripping of titles: 38 s for 150,000 characters
@example(hostile("<div>"))  # html5ever is quadratic in nesting depth: 12 s for 350 KB
@example(hostile("<p "))  # the paragraph splitter backtracked
def test_every_field_of_an_entry_costs_linear_time(text: str) -> None:
    escaped = html.escape(text.encode("utf-8", "replace").decode("utf-8"))
    fields = ("title", "description", "author", "category", "comments", "pubDate", "guid", "source")
    body = rss({"link": "https://news.example/1", **dict.fromkeys(fields, escaped)}, extra=f"<ttl>{escaped}</ttl>").encode()
    with cpu_budget(len(body)):
        feed = parse_feed("s", body, {}, url="http://feeds.test/feed")
        for story in normalize_feed(feed, SOURCE, base="http://feeds.test/feed", now=NOW):
            fingerprint(story, DedupeSettings())
    with cpu_budget(len(text)):
        plain_text(text)
        sanitize_html(text, base="http://feeds.test/")
        canonical_url(text, base="http://feeds.test/")
        story = _story(text)
        fingerprint(story, DedupeSettings())
        view = FeedView(OutputSpec("all", "All"), (Cluster(1, "urn:x", story, (story,)),), {"s": SourceInfo("s", text[:300], "")}, "http://f/")
        rendered = render_all(view)
        river_item_html(json.loads(rendered["json"])["items"][0])


@HOSTILE
@given(hostile_text(size=100_000))
def test_response_headers_cost_linear_time_and_never_raise(text: str) -> None:
    headers = {name: text for name in ("cache-control", "retry-after", "expires", "date", "etag", "last-modified", "content-type")}
    state = policy.initial_state(SOURCE)
    with cpu_budget(len(text) * len(headers)):
        for status in (200, 304, 429, 503):
            result = FetchResult(SOURCE.url, SOURCE.url, status, headers, b"" if status != 200 else b"<rss/>")
            policy.next_state(state, result, source=SOURCE, now=NOW)
        parse_http_date(text)
        parse_retry_after(text, now=NOW)
        parse_rfc3339(text)


def test_headers_trickled_byte_by_byte_are_cut_by_one_deadline(server: FeedServer) -> None:
    url = server.serve("/drip", "", header_trickle=0.4)  # about 90 bytes of head: 36 s if let be
    fetcher = Fetcher(FetchSettings(connect_timeout=1, read_timeout=2))
    started = time.monotonic()
    result = fetcher.fetch(SourceState(name="drip", url=url, configured_url=url))
    elapsed = time.monotonic() - started
    fetcher.close()
    assert result.status is None and "whole exchange took longer than 3s" in (result.error or "")
    assert elapsed < 6


# -- 2. One bad value never stops more than itself ----------------------------------------------

BAD = ["\x01", "&#1;", "\ufffe", "&#xFFFE;", "\x1b[31m", "&#xD800;", "\x7f", "&#0;", "\x0b"]
FIELDS = ["title", "description", "author", "category", "guid", "comments", "link"]


def assert_outputs_whole(public: Path, *, names: tuple[str, ...] = ("all",)) -> dict[str, Any]:
    """Every output file parses strictly (XML 1.0 and JSON); returns the JSON Feed of the first."""
    documents = {}
    for name in names:
        for fmt in ("atom", "rss"):
            etree.fromstring((public / f"{name}.{fmt}").read_bytes(), etree.XMLParser(resolve_entities=False))
            assert not feedparser.parse((public / f"{name}.{fmt}").read_bytes()).bozo
        documents[name] = json.loads((public / f"{name}.json").read_bytes())
    return documents[names[0]]


@pytest.mark.parametrize("field", FIELDS)
def test_a_bad_character_in_any_field_costs_only_that_field(tmp_path: Path, server: FeedServer, field: str) -> None:
    good = [story_item(i) for i in range(1, 4)]
    bad = [{**story_item(10 + i), field: f"{story_item(10 + i).get(field, 'w')}{char}x"} for i, char in enumerate(BAD)]
    server.serve("/a", rss(*good, *bad, title="Outlet\x01 A&#1;"))
    server.serve("/b", rss(story_item(50, link_host="other.example"), title="Outlet B"))
    settings = settings_for(tmp_path, [{"name": "a", "url": server.url("/a")}, {"name": "b", "url": server.url("/b")}])
    outcomes, counts, _ = poll(settings)
    assert outcomes["b"].status == "ok" and counts["b"] == 1  # another source is never touched
    assert outcomes["a"].status == "ok" and counts["a"] >= 3  # the good entries of the same feed are all there
    document = assert_outputs_whole(tmp_path / "public")
    titles = {item["title"] for item in document["items"]}
    assert {"Story 1", "Story 2", "Story 3", "Story 50"} <= titles
    assert not any(re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\ud800-\udfff]", json.dumps(item, ensure_ascii=False)) for item in document["items"])
    published = run_feeds("publish", "-c", str(tmp_path / "feeds.yaml"))
    assert published.returncode == 0, published.stderr


def test_hostile_json_feed_values_drop_the_field_not_the_feed(tmp_path: Path, server: FeedServer) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    items = [
        {"id": "1", "url": "https://j.example/1", "title": "Good one", "content_text": "fine"},
        {"id": "2", "url": "https://j.example/2", "title": "Lone \\ud800 surrogate", "content_text": "x"},
        {"id": "3", "url": "https://j.example/3", "title": "Deep", "content_text": "y", "tags": "DEEP"},
        {"id": "4", "url": "https://j.example/4", "title": "Huge number", "attachments": [{"url": "https://j.example/a.mp3", "size_in_bytes": "BIG"}]},
        {"id": "5", "url": "https://j.example/5", "title": "Year one", "date_published": "0001-01-01T00:00:00+01:00"},
        {"id": "6", "url": "https://j.example/6", "title": "Year 9999", "date_published": "9999-12-31T23:59:59-14:00"},
        "not an object",
    ]
    body = json.dumps({"version": "https://jsonfeed.org/version/1.1", "title": "J", "items": items}).replace('"DEEP"', deep)
    body = body.replace('"BIG"', "9" * 5000).replace("\\\\ud800", "\\ud800")
    server.serve("/j", body, content_type="application/feed+json")
    settings = settings_for(tmp_path, [{"name": "j", "url": server.url("/j")}])
    outcomes, counts, states = poll(settings)
    assert outcomes["j"].status == "ok" and counts["j"] == 6
    assert "1 entries could not be read" in (states["j"].warning or "")  # the one that is not an object, counted
    document = assert_outputs_whole(tmp_path / "public")
    by_id = {item["url"]: item for item in document["items"]}
    assert by_id["https://j.example/1"]["title"] == "Good one"
    assert by_id["https://j.example/2"]["title"] == "Lone \ufffd surrogate"
    assert by_id["https://j.example/5"]["date_published"] == by_id["https://j.example/6"]["date_published"] == "2026-11-25T12:00:00Z"


def test_server_given_waits_are_clamped_and_the_cycle_goes_on(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/busy", "slow down", status=429, headers={"Retry-After": "300000000000"})
    server.serve("/cache", rss(story_item(1)), headers={"Cache-Control": "max-age=" + "9" * 20})
    server.serve("/ttl", rss(story_item(2), extra="<ttl>99999999999999999999</ttl>"))
    server.serve("/dated", rss({**story_item(3), "pubDate": "Mon, 01 Jan 0001 00:00:00 +0100"}, {**story_item(4), "pubDate": "Fri, 31 Dec 9999 23:59:59 -1400"}))
    names = ("busy", "cache", "ttl", "dated")
    settings = settings_for(tmp_path, [{"name": n, "url": server.url(f"/{n}")} for n in names])
    outcomes, counts, states = poll(settings)
    assert outcomes["busy"].status == "failed" and counts == {"cache": 1, "ttl": 1, "dated": 2}
    busy = states["busy"]
    assert busy.retry_after == NOW + MAX_DELTA and "capped" in (busy.error or "")
    for name in ("cache", "ttl"):
        assert states[name].status == "ok" and states[name].next_poll is not None and states[name].next_poll <= NOW + timedelta(days=1, hours=3)
    status = run_feeds("status", "-c", str(tmp_path / "feeds.yaml"))
    assert "capped: the server asked for longer" in status.stdout  # shown to the operator
    # The next cycle, still answered with the same header, fails the same way and crashes nothing.
    outcomes, _, states = poll(settings, now=NOW + MAX_DELTA + timedelta(minutes=1))
    assert outcomes["busy"].status == "failed" and states["busy"].failures == 2


def test_a_failure_report_quoting_a_hostile_location_keeps_outputs_whole(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/feed", rss(story_item(1)))
    server.serve("/bounce", status=302, headers={"Location": "gopher://x\x01y/"})
    outputs = "outputs:\n  - name: all\n    title: All\n    report_failures: 1m"
    settings = settings_for(tmp_path, [{"name": "ok", "url": server.url("/feed")}, {"name": "bounce", "url": server.url("/bounce")}], outputs=outputs)
    poll(settings)
    outcomes, _, states = poll(settings, now=NOW + timedelta(hours=2))
    assert outcomes["bounce"].status == "failed" and "\x01" not in (states["bounce"].error or "")
    document = assert_outputs_whole(tmp_path / "public")
    assert any("failing" in item["title"] for item in document["items"]) and any(item["title"] == "Story 1" for item in document["items"])


def test_stored_text_no_renderer_can_write_is_cleaned_at_render(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/feed", rss(story_item(1), story_item(2)))
    settings = settings_for(tmp_path, [{"name": "a", "url": server.url("/feed")}])
    poll(settings)
    with sqlite3.connect(tmp_path / "feeds.db") as db:  # as an older version may have stored it
        db.execute("UPDATE stories SET title = 'Bad\x01 title', authors = ?, categories = ? WHERE guid = 'story-1'", ('[["A\\u0002", null, null]]', '["\\u0003"]'))
    result = run_feeds("publish", "-c", str(tmp_path / "feeds.yaml"))
    assert result.returncode == 0, result.stderr
    titles = {item["title"] for item in assert_outputs_whole(tmp_path / "public")["items"]}
    assert titles == {"Bad\ufffd title", "Story 2"}


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(max_size=40), st.text(max_size=40), st.text(max_size=40))
def test_rendering_any_text_in_any_field_gives_whole_outputs(title: str, body: str, name: str) -> None:
    story = replace(_story(body), title=title or "t", authors=(Author(name=name or "n", email=name or None),), categories=(name,) if name else ())
    other = replace(story, source="o", id="other", title="Other story", content_html="<p>fine</p>", summary_html=None)
    clusters = (Cluster(1, "urn:feeds:1", story, (story,)), Cluster(2, "urn:feeds:2", other, (other,)))
    view = FeedView(OutputSpec("all", "All"), clusters, {"s": SourceInfo("s", name or "S", "https://s.example/feed")}, "http://f/")
    files = render_all(view)
    atom = etree.fromstring(files["atom"])
    etree.fromstring(files["rss"])
    assert len(atom.findall("{http://www.w3.org/2005/Atom}entry")) == 2  # cleaned, not dropped
    assert len(json.loads(files["json"])["items"]) == 2
