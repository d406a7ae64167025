"""The HTTP server over real sockets: outputs with validators, pages, live updates, OPML, health,
metrics; and real readers subscribing to what it serves."""

from __future__ import annotations

import gzip
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import feedparser
import pytest
import requests
from lxml import etree
from reader import make_reader

from feeds.metrics import OUTPUT_RESPONSES, StoreCollector, exposition
from feeds.models import Settings
from feeds.scheduler import utc_now
from feeds.server import create_app, make_server
from feeds.status import source_statuses
from feeds.store import open_store
from tests.conftest import NOW, FeedServer, rss, settings_for, story_item
from tests.test_poll import poll


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RunningServer:
    """The app served by uvicorn in a thread, on a free port."""

    def __init__(self, settings: Settings, *, healthy: bool = True) -> None:
        self.settings = settings
        self.healthy = healthy

        def scoped_store():  # type: ignore[no-untyped-def]
            return open_store(settings.storage, base=settings.path.parent)

        def statuses():  # type: ignore[no-untyped-def]
            store = scoped_store()
            try:
                return source_statuses(settings, store, now=utc_now())
            finally:
                store.close()

        app = create_app(
            settings,
            health=lambda: (self.healthy, {"scheduler": "running" if self.healthy else "stalled"}),
            metrics=lambda: exposition(StoreCollector(scoped_store, utc_now)),
            statuses=statuses,
        )
        self.port = free_port()
        self.server = make_server(app, host="127.0.0.1", port=self.port)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def site(tmp_path: Path, server: FeedServer) -> Iterator[RunningServer]:
    hostile = {
        "title": "&lt;script&gt;alert('title')&lt;/script&gt;Evil &amp;amp; co",
        "link": "javascript:alert(1)",
        "guid": "evil",
        "description": '<![CDATA[<p onclick="alert(1)">Body<script>alert(2)</script><img src=x onerror="alert(3)"><a href="javascript:alert(4)">x</a></p>]]>',
        "pubDate": "Fri, 20 Nov 2026 05:00:00 GMT",
    }
    server.serve("/a", rss(story_item(1), story_item(2), hostile, title="Outlet A"))
    settings = settings_for(tmp_path, [{"name": "a", "url": server.url("/a")}])
    poll(settings)
    running = RunningServer(settings)
    yield running
    running.stop()


def test_outputs_with_validators_gzip_head_and_304(site: RunningServer) -> None:
    first = requests.get(site.url("/all.atom"), headers={"Accept-Encoding": "identity"}, timeout=5)
    assert first.status_code == 200
    assert first.headers["Content-Type"] == "application/atom+xml; charset=utf-8"
    assert first.headers["ETag"].startswith('"') and "max-age=300" in first.headers["Cache-Control"]
    assert first.content == (site.settings.publish_dir / "all.atom").read_bytes()
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    assert requests.get(site.url("/all.atom"), headers={"If-None-Match": etag}, timeout=5).status_code == 304
    assert requests.get(site.url("/all.atom"), headers={"If-Modified-Since": modified}, timeout=5).status_code == 304
    # If-None-Match takes precedence over If-Modified-Since
    assert (
        requests.get(site.url("/all.atom"), headers={"If-None-Match": '"other"', "If-Modified-Since": modified}, timeout=5).status_code
        == 200
    )
    raw = requests.get(site.url("/all.atom"), headers={"Accept-Encoding": "gzip"}, stream=True, timeout=5)
    assert raw.headers["Content-Encoding"] == "gzip" and gzip.decompress(raw.raw.read()) == first.content
    assert requests.get(site.url("/all.atom"), headers={"If-None-Match": raw.headers["ETag"]}, timeout=5).status_code == 304
    head = requests.head(site.url("/all.atom"), timeout=5)
    assert head.status_code == 200 and head.content == b"" and head.headers["ETag"]
    for fmt, media in (("rss", "application/rss+xml"), ("json", "application/feed+json")):
        assert requests.get(site.url(f"/all.{fmt}"), timeout=5).headers["Content-Type"] == f"{media}; charset=utf-8"


def test_nothing_outside_the_publish_directory(site: RunningServer, tmp_path: Path) -> None:
    (tmp_path / "secret.atom").write_text("secret")
    for path in ("/nope.atom", "/secret.atom", "/..%2fsecret.atom", "/%2e%2e/secret.atom", "/all.exe", "/feeds.db", "/feeds.yaml"):
        response = requests.get(site.url(path), timeout=5)
        assert response.status_code == 404, path
        assert b"secret" not in response.content
    atom = site.settings.publish_dir / "all.atom"
    atom.unlink()
    os.symlink(tmp_path / "secret.atom", atom)
    assert requests.get(site.url("/all.atom"), timeout=5).status_code == 404


