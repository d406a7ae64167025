"""RFC 5005 archives: a reader pages back from the live feed through every entry ever published;
archive pages never change once written and are served with a long cache."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import feedparser
import requests
from lxml import etree

from feeds.models import Settings
from tests.conftest import NOW, FeedServer, rss, settings_for, story_item
from tests.test_poll import poll
from tests.test_server import RunningServer

HISTORY = "http://purl.org/syndication/history/1.0"


def page_back(settings: Settings, name: str) -> list[list[str]]:
    """Follow prev-archive links from the live Atom feed; the titles of every document read."""
    documents, path = [], settings.publish_dir / f"{name}.atom"
    while True:
        data = path.read_bytes()
        parsed = feedparser.parse(data)
        documents.append(sorted(e.title for e in parsed.entries))
        prev = [link.href for link in parsed.feed.links if link.rel == "prev-archive"]
        if not prev:
            return documents
        assert prev[0].startswith(settings.base_url)
        path = settings.publish_dir / prev[0][len(settings.base_url) :]


def test_archives_hold_every_entry_once_and_never_change(tmp_path: Path, server: FeedServer) -> None:
    items = [story_item(n, day=10 + n) for n in range(1, 8)]  # 7 stories, one a day
    server.serve("/a", rss(*items, title="A"))
    settings = settings_for(
        tmp_path,
        [{"name": "a", "url": server.url("/a")}],
        outputs="outputs:\n  - {name: all, title: All, limit: 2, archive: true}\n  - {name: plain, title: Plain, limit: 2}\n",
    )
    poll(settings)
    public = settings.publish_dir
    # live: the 2 newest, and story 5, which left the live window but does not fill a page of 2
    # yet; archives: stories 1-2 and 3-4.
    assert page_back(settings, "all") == [["Story 5", "Story 6", "Story 7"], ["Story 3", "Story 4"], ["Story 1", "Story 2"]]
    assert len(feedparser.parse((public / "plain.atom").read_bytes()).entries) == 2
    first = (public / "all-archive-1.atom").read_bytes()
    parsed = feedparser.parse(first)
    rels = {link.rel: link.href for link in parsed.feed.links}
    assert rels["current"] == f"{settings.base_url}all.atom" and rels["self"] == f"{settings.base_url}all-archive-1.atom"
    assert "prev-archive" not in rels
    assert etree.fromstring(first).find(f"{{{HISTORY}}}archive") is not None  # fh:archive: an archive document
    assert etree.fromstring((public / "all.atom").read_bytes()).find(f"{{{HISTORY}}}archive") is None
    assert not list(public.glob("plain-archive-*"))
    # Two more stories: the live feed moves on, one more page is written, the old ones stay byte-identical.
    server.serve("/a", rss(*items, story_item(8, day=18), story_item(9, day=19), title="A"))
    poll(settings, now=NOW + timedelta(days=1))
    assert page_back(settings, "all") == [
        ["Story 7", "Story 8", "Story 9"],
        ["Story 5", "Story 6"],
        ["Story 3", "Story 4"],
        ["Story 1", "Story 2"],
    ]
    assert (public / "all-archive-1.atom").read_bytes() == first
    # A story polled late, dated before everything archived, still goes into a page (the next one).
    server.serve("/a", rss(*items, story_item(8, day=18), story_item(9, day=19), story_item(20, day=2), story_item(21, day=3), title="A"))
    poll(settings, now=NOW + timedelta(days=2))
    titles = sorted(t for doc in page_back(settings, "all") for t in doc)
    assert titles == sorted(f"Story {n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 20, 21))
    running = RunningServer(settings)
    try:
        response = requests.get(running.url("/all-archive-1.atom"), timeout=5)
        assert response.status_code == 200 and response.content == first
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert (
            requests.get(running.url("/all-archive-1.atom"), headers={"If-None-Match": response.headers["ETag"]}, timeout=5).status_code
            == 304
        )
        assert "immutable" not in requests.get(running.url("/all.atom"), timeout=5).headers["Cache-Control"]
        assert requests.get(running.url("/plain-archive-1.atom"), timeout=5).status_code == 404
        assert requests.get(running.url("/all-archive-1.rss"), timeout=5).status_code == 404
    finally:
        running.stop()
