"""The SQLite store: WAL mode, numbered migrations on open, one IMMEDIATE transaction per poll.

Several processes may share one SQLite file (a cron `feeds poll` beside `feeds run`): writers are
serialized by SQLite's lock and wait up to `BUSY_TIMEOUT` seconds, then fail with a clear message.
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
import threading
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from feeds.dedupe import SCHEME_VERSION, Candidate, Decision, Fingerprint, LeadInfo
from feeds.errors import StoreError
from feeds.models import Cluster, SourceState, Story
from feeds.normalize import stable_hash
from feeds.store import (
    KnownStory,
    StoredStory,
    enclosures_from_json,
    enclosures_to_json,
    from_epoch,
    people_from_json,
    people_to_json,
    state_from_json,
    state_to_json,
    to_epoch,
)

BUSY_TIMEOUT = 30.0
PRUNE_EVERY = 3600.0  # seconds of dedupe-window movement between two prunes of the band index

MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE sources (
        name TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        next_poll REAL,
        state TEXT NOT NULL
    );
    CREATE TABLE clusters (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('near', 'exact')),
        atom_id TEXT NOT NULL UNIQUE,
        lead TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE stories (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        source TEXT NOT NULL,
        guid TEXT NOT NULL,
        title TEXT NOT NULL,
        link TEXT,
        canonical_url TEXT,
        summary_html TEXT,
        content_html TEXT,
        authors TEXT NOT NULL DEFAULT '[]',
        categories TEXT NOT NULL DEFAULT '[]',
        enclosures TEXT NOT NULL DEFAULT '[]',
        published REAL,
        updated REAL,
        first_seen REAL NOT NULL,
        content_hash TEXT NOT NULL,
        cluster_id INTEGER NOT NULL REFERENCES clusters(id),
        exact_cluster_id INTEGER NOT NULL REFERENCES clusters(id),
        words INTEGER NOT NULL DEFAULT 0,
        shingles BLOB,
        decision TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX stories_cluster ON stories(cluster_id);
    CREATE INDEX stories_exact_cluster ON stories(exact_cluster_id);
    CREATE INDEX stories_source_time ON stories(source, published);
    CREATE TABLE guids (
        source TEXT NOT NULL,
        guid TEXT NOT NULL,
        story_id TEXT NOT NULL REFERENCES stories(id),
        PRIMARY KEY (source, guid)
    );
    CREATE TABLE story_keys (
        key TEXT NOT NULL,
        story_id TEXT NOT NULL REFERENCES stories(id),
        PRIMARY KEY (key, story_id)
    ) WITHOUT ROWID;
    CREATE INDEX story_keys_story ON story_keys(story_id);
    CREATE TABLE story_bands (
        band INTEGER NOT NULL,
        first_seen REAL NOT NULL,
        seq INTEGER NOT NULL REFERENCES stories(seq),
        PRIMARY KEY (band, first_seen, seq)
    ) WITHOUT ROWID;
    CREATE INDEX story_bands_seq ON story_bands(seq);
    CREATE TABLE outputs (name TEXT PRIMARY KEY, digest TEXT NOT NULL, published REAL NOT NULL);
    """,
    # 2: each cluster keeps when it was first reported, so publishing walks the newest clusters
    # through an index and stops at the output's limit instead of grouping every stored story
    """
    ALTER TABLE clusters ADD COLUMN first_time REAL;
    DROP INDEX stories_cluster;
    DROP INDEX stories_exact_cluster;
    CREATE INDEX stories_cluster_source ON stories(cluster_id, source);
    CREATE INDEX stories_exact_cluster_source ON stories(exact_cluster_id, source);
    UPDATE clusters SET first_time = CASE kind
        WHEN 'near' THEN (SELECT MIN(COALESCE(published, first_seen)) FROM stories WHERE cluster_id = clusters.id)
        ELSE (SELECT MIN(COALESCE(published, first_seen)) FROM stories WHERE exact_cluster_id = clusters.id) END;
    CREATE INDEX clusters_kind_time ON clusters(kind, first_time);
    """,
    # 3: due selection is a query: what it needs sits in indexed columns beside the state blob
    """
    ALTER TABLE sources ADD COLUMN retry_after REAL;
    ALTER TABLE sources ADD COLUMN configured_url TEXT;
    UPDATE sources SET retry_after = json_extract(state, '$.retry_after.t'), configured_url = json_extract(state, '$.configured_url');
    CREATE INDEX sources_due ON sources(next_poll) WHERE status != 'gone';
    """,
)