def test_index_page_with_autodiscovery(site: RunningServer) -> None:
    page = requests.get(site.url("/"), timeout=5)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert '<link rel="alternate" type="application/atom+xml" title="All stories (Atom)" href="all.atom">' in page.text
    assert "3 entries" in page.text and 'href="all/"' in page.text  # relative: works under any path prefix
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]


def test_river_page_escapes_everything_from_feeds(site: RunningServer) -> None:
    page = requests.get(site.url("/all/"), timeout=5)
    assert page.status_code == 200
    text = page.text
    assert "<script>alert" not in text and "onclick" not in text and "onerror" not in text and "javascript:" not in text
    assert "<h2>alert(&#x27;title&#x27;) Evil &amp; co</h2>" in text  # plain text, escaped, no link to javascript:
    assert text.count('<article class="story"') == 3
    assert '<script src="../static/river.js" defer></script>' in text and text.count("<script") == 1
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert requests.get(site.url("/static/river.js"), timeout=5).status_code == 200
    assert requests.get(site.url("/static/../server.py"), timeout=5).status_code == 404


def read_events(url: str, *, headers: dict[str, str] | None = None, count: int, timeout: float = 15) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    with requests.get(url, headers=headers or {}, stream=True, timeout=timeout) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        current: dict[str, Any] = {}
        for line in response.iter_lines(decode_unicode=True):
            if line == "":
                if "data" in current:
                    events.append(current)
                    if len(events) >= count:
                        break
                current = {}
            elif ":" in line and not line.startswith(":"):
                key, _, value = line.partition(":")
                current[key] = value.strip()
    return events


def test_live_updates_resume_from_last_event_id(site: RunningServer, server: FeedServer) -> None:
    document = json.loads((site.settings.publish_dir / "all.json").read_text())
    seqs = sorted(item["_feeds"]["seq"] for item in document["items"])
    replay = read_events(site.url("/all/events"), headers={"Last-Event-ID": str(seqs[0])}, count=2)
    assert [int(e["id"]) for e in replay] == seqs[1:]
    assert all(e["event"] == "story" for e in replay)
    received: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: received.extend(read_events(site.url(f"/all/events?since={seqs[-1]}"), count=1)))
    reader.start()
    time.sleep(1.0)
    server.serve("/a", rss(story_item(1), story_item(2), story_item(3), title="Outlet A"))
    poll(site.settings, now=NOW + timedelta(hours=1))
    reader.join(timeout=20)
    assert len(received) == 1 and int(received[0]["id"]) > seqs[-1]
    assert "Story 3" in json.loads(received[0]["data"])["html"]


def test_opml_health_and_metrics(site: RunningServer) -> None:
    opml = requests.get(site.url("/sources.opml"), timeout=5)
    assert opml.status_code == 200
    root = etree.fromstring(opml.content)  # well-formed XML, as any OPML importer needs
    assert root.tag == "opml" and root.get("version") == "2.0"
    outlines = root.findall("body/outline")
    assert [(o.get("type"), o.get("text"), o.get("xmlUrl")) for o in outlines] == [("rss", "Outlet A", site.settings.sources[0].url)]
    health = requests.get(site.url("/health"), timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    site.healthy = False
    assert requests.get(site.url("/health"), timeout=5).status_code == 503
    metrics = requests.get(site.url("/metrics"), timeout=5).text
    for name in (
        "feeds_polls_total",
        "feeds_fetch_seconds_bucket",
        "feeds_fetch_bytes_total",
        "feeds_publishes_total",
        "feeds_publish_seconds_count",
        'feeds_stories{source="a"} 3.0',
        "feeds_clusters 3.0",
        "feeds_sources_failing 0.0",
        "feeds_last_success_age_seconds",
    ):
        assert name in metrics, name


def test_real_readers_subscribe_and_get_304(site: RunningServer, tmp_path: Path) -> None:
    parsed = feedparser.parse(requests.get(site.url("/all.atom"), timeout=5).content)
    assert not parsed.bozo and len(parsed.entries) == 3
    subscriber = make_reader(str(tmp_path / "reader.sqlite"))
    subscriber.add_feed(site.url("/all.atom"))
    subscriber.update_feeds()
    assert len(list(subscriber.get_entries())) == 3
    before = OUTPUT_RESPONSES.labels(status="304")._value.get()
    subscriber.update_feed(site.url("/all.atom"))  # reader's second request is conditional: we answer 304
    assert OUTPUT_RESPONSES.labels(status="304")._value.get() == before + 1
    subscriber.close()
    etag = requests.get(site.url("/all.rss"), timeout=5).headers["ETag"]
    again = feedparser.parse(site.url("/all.rss"), etag=etag)  # feedparser as a polling reader
    assert again.status == 304
