"""Retention: old stories go with everything that indexes them, outputs keep what they show,
deleted entries never come back, and a removed source can be purged at once."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import feedparser

from feeds.retention import expired
from tests.conftest import FeedServer, rss, run_feeds, story_item, write_config

NOW = datetime(2026, 11, 25, tzinfo=UTC)


def test_a_cluster_goes_whole_when_every_story_in_it_is_past_its_sources_retention() -> None:
    old, recent = NOW - timedelta(days=100), NOW - timedelta(days=10)
    rows = [
        ("a1", "a", 1, old),  # cluster 1: all old
        ("b1", "b", 1, old),
        ("a2", "a", 2, old),  # cluster 2: one recent copy keeps it
        ("b2", "b", 2, recent),
        ("k1", "keeper", 3, old),  # cluster 3: a source that keeps a year
        ("g1", "gone", 4, old),  # cluster 4: a source no longer configured: the global retention
        ("a5", "a", 5, old),  # cluster 5: still shown by an output
    ]
    cutoffs = {"a": NOW - timedelta(days=90), "b": NOW - timedelta(days=90), "keeper": NOW - timedelta(days=365)}
    ids, clusters, kept = expired(rows, cutoffs, NOW - timedelta(days=90), frozenset({"a5"}))
    assert sorted(ids) == ["a1", "b1", "g1"] and clusters == 2 and kept == 1
    assert expired(rows, cutoffs, None, frozenset())[0] == ["a1", "b1", "a5"]  # no global retention: removed sources stay


def item(n: int, when: datetime, text: str = "") -> dict[str, str]:
    return {**story_item(n, words=text), "link": f"https://news.example/{n}", "pubDate": format_datetime(when)}


def counts(tmp_path: Path) -> dict[str, int]:
    with sqlite3.connect(tmp_path / "feeds.db") as db:
        return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("stories", "guids", "story_bands", "clusters")}


def test_prune_deletes_old_stories_keeps_what_outputs_show_and_never_brings_them_back(tmp_path: Path, server: FeedServer) -> None:
    now = datetime.now(UTC)
    old = [item(n, now - timedelta(days=60 + n)) for n in range(1, 4)]
    new = [item(n, now - timedelta(hours=n)) for n in range(10, 12)]
    server.serve("/feed", rss(*new, *old))
    config = write_config(
        tmp_path,
        [{"name": "town", "url": server.url("/feed")}],
        extra="retention: 30d",
        outputs="outputs:\n  - {name: latest, title: Latest, limit: 2}\n  - {name: deep, title: Deep, limit: 3}\n",
    )
    assert run_feeds("poll", "-c", str(config)).returncode == 0
    before = counts(tmp_path)
    assert before["stories"] == 5
    dry = run_feeds("prune", "--dry-run", "-c", str(config))
    # The `deep` output still shows the newest old story: it stays until the output moves on.
    assert dry.returncode == 0 and "would delete 2 stories in 2 clusters; kept 1" in dry.stdout
    assert counts(tmp_path) == before
    done = run_feeds("prune", "-c", str(config))
    assert done.returncode == 0 and "deleted 2 stories" in done.stdout
    after = counts(tmp_path)
    assert after["stories"] == 3 and after["guids"] == 3 and after["clusters"] < before["clusters"]
    assert after["story_bands"] < before["story_bands"]
    # The feed still carries the deleted entries, now edited: they are not news again.
    edited = [item(n, now - timedelta(days=60 + n), text=f"An edited text of old story {n} with other words entirely.") for n in (1, 2, 3)]
    server.serve("/feed", rss(*new, *edited))
    assert run_feeds("poll", "--force", "-c", str(config)).returncode == 0
    assert counts(tmp_path)["stories"] == 3
    deep = feedparser.parse((tmp_path / "public" / "deep.atom").read_bytes())
    assert sorted(e.title for e in deep.entries) == ["Story 1", "Story 10", "Story 11"]


def test_prune_without_retention_says_so(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/feed", rss(item(1, datetime.now(UTC))))
    config = write_config(tmp_path, [{"name": "town", "url": server.url("/feed")}])
    result = run_feeds("prune", "-c", str(config))
    assert result.returncode == 2 and "no retention is set" in result.stderr


def test_remove_purge_deletes_a_sources_stories_and_a_shared_story_keeps_its_other_outlet(tmp_path: Path, server: FeedServer) -> None:
    now = datetime.now(UTC)
    shared = "The Ashford Bay city council voted 7-2 on Tuesday to build a $48 million seawall along the northern waterfront."
    server.serve("/a", rss(item(1, now - timedelta(hours=3), shared), item(2, now - timedelta(hours=2))))
    copy = item(1, now - timedelta(hours=1), shared) | {"link": "https://b.example/1", "guid": "b-1"}
    server.serve("/b", rss(copy))
    config = write_config(tmp_path, [{"name": "a", "url": server.url("/a")}, {"name": "b", "url": server.url("/b")}])
    run_feeds("poll", "-c", str(config))
    clusters = json.loads(run_feeds("clusters", "--json", "-c", str(config)).stdout)
    assert sorted(len(c["stories"]) for c in clusters) == [1, 2]
    result = run_feeds("sources", "remove", "a", "--purge", "-c", str(config))
    assert result.returncode == 0 and "deleted their 2 stories" in result.stdout
    clusters = json.loads(run_feeds("clusters", "--json", "-c", str(config)).stdout)
    assert [[s["source"] for s in c["stories"]] for c in clusters] == [["b"]]  # b's copy now leads its story
    entries = feedparser.parse((tmp_path / "public" / "all.atom").read_bytes()).entries
    assert [e.link for e in entries] == ["https://b.example/1"]