def _pack(shingles: Sequence[int]) -> bytes:
    return array("I", shingles).tobytes()


def _unpack(blob: bytes | None) -> tuple[int, ...]:
    if not blob:
        return ()
    values = array("I")
    values.frombytes(blob)
    return tuple(values)


class SQLiteStore:
    """A Store in one SQLite file."""

    def __init__(self, path: Path, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.path = path
        if not path.parent.is_dir():
            raise StoreError(f"{path}: cannot open the database: directory {path.parent} does not exist")
        try:
            self._db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA cache_size=-65536")  # 64 MiB: the hot index pages of a large store
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
            stat = path.stat()
            self._identity = (stat.st_dev, stat.st_ino)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path}: cannot open the database: {exc}") from exc
        self._lock = threading.RLock()

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def check(self) -> None:
        """Raise StoreError if the database file was deleted or replaced since it was opened:
        writing on would go to a file nobody can open again."""
        try:
            now = self.path.stat()
        except FileNotFoundError:
            raise StoreError(f"{self.path}: the database file was deleted while feeds had it open; restore it and restart") from None
        if (now.st_dev, now.st_ino) != self._identity:
            raise StoreError(f"{self.path}: the database file was replaced while feeds had it open; restart feeds")

    @contextmanager
    def poll_lock(self, *, wait: float) -> Iterator[bool]:
        """Hold the store's poll lock (a file lock beside the database) while polling, so one
        store has one poller per source however many processes share it. Yields False if
        another process held it for `wait` seconds."""
        lock_path = self.path.with_name(self.path.name + ".poll.lock")
        handle = lock_path.open("a")
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(0.2)
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        finally:
            handle.close()

    # -- schema -------------------------------------------------------------------------------

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(f"{self.path}: schema version {version} is newer than this feeds ({len(MIGRATIONS)}); upgrade feeds")
        for number in range(version + 1, len(MIGRATIONS) + 1):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                # executescript would commit the open transaction; run statements one by one instead.
                for statement in MIGRATIONS[number - 1].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={number}")
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('dedupe_scheme', ?)", (str(SCHEME_VERSION),))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    @property
    def schema_version(self) -> int:
        """The migration the database is at."""
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreError(f"{self.path}: database is busy (another feeds process is writing): {exc}") from exc
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    @contextmanager
    def transaction(self) -> Iterator[_Transaction]:
        """One poll's reads and writes, committed together."""
        with self._write() as db:
            yield _Transaction(db)

    # -- sources ------------------------------------------------------------------------------

    def states(self) -> dict[str, SourceState]:
        """Every stored source state by name."""
        rows = self._db.execute("SELECT state FROM sources").fetchall()
        return {s.name: s for s in (state_from_json(r["state"]) for r in rows)}

    def due(self, now: datetime, *, force: bool = False) -> list[SourceState]:
        """The stored states due at `now` (all but gone ones with `force`), never one inside a
        Retry-After window: one indexed query, whatever the number of sources."""
        at = to_epoch(now)
        if force:
            query = "SELECT state FROM sources WHERE status != 'gone' AND (retry_after IS NULL OR retry_after <= ?)"
            rows = self._db.execute(query, (at,))
        else:
            query = (
                "SELECT state FROM sources WHERE status != 'gone' AND (next_poll IS NULL OR next_poll <= ?) "
                "AND (retry_after IS NULL OR retry_after <= ?)"
            )
            rows = self._db.execute(query, (at, at))
        return [state_from_json(r["state"]) for r in rows]

    def configured_urls(self) -> dict[str, str | None]:
        """Each stored source's configured URL (no state is decoded)."""
        return {r[0]: r[1] for r in self._db.execute("SELECT name, configured_url FROM sources")}

    def save_state(self, state: SourceState) -> None:
        """Save one source's state in its own transaction."""
        self.save_states([state])

    def save_states(self, states: Sequence[SourceState]) -> None:
        """Save several sources' states in one transaction."""
        with self._write() as db:
            db.executemany(_SAVE_STATE, [_state_row(s) for s in states])

    def meta(self, key: str) -> str | None:
        """A value the pipeline remembers in the store (e.g. which config it last synced)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Remember a value in the store."""
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def story_counts(self) -> dict[str, int]:
        """How many stories each source has stored."""
        rows = self._db.execute("SELECT source, COUNT(*) AS n FROM stories GROUP BY source")
        return {r["source"]: r["n"] for r in rows}

    def cluster_count(self) -> int:
        """How many near-duplicate clusters (published entries) are stored."""
        return int(self._db.execute("SELECT COUNT(*) FROM clusters WHERE kind = 'near'").fetchone()[0])

    # -- outputs ------------------------------------------------------------------------------

    def clusters(self, sources: Iterable[str], *, exact: bool, limit: int) -> list[Cluster]:
        """The newest `limit` clusters with a story from `sources`; members limited to them."""
        names = sorted(set(sources))
        if not names or limit <= 0:
            return []
        column = "exact_cluster_id" if exact else "cluster_id"
        marks = ",".join("?" * len(names))
        ids = [
            r[0]
            for r in self._db.execute(
                f"SELECT c.id FROM clusters c WHERE c.kind = ? AND EXISTS (SELECT 1 FROM stories s "
                f"WHERE s.{column} = c.id AND s.source IN ({marks})) ORDER BY c.first_time DESC, c.id DESC LIMIT ?",
                ("exact" if exact else "near", *names, limit),
            )
        ]
        if not ids:
            return []
        id_marks = ",".join("?" * len(ids))
        members: dict[int, list[Story]] = {i: [] for i in ids}
        for row in self._db.execute(
            f"SELECT * FROM stories WHERE {column} IN ({id_marks}) AND source IN ({marks}) ORDER BY COALESCE(published, first_seen), id",
            (*ids, *names),
        ):
            members[row[column]].append(_story(row))
        heads = {
            r["id"]: (r["atom_id"], r["lead"])
            for r in self._db.execute(f"SELECT id, atom_id, lead FROM clusters WHERE id IN ({id_marks})", ids)
        }
        result = []
        for cluster_id in ids:
            stories = members[cluster_id]
            atom_id, lead_id = heads[cluster_id]
            lead = next((s for s in stories if s.id == lead_id), stories[0])
            ordered = (lead, *(s for s in stories if s.id != lead.id))
            result.append(Cluster(id=cluster_id, atom_id=atom_id, lead=lead, members=ordered))
        return result

    def stored_story(self, story_id: str) -> StoredStory | None:
        """One stored story with its clusters and the decision that placed it."""
        row = self._db.execute("SELECT * FROM stories WHERE id = ?", (story_id,)).fetchone()
        if row is None:
            return None
        return StoredStory(_story(row), row["cluster_id"], row["exact_cluster_id"], json.loads(row["decision"]))

    def prune_index(self, *, before: datetime) -> int:
        """Drop near-duplicate band rows of stories first seen before `before` (outside every
        dedupe window): lookups never use them, and the index stays as large as the window.

        The delete scans the band table, so it runs at most once per PRUNE_EVERY of window
        movement (remembered in the store, so cron runs share it), not after every poll."""
        horizon = before.timestamp()
        with self._write() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'pruned_before'").fetchone()
            if row is not None and horizon - float(row[0]) < PRUNE_EVERY:
                return 0
            db.execute("INSERT OR REPLACE INTO meta VALUES ('pruned_before', ?)", (str(horizon),))
            return int(db.execute("DELETE FROM story_bands WHERE first_seen < ?", (horizon,)).rowcount)

    def output_digest(self, name: str) -> str | None:
        """The digest of what was last published for an output."""
        row = self._db.execute("SELECT digest FROM outputs WHERE name = ?", (name,)).fetchone()
        return row["digest"] if row else None

    def save_output(self, name: str, digest: str, *, now: datetime) -> None:
        """Remember what was published for an output."""
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO outputs VALUES (?, ?, ?)", (name, digest, to_epoch(now)))


