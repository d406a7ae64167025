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
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import feedparser
import pytest
import requests
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from lxml import etree

from feeds import policy
from feeds.dedupe import fingerprint
from feeds.errors import ParseError
from feeds.fetch import Fetcher, is_private
from feeds.models import Author, Cluster, DedupeSettings, Enclosure, FetchResult, FetchSettings, OutputSpec, Source, SourceState, Story
from feeds.normalize import canonical_url, normalize_feed, plain_text, sanitize_html
from feeds.pages import Filters, river_item_html, river_page, story_page
from feeds.parse import discover_feeds, looks_like_html, neutralize_entities, parse_feed
from feeds.poll import poll_due
from feeds.render import FeedView, SourceInfo, render_all
from feeds.store import open_store
from feeds.timeutil import parse_http_date, parse_retry_after, parse_rfc3339
from feeds.untrusted import MAX_DELTA
from feeds.websub import Subscriber
from tests.conftest import NOW, ROOT, FeedServer, rss, run_feeds, settings_for, story_item, wait_for, write_config
from tests.test_poll import poll
from tests.test_server import free_port

# -- 1. Bounded cost for every byte we did not write -------------------------------------------

MEGABYTE = 1_000_000
# A budget linear in the input's size, generous for a noisy machine: a backtracking regex or a
# quadratic scan costs minutes to days on a megabyte, not seconds.
# What the pipeline may spend on a body: feedparser's tolerant parser alone costs about 6 s per
# megabyte of broken XML, and a busy CI machine adds to it (12.2 s for 1 MB was seen there). The
# defects this catches cost tens of seconds to days.
SECONDS_PER_MB = 14.0
SECONDS_FIXED = 3.0
WATCHDOG = 120  # a stage still running then is a hang: fail the whole run loudly, never wait days

# Pieces that make parsers, regexes and sanitizers work hard when repeated.
ATOMS = [
    "<",
    ">",
    "<!--",
    "-->",
    "<!-- -->",
    " ",
    "\n",
    "\t",
    "<!DOCTYPE a [",
    "<!ENTITY ",
    "]>",
    "<p",
    "<p ",
    "</p>",
    "<div>",
    "</div>",
    "<br",
    "<img ",
    "width=",
    "height=1 ",
    "&",
    "&#",
    "&#1;",
    "&amp;",
    "&lt;",
    "&lt;div&gt;",
    "a",
    "Z",
    "1",
    ".",
    "-",
    "—",
    ",",
    "(AP)",
    "/",
    "'",
    '"',
    "=",
    "http://",
    "x.example",
    "?utm_",
    "#",
    "%",
    "%2e",
    "@",
    "\\",
    ":",
    "\x00",
    "\x01",
    "\x1b[2J",
    "\ufffe",
    "\ud800",
    "é",
    "<![CDATA[",
    "]]>",
    "<a href='",
    "javascript:",
    "<html",
    "<script>",
    "max-age=",
    "OSLO, Norway --",
    "by ",
    "read more",
    "<svg><svg>",
    "<table><tr><td>",
    "<b>",
    "[",
    "]",
    "{",
    "}",
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
@example(hostile("x.example&lt;div&gt;\ud800<img http://]", prefix="{"))  # a lone surrogate in a river filter's link
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
        view = FeedView(
            OutputSpec("all", "All"), (Cluster(1, "urn:x", story, (story,)),), {"s": SourceInfo("s", text[:300], "")}, "http://f/"
        )
        rendered = render_all(view)
        item = json.loads(rendered["json"])["items"][0]
        river_item_html(item, now=NOW)
        story_page("site", "all", "All", item, now=NOW)
        river_page("site", "all", {"items": [item]}, Filters(q=text[:200], source="s", tag=text[:100]), now=NOW, fallback_title="All")


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
    assert not any(
        re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\ud800-\udfff]", json.dumps(item, ensure_ascii=False)) for item in document["items"]
    )
    published = run_feeds("publish", "-c", str(tmp_path / "feeds.yaml"))
    assert published.returncode == 0, published.stderr


