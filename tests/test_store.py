"""The SQLite store: numbered migrations keep the user's data; corrupt or newer files are refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from feeds.errors import StoreError
from feeds.store.sqlite import MIGRATIONS, SQLiteStore


def version_1_database(path: Path) -> None:
    """A database as feeds 0.1 schema version 1 left it, with two clusters of stories."""
    db = sqlite3.connect(path, isolation_level=None)
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute("PRAGMA user_version=1")
    rows = [
        # (seq, id, source, published, cluster, exact cluster)
        (1, "old", "a", 1_000.0, 1, 2),
        (2, "new", "a", 5_000.0, 3, 4),
        (3, "new-copy", "b", 4_000.0, 3, 5),
    ]
    for cluster_id, kind in ((1, "near"), (2, "exact"), (3, "near"), (4, "exact"), (5, "exact")):
        db.execute("INSERT INTO clusters VALUES (?, ?, ?, ?, 0)", (cluster_id, kind, f"urn:feeds:{cluster_id}", "x"))
    for seq, sid, source, published, near, exact in rows:
        db.execute(
            "INSERT INTO stories (seq, id, source, guid, title, published, first_seen, content_hash, cluster_id, exact_cluster_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 'h', ?, ?)",
            (seq, sid, source, sid, f"title {sid}", published, published, near, exact),
        )
        db.execute("INSERT INTO guids VALUES (?, ?, ?)", (source, sid, sid))
    db.execute("UPDATE clusters SET lead = 'old' WHERE id IN (1, 2)")
    db.execute("UPDATE clusters SET lead = 'new' WHERE id IN (3, 4)")
    db.execute("UPDATE clusters SET lead = 'new-copy' WHERE id = 5")
    db.close()


def test_version_1_database_migrates_without_losing_anything(tmp_path: Path) -> None:
    path = tmp_path / "feeds.db"
    version_1_database(path)
    store = SQLiteStore(path)
    assert store.schema_version == len(MIGRATIONS) == 8
    near = store.clusters(["a", "b"], exact=False, limit=10)
    assert [c.atom_id for c in near] == ["urn:feeds:3", "urn:feeds:1"]  # newest first reported first
    assert [s.id for s in near[0].members] == ["new", "new-copy"]
    exact = store.clusters(["a", "b"], exact=True, limit=10)
    assert [c.atom_id for c in exact] == ["urn:feeds:4", "urn:feeds:5", "urn:feeds:2"]
    assert store.story_counts() == {"a": 2, "b": 1}
    only_b = store.clusters(["b"], exact=False, limit=10)
    assert [(c.atom_id, [s.id for s in c.members]) for c in only_b] == [("urn:feeds:3", ["new-copy"])]
    # Stories stored before event facts existed have none and no links: events of them are their clusters.
    assert store.event_links(["old", "new", "new-copy"]) == []
    assert store._db.execute("SELECT COUNT(*) FROM stories WHERE facts IS NOT NULL").fetchone()[0] == 0
    store.close()
    assert SQLiteStore(path).schema_version == 8  # reopening runs nothing twice


def test_newer_and_corrupt_databases_are_refused_with_the_path(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    sqlite3.connect(newer).execute("PRAGMA user_version=99").connection.close()
    with pytest.raises(StoreError, match=r"newer\.db: schema version 99 is newer than this feeds"):
        SQLiteStore(newer)
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"corrupt\.db: cannot open the database"):
        SQLiteStore(corrupt)


def test_band_index_is_pruned_to_the_window_at_most_hourly(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from feeds.models import Story
    from feeds.poll import prune
    from tests.conftest import settings_for
    from tests.test_dedupe import store_batch

    store = SQLiteStore(tmp_path / "feeds.db")
    settings = settings_for(tmp_path, [{"name": "a", "url": "https://a.example/feed"}])
    now = datetime(2026, 11, 25, tzinfo=UTC)
    text = "<p>" + " ".join(f"word{i}" for i in range(40)) + "</p>"
    for day in (10, 1):  # one story first seen 10 days ago, one yesterday
        story = Story(
            source="a",
            guid=f"g{day}",
            id=f"s{day}",
            title="t",
            link=None,
            canonical_url=None,
            first_seen=now - timedelta(days=day),
            summary_html=text.replace("word0", f"day{day}"),
        )
        store_batch(store, story)
    bands = "SELECT COUNT(*) FROM story_bands"
    assert store._db.execute(bands).fetchone()[0] == 128
    prune(settings, store, now=now)  # the old story's rows go
    assert store._db.execute(bands).fetchone()[0] == 64
    store._db.execute("UPDATE story_bands SET first_seen = ?", ((now - timedelta(days=5)).timestamp(),))
    prune(settings, store, now=now + timedelta(minutes=30))  # within the hour: skipped
    assert store._db.execute(bands).fetchone()[0] == 64
    prune(settings, store, now=now + timedelta(hours=1))
    assert store._db.execute(bands).fetchone()[0] == 0
    assert store.story_counts() == {"a": 2}  # stories themselves are never pruned
    store.close()


def test_version_2_source_states_migrate_into_the_due_query(tmp_path: Path) -> None:
    from dataclasses import replace
    from datetime import UTC, datetime, timedelta

    from feeds.models import SourceState
    from feeds.store import state_to_json

    path = tmp_path / "feeds.db"
    db = sqlite3.connect(path, isolation_level=None)
    for migration in MIGRATIONS[:2]:
        for statement in migration.split(";"):
            if statement.strip():
                db.execute(statement)
    db.execute("PRAGMA user_version=2")
    now = datetime(2026, 11, 25, 12, tzinfo=UTC)
    base = SourceState(name="x", url="http://x.example/", configured_url="http://x.example/", status="ok")
    states = [
        replace(base, name="due", next_poll=now - timedelta(minutes=1)),
        replace(base, name="later", next_poll=now + timedelta(hours=1)),
        replace(base, name="throttled", status="failing", next_poll=now - timedelta(hours=1), retry_after=now + timedelta(hours=2)),
        replace(base, name="gone", status="gone"),
        replace(base, name="never", status="new"),
    ]
    for state in states:  # as version 2 wrote them: the state blob, status and next_poll only
        next_poll = state.next_poll.timestamp() if state.next_poll else None
        db.execute("INSERT INTO sources VALUES (?, ?, ?, ?)", (state.name, state.status, next_poll, state_to_json(state)))
    db.close()
    store = SQLiteStore(path)
    assert store.schema_version == len(MIGRATIONS)  # 3 moved the due fields into columns; 4 added leases
    assert sorted(s.name for s in store.due(now)) == ["due", "never"]
    assert sorted(s.name for s in store.due(now, force=True)) == ["due", "later", "never"]  # never gone, never throttled
    later = {s.name: s for s in store.due(now + timedelta(hours=3))}
    assert later["throttled"].retry_after == now + timedelta(hours=2)  # the blob is intact
    assert store.configured_urls()["due"] == "http://x.example/"
    store.close()