_SAVE_STATE = "INSERT OR REPLACE INTO sources (name, status, next_poll, retry_after, configured_url, state) VALUES (?, ?, ?, ?, ?, ?)"


def _state_row(state: SourceState) -> tuple[object, ...]:
    return (state.name, state.status, to_epoch(state.next_poll), to_epoch(state.retry_after), state.configured_url, state_to_json(state))


def _save_state(db: sqlite3.Connection, state: SourceState) -> None:
    db.execute(_SAVE_STATE, _state_row(state))


def _content_columns(story: Story, fp: Fingerprint) -> dict[str, object]:
    """The columns a story's text and fingerprint fill, for inserts and in-place edits alike."""
    return {
        "guid": story.guid,
        "title": story.title,
        "link": story.link,
        "canonical_url": story.canonical_url,
        "summary_html": story.summary_html,
        "content_html": story.content_html,
        "authors": people_to_json(story.authors),
        "categories": json.dumps(list(story.categories)),
        "enclosures": enclosures_to_json(story.enclosures),
        "content_hash": story.content_hash,
        "words": fp.words,
        "shingles": _pack(fp.shingles),
    }


def _story(row: sqlite3.Row) -> Story:
    return Story(
        source=row["source"],
        guid=row["guid"],
        id=row["id"],
        title=row["title"],
        link=row["link"],
        canonical_url=row["canonical_url"],
        first_seen=from_epoch(row["first_seen"]),  # type: ignore[arg-type]
        published=from_epoch(row["published"]),
        updated=from_epoch(row["updated"]),
        summary_html=row["summary_html"],
        content_html=row["content_html"],
        authors=people_from_json(row["authors"]),
        categories=tuple(json.loads(row["categories"])),
        enclosures=enclosures_from_json(row["enclosures"]),
        content_hash=row["content_hash"],
    )


