"""End to end on SQLite: poll real HTTP sources, store, deduplicate exactly, publish, read back."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import feedparser
import pytest

from feeds.fetch import Fetcher
from feeds.models import Settings
from feeds.poll import poll_due
from feeds.publish import publish_all
from feeds.store import open_store
from feeds.store.sqlite import MIGRATIONS, SQLiteStore
from tests.conftest import NOW, FeedServer, rss, settings_for, story_item


def poll(settings: Settings, *, now=NOW, force: bool = True):  # type: ignore[no-untyped-def]
    store = open_store(settings.storage, base=settings.path.parent)
    fetcher = Fetcher(settings.fetch)
    try:
        outcomes = {o.source: o for o in poll_due(settings, store, fetcher, now=now, force=force)}
        publish_all(settings, store, now=now)
        return outcomes, store.story_counts(), store.states()
    finally:
        fetcher.close()
        store.close()


def db_rows(settings: Settings, query: str) -> list[tuple]:  # type: ignore[type-arg]
    with sqlite3.connect(settings.path.parent / "feeds.db") as db:
        return db.execute(query).fetchall()


def test_conditional_get_and_idempotent_polls(tmp_path: Path, server: FeedServer) -> None:
    url = server.serve("/feed", rss(story_item(1), story_item(2)), etag='"v1"')
    settings = settings_for(tmp_path, [{"name": "a", "url": url}])
    outcomes, counts, _ = poll(settings)
    assert outcomes["a"].status == "ok" and outcomes["a"].new == 2 and counts == {"a": 2}
    atom = (tmp_path / "public" / "all.atom").read_bytes()
    before = db_rows(settings, "SELECT * FROM stories ORDER BY id")
    outcomes, counts, _ = poll(settings, now=NOW + timedelta(hours=1))
    assert outcomes["a"].status == "not_modified" and counts == {"a": 2}
    assert server.hits_for("/feed")[1].headers["if-none-match"] == '"v1"'
    assert db_rows(settings, "SELECT * FROM stories ORDER BY id") == before
    assert (tmp_path / "public" / "all.atom").read_bytes() == atom
    # a server without validators sending the same bytes: fetched, not parsed, nothing new
    server.serve("/feed", rss(story_item(1), story_item(2)))
    outcomes, counts, _ = poll(settings, now=NOW + timedelta(hours=2))
    outcomes, counts, _ = poll(settings, now=NOW + timedelta(hours=3))
    assert outcomes["a"].status == "unchanged" and counts == {"a": 2}


def test_edited_entry_is_updated_in_place(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/feed", rss(story_item(1)))
    settings = settings_for(tmp_path, [{"name": "a", "url": server.url("/feed")}])
    poll(settings)
    edited = {**story_item(1), "title": "Story 1 (corrected)"}
    server.serve("/feed", rss(edited))
    outcomes, counts, _ = poll(settings, now=NOW + timedelta(hours=1))
    assert outcomes["a"].updated == 1 and outcomes["a"].new == 0 and counts == {"a": 1}
    parsed = feedparser.parse((tmp_path / "public" / "all.atom").read_bytes())
    assert [e.title for e in parsed.entries] == ["Story 1 (corrected)"]
    assert parsed.entries[0].updated.startswith("2026-11-25T13:00")  # the edit moved its stamp


def test_same_canonical_url_across_sources_is_one_story(tmp_path: Path, server: FeedServer) -> None:
    original = story_item(7)
    copy = {
        **original,
        "guid": "copy-7",
        "title": "Totally different headline",
        "description": "<p>Short teaser.</p>",
        "link": "http://WWW.news.example/story/7/?utm_source=rss&fbclid=abc#comments",
    }
    server.serve("/a", rss(original, title="Outlet A"))
    server.serve("/b", rss(copy, story_item(8), title="Outlet B"))
    settings = settings_for(tmp_path, [{"name": "a", "url": server.url("/a")}, {"name": "b", "url": server.url("/b")}])
    poll(settings)
    parsed = feedparser.parse((tmp_path / "public" / "all.atom").read_bytes())
    assert not parsed.bozo
    assert sorted(e.title for e in parsed.entries) == ["Story 7", "Story 8"]
    merged = next(e for e in parsed.entries if e.title == "Story 7")
    assert [lk.rel for lk in merged.links].count("via") == 1


def test_bad_sources_are_recorded_and_others_unaffected(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/good", rss(story_item(1)))
    server.serve(
        "/html",
        "<!DOCTYPE html><html><head><link rel=alternate type=application/rss+xml href=/rss></head><body>hi</body></html>",
        content_type="text/html",
    )
    server.serve("/e500", "oops", status=500)
    server.serve("/malformed", "<rss><channel><title>x</title><item><title>broken", content_type="application/xml")
    server.serve("/big", b"<rss>" + b"x" * 300_000)
    server.serve("/slow", rss(story_item(2)), delay=3)
    sources = [{"name": n, "url": server.url(f"/{n}")} for n in ("good", "html", "e500", "malformed", "big", "slow")]
    sources += [{"name": "missing", "url": server.url("/missing")}]
    settings = settings_for(tmp_path, sources, extra="fetch: {max_wire_bytes: 100000, read_timeout: 1, connect_timeout: 1}")
    outcomes, counts, states = poll(settings)
    assert outcomes["good"].status == "ok" and counts["good"] == 1
    expected = {
        "html": "not a feed: got an HTML page; the page advertises a feed at " + server.url("/rss"),
        "e500": "HTTP 500",
        "big": "100000-byte cap",
        "slow": "timed out",
        "missing": "HTTP 404",
    }
    for name, message in expected.items():
        assert outcomes[name].status == "failed", name
        assert message in (states[name].error or ""), (name, states[name].error)
        assert states[name].status == "failing" and states[name].failures == 1
    # malformed XML: a best-effort parse, with the problem recorded as a warning
    assert outcomes["malformed"].status == "ok" and "malformed feed" in (states["malformed"].warning or "")
    parsed = feedparser.parse((tmp_path / "public" / "all.atom").read_bytes())
    assert not parsed.bozo and "Story 1" in [e.title for e in parsed.entries]


def test_store_survives_reopen_and_has_schema_version(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/feed", rss(story_item(1)))
    settings = settings_for(tmp_path, [{"name": "a", "url": server.url("/feed")}])
    poll(settings)
    store = SQLiteStore(tmp_path / "feeds.db")
    assert store.schema_version == len(MIGRATIONS)
    assert store.states()["a"].status == "ok"
    assert db_rows(settings, "PRAGMA journal_mode") == [("wal",)]
    store.close()


def test_due_sources_are_not_polled_early(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/feed", rss(story_item(1)))
    settings = settings_for(tmp_path, [{"name": "a", "url": server.url("/feed"), "interval": "1h"}])
    poll(settings, force=False)
    outcomes, _, states = poll(settings, now=NOW + timedelta(minutes=10), force=False)
    assert outcomes == {} and len(server.hits_for("/feed")) == 1
    outcomes, _, _ = poll(settings, now=states["a"].next_poll, force=False)  # type: ignore[arg-type]
    assert "a" in outcomes and len(server.hits_for("/feed")) == 2


def test_a_locked_store_fails_cleanly_with_a_message(tmp_path: Path, server: FeedServer) -> None:
    from feeds.errors import StoreError

    server.serve("/feed", rss(story_item(1)))
    settings = settings_for(tmp_path, [{"name": "a", "url": server.url("/feed")}])
    poll(settings)
    holder = sqlite3.connect(tmp_path / "feeds.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process is writing and does not let go
    store = SQLiteStore(tmp_path / "feeds.db", busy_timeout=0.3)
    try:
        with pytest.raises(StoreError, match=r"feeds\.db: database is busy \(another feeds process is writing\)"):
            store.save_state(store.states()["a"])
    finally:
        store.close()
        holder.execute("ROLLBACK")
        holder.close()
    with sqlite3.connect(tmp_path / "feeds.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_shutdown_abandons_sources_not_yet_fetched(tmp_path: Path, server: FeedServer) -> None:
    import threading

    sources = [{"name": f"s{i}", "url": server.serve(f"/s{i}", rss(story_item(i)), delay=0.5)} for i in range(6)]
    settings = settings_for(tmp_path, sources, extra="fetch: {workers: 1, per_host: 1}")
    store = open_store(settings.storage, base=tmp_path)
    fetcher = Fetcher(settings.fetch)
    stop = threading.Event()
    threading.Timer(0.7, stop.set).start()
    try:
        outcomes = poll_due(settings, store, fetcher, now=NOW, stop=stop)
        assert len(outcomes) == 1  # the first source finished before the stop, and was stored
        assert len(server.hits) <= 3  # in flight when the stop came (and the next one started meanwhile); the rest never ran
        states = store.states()
        polled = {name for name, state in states.items() if state.status != "new"}
        assert polled == {outcomes[0].source}  # the rest were never polled: due again next run
        assert all(state.next_poll is None for name, state in states.items() if name not in polled)
    finally:
        fetcher.close()
        store.close()


def test_rebased_sources_are_dated_from_the_first_poll_and_keep_that_shift(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/a", rss(story_item(10)))  # published Fri, 20 Nov 2026 10:00
    server.serve("/b", rss(story_item(11)))  # 11:00
    anchor = "2026-11-20T12:00:00Z"
    settings = settings_for(tmp_path, [{"name": "a", "url": server.url("/a"), "rebase": anchor}])
    poll(settings, now=NOW)
    later = settings_for(
        tmp_path, [{"name": "a", "url": server.url("/a"), "rebase": anchor}, {"name": "b", "url": server.url("/b"), "rebase": anchor}]
    )
    poll(later, now=NOW + timedelta(hours=5))  # b's first poll: the shift is still the first poll's
    published = {row[0]: row[1] for row in db_rows(later, "SELECT source, published FROM stories")}
    assert datetime.fromtimestamp(published["a"], UTC) == NOW - timedelta(hours=2)  # 5 days on, as the first poll
    assert datetime.fromtimestamp(published["b"], UTC) == NOW - timedelta(hours=1)