def test_hostile_json_feed_values_drop_the_field_not_the_feed(tmp_path: Path, server: FeedServer) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    items = [
        {"id": "1", "url": "https://j.example/1", "title": "Good one", "content_text": "fine"},
        {"id": "2", "url": "https://j.example/2", "title": "Lone \\ud800 surrogate", "content_text": "x"},
        {"id": "3", "url": "https://j.example/3", "title": "Deep", "content_text": "y", "tags": "DEEP"},
        {
            "id": "4",
            "url": "https://j.example/4",
            "title": "Huge number",
            "attachments": [{"url": "https://j.example/a.mp3", "size_in_bytes": "BIG"}],
        },
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
    server.serve(
        "/dated",
        rss(
            {**story_item(3), "pubDate": "Mon, 01 Jan 0001 00:00:00 +0100"}, {**story_item(4), "pubDate": "Fri, 31 Dec 9999 23:59:59 -1400"}
        ),
    )
    names = ("busy", "cache", "ttl", "dated")
    settings = settings_for(tmp_path, [{"name": n, "url": server.url(f"/{n}")} for n in names])
    outcomes, counts, states = poll(settings)
    assert outcomes["busy"].status == "failed" and counts == {"cache": 1, "ttl": 1, "dated": 2}
    busy = states["busy"]
    assert busy.retry_after == NOW + MAX_DELTA and "capped" in (busy.error or "")
    for name in ("cache", "ttl"):
        assert (
            states[name].status == "ok"
            and states[name].next_poll is not None
            and states[name].next_poll <= NOW + timedelta(days=1, hours=3)
        )
    status = run_feeds("status", "-c", str(tmp_path / "feeds.yaml"))
    assert "capped: the server asked for longer" in status.stdout  # shown to the operator
    # The next cycle, still answered with the same header, fails the same way and crashes nothing.
    outcomes, _, states = poll(settings, now=NOW + MAX_DELTA + timedelta(minutes=1))
    assert outcomes["busy"].status == "failed" and states["busy"].failures == 2


def test_a_failure_report_quoting_a_hostile_location_keeps_outputs_whole(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/feed", rss(story_item(1)))
    server.serve("/bounce", status=302, headers={"Location": "gopher://x\x01y/"})
    outputs = "outputs:\n  - name: all\n    title: All\n    report_failures: 1m"
    settings = settings_for(
        tmp_path, [{"name": "ok", "url": server.url("/feed")}, {"name": "bounce", "url": server.url("/bounce")}], outputs=outputs
    )
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
        db.execute(
            "UPDATE stories SET title = 'Bad\x01 title', authors = ?, categories = ? WHERE guid = 'story-1'",
            ('[["A\\u0002", null, null]]', '["\\u0003"]'),
        )
    result = run_feeds("publish", "-c", str(tmp_path / "feeds.yaml"))
    assert result.returncode == 0, result.stderr
    titles = {item["title"] for item in assert_outputs_whole(tmp_path / "public")["items"]}
    assert titles == {"Bad\ufffd title", "Story 2"}


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(max_size=40), st.text(max_size=40), st.text(max_size=40))
def test_rendering_any_text_in_any_field_gives_whole_outputs(title: str, body: str, name: str) -> None:
    story = replace(
        _story(body), title=title or "t", authors=(Author(name=name or "n", email=name or None),), categories=(name,) if name else ()
    )
    other = replace(story, source="o", id="other", title="Other story", content_html="<p>fine</p>", summary_html=None)
    clusters = (Cluster(1, "urn:feeds:1", story, (story,)), Cluster(2, "urn:feeds:2", other, (other,)))
    view = FeedView(OutputSpec("all", "All"), clusters, {"s": SourceInfo("s", name or "S", "https://s.example/feed")}, "http://f/")
    files = render_all(view)
    atom = etree.fromstring(files["atom"])
    etree.fromstring(files["rss"])
    assert len(atom.findall("{http://www.w3.org/2005/Atom}entry")) == 2  # cleaned, not dropped
    assert len(json.loads(files["json"])["items"]) == 2


# -- 3. The address we check is the address we connect to ---------------------------------------


def test_public_sources_never_reach_a_private_address(server: FeedServer) -> None:
    # The internet cannot exist here: 127.0.0.1 plays a public address (this classifier says
    # so), and a second server on 127.0.0.2 plays an internal service that must never be reached.
    internal = FeedServer(host="127.0.0.2")
    internal.serve("/secret", rss(story_item(99)))
    names = {"feeds-public.example": ["127.0.0.1"], "internal.example": ["127.0.0.2"], "split.example": ["127.0.0.2", "127.0.0.1"]}

    def resolver(host: str) -> list[str]:
        return names.get(host) or [socket.gethostbyname(host)]

    def classify(address: str) -> bool:
        return address != "127.0.0.1" and is_private(address)

    fetcher = Fetcher(FetchSettings(connect_timeout=2, read_timeout=2), resolver=resolver, classify=classify)
    port = internal.port
    targets = [
        f"http://127.0.0.2:{port}/secret",
        f"http://127.0.0.2:{port}\\@x.example/secret",  # the guard once parsed this host one way, urllib3 another
        f"http://%31%32%37.0.0.2:{port}/secret",  # percent-encoded host
        f"http://2130706434:{port}/secret",  # 127.0.0.2 as one number
        f"http://0x7f000002:{port}/secret",
        f"http://[::ffff:127.0.0.2]:{port}/secret",  # IPv4-mapped IPv6
        f"http://internal.example:{port}/secret",  # a public-looking name resolving inside
        f"http://split.example:{port}/secret",  # one private answer among public ones is skipped
        f"http://user:pw@127.0.0.2:{port}/secret",
    ]
    try:
        for i, target in enumerate(targets):
            server.serve(f"/bounce{i}", status=302, headers={"Location": target})
            url = f"http://feeds-public.example:{server.port}/bounce{i}"
            result = fetcher.fetch(SourceState(name="pub", url=url, configured_url=url))
            assert (result.status is None and "refused" in (result.error or "")) or "resolve" in (result.error or ""), target
        assert internal.hits == []
        # A source configured on a private address is the user's choice: allowed, redirects included.
        direct = f"http://127.0.0.2:{port}/secret"
        assert fetcher.fetch(SourceState(name="intra", url=direct, configured_url=direct)).status == 200
        named = f"http://internal.example:{port}/secret"
        assert Fetcher(resolver=resolver, classify=classify).fetch(SourceState(name="n", url=named, configured_url=named)).status is None
        allowed = Fetcher(resolver=resolver, classify=classify, private_sources=["n"])
        assert allowed.fetch(SourceState(name="n", url=named, configured_url=named)).status == 200  # private: true
        # A host that does not resolve is refused, not waved through as public.
        refused = fetcher.fetch(SourceState(name="x", url="http://nowhere.invalid/", configured_url="http://nowhere.invalid/"))
        assert refused.status is None and "resolve" in (refused.error or "")
    finally:
        fetcher.close()
        internal.close()


def test_dns_rebinding_has_no_window(server: FeedServer) -> None:
    internal = FeedServer(host="127.0.0.2")
    internal.serve("/feed", rss(story_item(99)))
    server.serve("/feed", rss(story_item(1)), headers={"Connection": "close"})
    lookups: list[str] = []

    def rebinding(host: str) -> list[str]:  # public for the first answer, private ever after
        lookups.append(host)
        return ["127.0.0.1"] if len(lookups) == 1 else ["127.0.0.2"]

    fetcher = Fetcher(resolver=rebinding, classify=lambda a: a != "127.0.0.1" and is_private(a))
    url = f"http://rebind.example:{server.port}/feed"
    try:
        first = fetcher.fetch(SourceState(name="r", url=url, configured_url=url))
        assert first.status == 200 and lookups == ["rebind.example"]  # one lookup, and the connection used its answer
        second = fetcher.fetch(SourceState(name="r", url=url.replace(str(server.port), str(internal.port)), configured_url=url))
        assert second.status is None and "private address" in (second.error or "")
        assert internal.hits == []
    finally:
        fetcher.close()
        internal.close()


def test_a_hub_advertised_by_a_public_feed_is_never_asked_on_a_private_address(tmp_path: Path, server: FeedServer) -> None:
    internal = FeedServer(host="127.0.0.2")
    hub = internal.url("/hub")
    links = f'<atom:link xmlns:atom="http://www.w3.org/2005/Atom" rel="hub" href="{hub}"/>'
    server.serve("/feed", rss(story_item(1), extra=links))
    url = f"http://feeds-public.example:{server.port}/feed"
    settings = settings_for(tmp_path, [{"name": "pub", "url": url, "websub": "true"}], extra="websub: {public_url: 'http://feeds.test/'}")
    fetcher = Fetcher(resolver=lambda h: ["127.0.0.1"] if h == "feeds-public.example" else [socket.gethostbyname(h)])
    fetcher.classify = lambda a: a != "127.0.0.1" and is_private(a)
    store = open_store(settings.storage, base=tmp_path)
    try:
        poll_due(settings, store, fetcher, now=NOW)
        assert store.states()["pub"].hub == hub
        subscriber = Subscriber(
            settings, lambda: open_store(settings.storage, base=tmp_path), fetcher, clock=lambda: NOW, on_change=lambda s: None
        )
        assert subscriber.subscribe_due(store, now=NOW) == 1
        assert internal.hits == []  # the subscribe POST was refused at connect time
    finally:
        fetcher.close()
        store.close()
        internal.close()


# -- 4. Nothing secret or unsafe leaves the process ----------------------------------------------

UNSAFE_SCHEMES = ("javascript:", "data:", "vbscript:", "file:")


def test_credentials_in_source_urls_never_leave_the_process(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/feed", rss(story_item(1)))
    server.serve("/gone", "bye", status=410)
    server.serve("/broken", "<html>no feed</html>", content_type="text/html")
    secret = "s3cret-t0ken"
    sources = [
        {"name": n, "url": f"http://reader:{secret}@127.0.0.1:{server.port}/{p}"}
        for n, p in (("ok", "feed"), ("gone", "gone"), ("broken", "broken"))
    ]
    port = free_port()
    config = write_config(tmp_path, sources, extra=f"tick: 1s\nserver: {{port: {port}}}")
    polled = run_feeds("poll", "-v", "-c", str(config))
    assert polled.returncode == 1 and secret not in polled.stdout + polled.stderr
    assert server.hits_for("/feed")[0].headers["authorization"].startswith("Basic ")  # the credentials still work
    for path in (tmp_path / "public").iterdir():
        assert secret not in path.read_text(), path
    for args in (("status",), ("status", "--json"), ("clusters", "--json")):
        shown = run_feeds(*args, "-c", str(config))
        assert secret not in shown.stdout + shown.stderr
    process = subprocess.Popen([sys.executable, "-m", "feeds", "run", "-v", "-c", str(config)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: _get(f"http://127.0.0.1:{port}/health") is not None)
        for path in ("/health", "/sources.opml", "/all.atom", "/all.json", "/all/", "/metrics"):
            body = _get(f"http://127.0.0.1:{port}{path}")
            assert body is not None and secret not in body, path
        assert "reader:" not in (_get(f"http://127.0.0.1:{port}/sources.opml") or "")
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert secret not in stderr


def _get(url: str) -> str | None:
    try:
        return requests.get(url, timeout=5).text
    except requests.RequestException:
        return None


def test_one_url_policy_for_every_url_field(tmp_path: Path, server: FeedServer) -> None:
    atom = (
        '<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>A</title><id>urn:a</id>'
        '<link rel="alternate" href="javascript:alert(1)"/><link rel="hub" href="vbscript:msgbox(1)"/><link rel="self" href="data:text/html,x"/>'
        "<updated>2026-11-20T00:00:00Z</updated><entry><title>One</title><id>urn:1</id><updated>2026-11-20T00:00:00Z</updated>"
        '<link href="https://a.example/1"/><link rel="enclosure" href="data:audio/mp3;base64,AAAA" type="audio/mpeg"/>'
        "<author><name>Ann</name><uri>javascript:alert(2)</uri></author><content type=\"html\">&lt;a href='javascript:x'&gt;x&lt;/a&gt;</content></entry></feed>"
    )
    server.serve("/a", atom, content_type="application/atom+xml")
    settings = settings_for(tmp_path, [{"name": "a", "url": server.url("/a")}])
    _, counts, states = poll(settings)
    assert counts == {"a": 1} and states["a"].feed_link is None and states["a"].hub is None
    for path in (tmp_path / "public").glob("all.*"):
        text = path.read_text().lower()
        assert not any(scheme in text for scheme in UNSAFE_SCHEMES if scheme != "file:"), path


def test_text_that_drives_a_terminal_is_never_printed_raw(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/a", rss({**story_item(1), "title": "Csi&#x9b;31m red &#x1b;]0;pwned&#7; title"}, title="Esc&#x9b;2J"))
    server.serve("/b", status=302, headers={"Location": "http://x.example/\x1b[2J"})
    settings = settings_for(tmp_path, [{"name": "a", "url": server.url("/a")}, {"name": "b", "url": server.url("/b")}])
    poll(settings)
    for args in (("status",), ("clusters",), ("clusters", "--json"), ("poll", "--force", "-v")):
        shown = run_feeds(*args, "-c", str(tmp_path / "feeds.yaml"))
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", shown.stdout + shown.stderr), args


def test_fields_are_capped_so_one_entry_cannot_bloat_an_output(tmp_path: Path, server: FeedServer) -> None:
    authors = "".join(f"<dc:creator>{'A' * 8000}{i}</dc:creator>" for i in range(300))
    enclosures = "".join(f'<enclosure url="https://e.example/{"e" * 8000}{i}.mp3" type="audio/mpeg" length="1"/>' for i in range(300))
    categories = "".join(f"<category>{'c' * 8000}{i}</category>" for i in range(300))
    item = f"<item><title>Big</title><link>https://b.example/1</link><guid>big</guid>{authors}{enclosures}{categories}</item>"
    body = rss(extra=item).replace("<rss ", '<rss xmlns:dc="http://purl.org/dc/elements/1.1/" ')
    server.serve("/big", body)
    settings = settings_for(tmp_path, [{"name": "big", "url": server.url("/big")}])
    _, counts, _ = poll(settings)
    assert counts == {"big": 1} and len(body) > 7_000_000
    for path in (tmp_path / "public").glob("all.*"):
        assert path.stat().st_size < 200_000, path


# -- 5. The server holds under hostile clients ---------------------------------------------------


@pytest.fixture
def websub_site(tmp_path: Path, server: FeedServer) -> Iterator[tuple[str, int]]:
    """`feeds run` with a WebSub source whose subscription request is pending."""
    server.serve("/feed", rss(story_item(1)))
    port = free_port()
    config = write_config(
        tmp_path,
        [{"name": "pushy", "url": server.url("/feed"), "websub": "true"}],
        extra=f"tick: 1s\nserver: {{port: {port}, max_connections: 64, header_timeout: 2s}}\nwebsub: {{public_url: 'http://127.0.0.1:{port}/'}}\nfetch: {{max_body_bytes: 100000}}",
    )
    process = subprocess.Popen([sys.executable, "-m", "feeds", "run", "-c", str(config)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    assert wait_for(lambda: _get(f"{base}/health") is not None)
    try:
        yield base, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)


def _raw(port: int, request: bytes, *, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


def test_unauthenticated_pushes_are_refused_before_they_are_read(websub_site: tuple[str, int]) -> None:
    base, _ = websub_site
    port = int(base.rsplit(":", 1)[1])
    started = time.monotonic()
    unknown = _raw(port, b"POST /websub/nobody HTTP/1.1\r\nHost: x\r\nContent-Length: 400000000\r\n\r\n")
    too_big = _raw(port, b"POST /websub/pushy HTTP/1.1\r\nHost: x\r\nContent-Length: 400000000\r\n\r\n")
    assert unknown.startswith(b"HTTP/1.1 404") and too_big.startswith(b"HTTP/1.1 413")
    assert time.monotonic() - started < 5  # answered without waiting for 400 MB
    chunked = requests.post(f"{base}/websub/pushy", data=iter([b"x" * 50_000] * 10), timeout=10)  # no Content-Length
    assert chunked.status_code == 413


def test_forged_or_replayed_verifications_set_no_lease(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/feed", rss(story_item(1)))
    settings = settings_for(
        tmp_path, [{"name": "pushy", "url": server.url("/feed"), "websub": "true"}], extra="websub: {public_url: 'http://feeds.test/'}"
    )
    poll(settings)
    opener = lambda: open_store(settings.storage, base=tmp_path)  # noqa: E731
    store = opener()
    now = [NOW + timedelta(hours=1)]
    subscriber = Subscriber(settings, opener, Fetcher(), clock=lambda: now[0], on_change=lambda s: None)
    topic = store.states()["pushy"].topic
    params = {"hub.mode": "subscribe", "hub.topic": topic or "", "hub.challenge": "c", "hub.lease_seconds": str(10 * 365 * 86400)}
    try:
        assert subscriber.verify("pushy", params)[0] == 404  # we never asked: forged
        store.save_state(replace(store.states()["pushy"], websub_requested=NOW, websub_secret="k" * 64))
        assert subscriber.verify("pushy", params)[0] == 200  # asked an hour ago: a real answer
        assert (store.states()["pushy"].websub_expires or NOW) <= now[0] + timedelta(days=30)  # ten years asked, 30 days kept
        now[0] = NOW + timedelta(days=2)
        assert subscriber.verify("pushy", params)[0] == 404  # the same answer replayed later
        huge = {**params, "hub.lease_seconds": "9" * 5000}
        now[0] = NOW + timedelta(minutes=5)
        assert subscriber.verify("pushy", huge)[0] == 200  # a lease no clock can hold is the one we asked for
    finally:
        store.close()


def test_hostile_cursors_and_host_headers(websub_site: tuple[str, int]) -> None:
    base, _ = websub_site
    port = int(base.rsplit(":", 1)[1])
    for headers, query in (({"Last-Event-ID": "\xb2"}, ""), ({}, "?since=" + "9" * 5000), ({"Last-Event-ID": "-1"}, "")):
        response = requests.get(f"{base}/all/events{query}", headers=headers, stream=True, timeout=5)
        assert response.status_code == 200, (headers, query[:20])
        response.close()
    answer = _raw(port, b"GET /all HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 308") and b"evil.example" not in answer and b"location: all/" in answer.lower()


def test_a_flood_of_idle_connections_neither_exhausts_descriptors_nor_stops_polling(
    websub_site: tuple[str, int], tmp_path: Path, server: FeedServer
) -> None:
    base, pid = websub_site
    port = int(base.rsplit(":", 1)[1])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    atom = tmp_path / "public" / "all.atom"
    server.serve("/feed", rss(story_item(1), story_item(2)))  # a new story for the daemon to find meanwhile
    run_feeds("sources", "reset", "pushy", "-c", str(tmp_path / "feeds.yaml"))
    sockets = []
    try:
        for _ in range(1100):  # more than the usual 1024-descriptor limit
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            sockets.append(sock)
        time.sleep(1)
        assert len(os.listdir(f"/proc/{pid}/fd")) < 64 + 60  # the cap holds: never the flood's size
        assert wait_for(lambda: b"Story 2" in atom.read_bytes(), timeout=20)  # polling and publishing went on
        time.sleep(2.5)  # the header timeout frees the slots the flood still holds
        assert requests.get(f"{base}/health", timeout=5).status_code in (200, 503)
    finally:
        for sock in sockets:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- 6. The store and the files stay single and whole ---------------------------------------------


def test_two_daemons_on_one_store_poll_each_source_once(tmp_path: Path, server: FeedServer) -> None:
    sources = [{"name": f"s{i}", "url": server.serve(f"/s{i}", rss(story_item(i)), delay=0.2), "interval": "1h"} for i in range(6)]
    config = write_config(tmp_path, sources, extra="tick: 1s")
    daemons = [
        subprocess.Popen([sys.executable, "-m", "feeds", "run", "--no-serve", "-c", str(config)], cwd=ROOT, stderr=subprocess.DEVNULL)
        for _ in range(2)
    ]
    try:
        assert wait_for(lambda: all(server.hits_for(f"/s{i}") for i in range(6)))
        time.sleep(4)  # several more ticks of both daemons
    finally:
        for daemon in daemons:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
    assert [len(server.hits_for(f"/s{i}")) for i in range(6)] == [1] * 6


def test_deleted_outputs_come_back_and_a_deleted_store_is_never_silently_replaced(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/feed", rss(story_item(1)))
    port = free_port()
    config = write_config(tmp_path, [{"name": "a", "url": server.url("/feed")}], extra=f"tick: 1s\nserver: {{port: {port}}}")
    process = subprocess.Popen([sys.executable, "-m", "feeds", "run", "-c", str(config)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    public, database = tmp_path / "public", tmp_path / "feeds.db"
    try:
        assert wait_for((public / "all.atom").exists)
        while public.exists():  # the daemon may be writing into it right now
            shutil.rmtree(public, ignore_errors=True)
        assert wait_for(lambda: all((public / f"all.{fmt}").exists() for fmt in ("atom", "rss", "json")), timeout=15)
        assert b"Story 1" in (public / "all.atom").read_bytes()
        database.unlink()
        assert wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 503, timeout=15)
        health = requests.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
        assert "deleted" in (health["error"] or "")
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    cron = run_feeds("poll", "-c", str(config))
    assert cron.returncode == 2 and ".feeds-store" in cron.stderr and not database.exists()


@pytest.mark.parametrize("serve", [True, False])
def test_the_daemon_reloads_its_config_on_sighup_and_on_edits_and_keeps_it_on_a_bad_edit(
    tmp_path: Path, server: FeedServer, serve: bool
) -> None:
    server.serve("/a", rss(story_item(1)))
    server.serve("/b", rss(story_item(2)))
    port = free_port()
    extra = f"tick: 1s\nserver: {{port: {port}}}"
    config = write_config(tmp_path, [{"name": "a", "url": server.url("/a")}], extra=extra)
    atom = tmp_path / "public" / "all.atom"
    args = ["run", "-c", str(config)] + ([] if serve else ["--no-serve"])
    process = subprocess.Popen([sys.executable, "-m", "feeds", *args], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: atom.exists() and b"Story 1" in atom.read_bytes())
        # An edit: a new source, a new output and a site title, without a restart.
        outputs = "outputs:\n  - {name: all, title: All}\n  - {name: fresh, title: Fresh, include: {sources: [b]}}"
        extra = f"{extra}\ntitle: Renamed Desk"
        sources = [{"name": "a", "url": server.url("/a")}, {"name": "b", "url": server.url("/b")}]
        write_config(tmp_path, sources, extra=extra, outputs=outputs)
        assert wait_for(lambda: b"Story 2" in atom.read_bytes())
        if serve:  # the server serves the new output and the new title at once
            assert wait_for(lambda: b"Story 2" in requests.get(f"http://127.0.0.1:{port}/fresh.atom", timeout=2).content)
            assert "Story 2" in requests.get(f"http://127.0.0.1:{port}/fresh/", timeout=2).text
            assert "<h1>Renamed Desk</h1>" in requests.get(f"http://127.0.0.1:{port}/", timeout=2).text
        # A bad edit keeps the running config (and the daemon running).
        good = config.read_text()
        config.write_text(good.replace("sources:\n", "sources:\n  - name: c\n    url: ftp://nope.example/\n", 1))
        time.sleep(3)
        assert process.poll() is None and b"Story 2" in atom.read_bytes()
        config.write_text(good)
        process.send_signal(signal.SIGHUP)  # a reload on request: the daemon goes on
        time.sleep(2)
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0 and "daemon-stopped" in stderr and "Traceback" not in stderr
    assert "config-reloaded" in stderr and "reload-refused" in stderr
    assert f"{config}:" in stderr and "unsupported scheme 'ftp'" in stderr  # the bad line, named


def test_status_says_when_the_running_daemon_has_an_older_config(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/a", rss(story_item(1)))
    server.serve("/b", rss(story_item(2)))
    config = write_config(tmp_path, [{"name": "a", "url": server.url("/a")}], extra="tick: 1h")
    atom = tmp_path / "public" / "all.atom"
    process = subprocess.Popen(
        [sys.executable, "-m", "feeds", "run", "--no-serve", "-c", str(config)], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    try:
        assert wait_for(lambda: atom.exists() and b"Story 1" in atom.read_bytes())
        assert "older config" not in run_feeds("status", "-c", str(config)).stderr
        write_config(tmp_path, [{"name": "a", "url": server.url("/a")}, {"name": "b", "url": server.url("/b")}], extra="tick: 1h")
        assert "older config" in run_feeds("status", "-c", str(config)).stderr  # the next tick is an hour away
        process.send_signal(signal.SIGHUP)  # reloads now, not at the next tick
        assert wait_for(lambda: "older config" not in run_feeds("status", "-c", str(config)).stderr)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0 and "config-reloaded" in stderr, stderr


HOSTILE_YAML = {
    "recursive alias": "sources: &a\n  - name: x\n    url: http://a.example/\n    tags: *a\n",
    "non-scalar key": "sources:\n  - name: x\n    url: http://a.example/\n    ? [a, b]\n    : 1\n",
    "python tag": "sources:\n  - name: x\n    url: !!python/object/apply:os.system ['touch /tmp/feeds-pwned']\n",
    "alias bomb": "a: &a [x,x,x,x,x,x,x,x,x]\n"
    + "".join(f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True))
    + "sources: [{name: x, url: 'http://a.example/'}]\n",
    "deep nesting": "sources: " + "[" * 50_000 + "]" * 50_000 + "\n",
    "control character": 'sources:\n  - name: x\n    url: http://a.example/\n    title: "a\\x1bb"\n',
}


@pytest.mark.parametrize("case", HOSTILE_YAML)
def test_hostile_yaml_is_a_config_error_with_a_line(tmp_path: Path, case: str) -> None:
    path = tmp_path / "feeds.yaml"
    path.write_text(HOSTILE_YAML[case])
    started = time.monotonic()
    result = run_feeds("check", "-c", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert re.search(rf"^{re.escape(str(path))}:\d+: ", result.stderr, re.MULTILINE), result.stderr
    assert time.monotonic() - started < 10 and not Path("/tmp/feeds-pwned").exists()