class _Transaction:
    """The PollTransaction of the SQLite store."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def known(self, source: str, guids: Sequence[str]) -> dict[str, KnownStory]:
        found: dict[str, KnownStory] = {}
        for start in range(0, len(guids), 500):
            chunk = list(guids[start : start + 500])
            rows = self.db.execute(
                "SELECT g.guid, s.id, s.content_hash FROM guids g "
                f"JOIN stories s ON s.id = g.story_id WHERE g.source = ? AND g.guid IN ({','.join('?' * len(chunk))})",
                (source, *chunk),
            )
            for r in rows:
                found[r["guid"]] = KnownStory(r["id"], r["content_hash"])
        return found

    def candidates(self, fp: Fingerprint, *, since: datetime) -> list[Candidate]:
        ids: set[str] = set()
        if fp.keys:
            rows = self.db.execute(f"SELECT story_id FROM story_keys WHERE key IN ({','.join('?' * len(fp.keys))})", fp.keys)
            ids.update(r[0] for r in rows)
        if fp.bands:
            rows = self.db.execute(
                f"SELECT s.id FROM stories s WHERE s.seq IN (SELECT seq FROM story_bands "
                f"WHERE band IN ({','.join('?' * len(fp.bands))}) AND first_seen >= ?)",
                (*fp.bands, to_epoch(since)),
            )
            ids.update(r[0] for r in rows)
        ids.discard(fp.story_id)
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        keys: dict[str, list[str]] = {}
        for r in self.db.execute(f"SELECT story_id, key FROM story_keys WHERE story_id IN ({marks})", tuple(ids)):
            keys.setdefault(r[0], []).append(r[1])
        return [
            Candidate(
                r["id"],
                r["source"],
                r["title"],
                r["cluster_id"],
                r["exact_cluster_id"],
                tuple(keys.get(r["id"], ())),
                _unpack(r["shingles"]),
                r["words"],
            )
            for r in self.db.execute(
                f"SELECT id, source, title, cluster_id, exact_cluster_id, shingles, words FROM stories WHERE id IN ({marks}) ORDER BY id",
                tuple(ids),
            )
        ]

    def _new_cluster(self, kind: str, story: Story) -> int:
        atom_id = "urn:feeds:" + stable_hash(kind, story.id, size=16)
        cursor = self.db.execute(
            "INSERT INTO clusters (kind, atom_id, lead, created, first_time) VALUES (?, ?, ?, ?, ?)",
            (kind, atom_id, story.id, to_epoch(story.first_seen), to_epoch(story.when)),
        )
        return int(cursor.lastrowid or 0)

    def _refresh_first_time(self, story_id: str) -> None:
        """Recompute when the clusters of a story were first reported (after an edit or a join)."""
        for column in ("cluster_id", "exact_cluster_id"):
            self.db.execute(
                f"UPDATE clusters SET first_time = (SELECT MIN(COALESCE(published, first_seen)) FROM stories "
                f"WHERE {column} = clusters.id) WHERE id = (SELECT {column} FROM stories WHERE id = ?)",
                (story_id,),
            )

    def add_story(self, story: Story, fp: Fingerprint, decision: Decision) -> None:
        cluster_id = decision.cluster_id if decision.cluster_id is not None else self._new_cluster("near", story)
        exact_id = decision.exact_cluster_id if decision.exact_cluster_id is not None else self._new_cluster("exact", story)
        columns = {
            **_content_columns(story, fp),
            "id": story.id,
            "source": story.source,
            "published": to_epoch(story.published),
            "updated": to_epoch(story.updated),
            "first_seen": to_epoch(story.first_seen),
            "cluster_id": cluster_id,
            "exact_cluster_id": exact_id,
            "decision": json.dumps(asdict(decision)),
        }
        names = ", ".join(columns)
        self.db.execute(f"INSERT INTO stories ({names}) VALUES ({', '.join('?' * len(columns))})", tuple(columns.values()))
        self.add_guid(story.source, story.guid, story.id)
        self._index(story.id, story.first_seen, fp)
        if decision.cluster_id is not None or decision.exact_cluster_id is not None:
            self._refresh_first_time(story.id)

    def _index(self, story_id: str, first_seen: datetime, fp: Fingerprint) -> None:
        self.db.executemany("INSERT OR IGNORE INTO story_keys VALUES (?, ?)", [(k, story_id) for k in fp.keys])
        seq = self.db.execute("SELECT seq FROM stories WHERE id = ?", (story_id,)).fetchone()[0]
        self.db.executemany("INSERT OR IGNORE INTO story_bands VALUES (?, ?, ?)", [(b, to_epoch(first_seen), seq) for b in fp.bands])

    def update_story(self, story_id: str, story: Story, fp: Fingerprint) -> None:
        row = self.db.execute("SELECT first_seen, published, updated, content_hash FROM stories WHERE id = ?", (story_id,)).fetchone()
        first_seen = from_epoch(row["first_seen"])
        # A story without a date of its own keeps the one it was first given; an edit without an
        # updated stamp of its own is stamped when we saw it; an unchanged text keeps its stamp.
        published = story.published or from_epoch(row["published"])
        edited = row["content_hash"] != story.content_hash
        updated = story.updated or (story.first_seen if edited else from_epoch(row["updated"]))
        columns = {**_content_columns(story, fp), "published": to_epoch(published), "updated": to_epoch(updated)}
        assignments = ", ".join(f"{name} = ?" for name in columns)
        self.db.execute(f"UPDATE stories SET {assignments} WHERE id = ?", (*columns.values(), story_id))
        self._refresh_first_time(story_id)
        self.db.execute("DELETE FROM story_keys WHERE story_id = ?", (story_id,))
        self.db.execute("DELETE FROM story_bands WHERE seq = (SELECT seq FROM stories WHERE id = ?)", (story_id,))
        self._index(story_id, first_seen or story.first_seen, fp)

    def add_guid(self, source: str, guid: str, story_id: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO guids VALUES (?, ?, ?)", (source, guid, story_id))

    def lead(self, cluster_id: int) -> LeadInfo | None:
        row = self.db.execute(
            "SELECT s.id, s.source, s.words, COALESCE(s.published, s.first_seen) AS t FROM clusters c "
            "JOIN stories s ON s.id = c.lead WHERE c.id = ?",
            (cluster_id,),
        ).fetchone()
        if row is None:
            return None
        return LeadInfo(row["id"], row["source"], row["words"], from_epoch(row["t"]))  # type: ignore[arg-type]

    def set_lead(self, cluster_id: int, story_id: str) -> None:
        self.db.execute("UPDATE clusters SET lead = ? WHERE id = ?", (story_id, cluster_id))

    def save_state(self, state: SourceState) -> None:
        _save_state(self.db, state)
