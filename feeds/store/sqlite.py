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
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from contextlib import contextmanager
from dataclasses import fields, replace
from datetime import datetime
from operator import itemgetter
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from feeds.errors import StoreError
from feeds.models import (
    Candidate,
    Cluster,
    Decision,
    Fingerprint,
    Found,
    LeadInfo,
    Plan,
    Probe,
    SourceState,
    Stamps,
    Story,
    ordered_cluster,
)
from feeds.store import (
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
CHUNK = 5000  # values bound in one IN (...) list (SQLite allows 32,766)

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


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _wrapped(method: Callable[Concatenate[SQLiteStore, _P], _R]) -> Callable[Concatenate[SQLiteStore, _P], _R]:
    """A read of the store whose sqlite3 errors leave as StoreError naming the database."""

    def call(store: SQLiteStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(store, *args, **kwargs)
        except sqlite3.Error as exc:
            raise StoreError(f"{store.path}: {exc}") from exc

    call.__doc__, call.__name__ = method.__doc__, method.__name__
    return call


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
            except BaseException as exc:
                self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"{self.path}: {exc} (nothing of this transaction was saved)") from exc
                raise

    @contextmanager
    def transaction(self) -> Iterator[_Transaction]:
        """One poll's reads and writes, committed together."""
        with self._write() as db:
            yield _Transaction(db)

    # -- sources ------------------------------------------------------------------------------

    @_wrapped
    def states(self) -> dict[str, SourceState]:
        """Every stored source state by name."""
        rows = self._db.execute("SELECT state FROM sources").fetchall()
        return {s.name: s for s in (state_from_json(r["state"]) for r in rows)}

    @_wrapped
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

    @_wrapped
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

    @_wrapped
    def meta(self, key: str) -> str | None:
        """A value the pipeline remembers in the store (e.g. which config it last synced)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Remember a value in the store."""
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @_wrapped
    def story_counts(self) -> dict[str, int]:
        """How many stories each source has stored."""
        rows = self._db.execute("SELECT source, COUNT(*) AS n FROM stories GROUP BY source")
        return {r["source"]: r["n"] for r in rows}

    @_wrapped
    def cluster_count(self) -> int:
        """How many near-duplicate clusters (published entries) are stored."""
        return int(self._db.execute("SELECT COUNT(*) FROM clusters WHERE kind = 'near'").fetchone()[0])

    # -- outputs ------------------------------------------------------------------------------

    @_wrapped
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
        return [ordered_cluster(i, heads[i][0], heads[i][1], members[i]) for i in ids]

    @_wrapped
    def stored_story(self, story_id: str) -> StoredStory | None:
        """One stored story with its clusters and the decision that placed it."""
        row = self._db.execute("SELECT * FROM stories WHERE id = ?", (story_id,)).fetchone()
        if row is None:
            return None
        return StoredStory(_story(row), row["cluster_id"], row["exact_cluster_id"], json.loads(row["decision"]))

    def prune_index(self, *, before: datetime) -> int:
        """Drop the band rows of stories first seen before `before` (outside every dedupe window):
        lookups never use them, so the index stays as large as the window. Stories are kept."""
        with self._write() as db:
            return int(db.execute("DELETE FROM story_bands WHERE first_seen < ?", (to_epoch(before),)).rowcount)

    @_wrapped
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


def _chunks(values: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _marks(values: Sized) -> str:
    return ",".join("?" * len(values))


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


def _text_row(story: Story, fp: Fingerprint) -> tuple[object, ...]:
    """The columns a story's text, stamps and fingerprint fill (TEXT_COLUMNS), for inserts and edits alike."""
    return (
        story.guid,
        story.title,
        story.link,
        story.canonical_url,
        story.summary_html,
        story.content_html,
        people_to_json(story.authors),
        json.dumps(list(story.categories)),
        enclosures_to_json(story.enclosures),
        to_epoch(story.published),
        to_epoch(story.updated),
        story.content_hash,
        fp.words,
        _pack(fp.shingles),
    )


TEXT_COLUMNS = (
    "guid",
    "title",
    "link",
    "canonical_url",
    "summary_html",
    "content_html",
    "authors",
    "categories",
    "enclosures",
    "published",
    "updated",
    "content_hash",
    "words",
    "shingles",
)
_INSERT_STORY = (
    f"INSERT INTO stories (seq, id, source, first_seen, cluster_id, exact_cluster_id, decision, {', '.join(TEXT_COLUMNS)}) "
    f"VALUES ({_marks(range(7 + len(TEXT_COLUMNS)))})"
)
_DECISION_FIELDS = tuple(f.name for f in fields(Decision))
_EDIT_STORY = f"UPDATE stories SET {', '.join(f'{c} = ?' for c in TEXT_COLUMNS)} WHERE id = ?"
_CANDIDATE = (
    "SELECT seq, id, source, title, cluster_id, exact_cluster_id, shingles, words, first_seen, published, updated, content_hash "
    "FROM stories"
)


class _Transaction:
    """The PollTransaction of the SQLite store: a batch's lookup and save, a few statements each."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def lookup(self, probe: Probe) -> Found:
        by_source: dict[str, list[str]] = {}
        for source, guid in probe.guids:
            by_source.setdefault(source, []).append(guid)
        known: dict[tuple[str, str], str] = {}
        for source, guids in by_source.items():
            for chunk in _chunks(guids):
                query = f"SELECT guid, story_id FROM guids WHERE source = ? AND guid IN ({_marks(chunk)})"
                known.update(((source, guid), story_id) for guid, story_id in self.db.execute(query, (source, *chunk)))
        by_key: dict[str, list[str]] = {}
        for chunk in _chunks(probe.keys):
            for key, story_id in self.db.execute(f"SELECT key, story_id FROM story_keys WHERE key IN ({_marks(chunk)})", chunk):
                by_key.setdefault(key, []).append(story_id)
        by_band_seq: dict[int, list[int]] = {}
        since = to_epoch(probe.since)
        for chunk in _chunks(probe.bands):
            query = f"SELECT band, seq FROM story_bands WHERE band IN ({_marks(chunk)}) AND first_seen >= ?"
            for band, seq in self.db.execute(query, (*chunk, since)):
                by_band_seq.setdefault(band, []).append(seq)
        rows: dict[str, sqlite3.Row] = {}
        seqs = sorted({seq for found in by_band_seq.values() for seq in found})
        for chunk in _chunks(seqs):
            rows.update((r["id"], r) for r in self.db.execute(f"{_CANDIDATE} WHERE seq IN ({_marks(chunk)})", chunk))
        wanted = sorted(({i for ids in by_key.values() for i in ids} | set(known.values())) - rows.keys())
        for chunk in _chunks(wanted):
            rows.update((r["id"], r) for r in self.db.execute(f"{_CANDIDATE} WHERE id IN ({_marks(chunk)})", chunk))
        seq_ids = {r["seq"]: story_id for story_id, r in rows.items()}
        candidate_ids = sorted({i for ids in by_key.values() for i in ids} | set(seq_ids.values()))
        keys: dict[str, list[str]] = {}
        for chunk in _chunks(candidate_ids):
            for story_id, key in self.db.execute(f"SELECT story_id, key FROM story_keys WHERE story_id IN ({_marks(chunk)})", chunk):
                keys.setdefault(story_id, []).append(key)
        candidates = {
            i: Candidate(
                i,
                r["source"],
                r["title"],
                r["cluster_id"],
                r["exact_cluster_id"],
                tuple(keys.get(i, ())),
                _unpack(r["shingles"]),
                r["words"],
            )
            for i in candidate_ids
            if (r := rows.get(i)) is not None
        }
        clusters = sorted({c.cluster_id for c in candidates.values()} | {c.exact_cluster_id for c in candidates.values()})
        leads: dict[int, LeadInfo] = {}
        first_times: dict[int, datetime] = {}
        for chunk in _chunks(clusters):
            query = (
                "SELECT c.id AS cluster, c.first_time, s.id, s.source, s.words, COALESCE(s.published, s.first_seen) AS t "
                f"FROM clusters c JOIN stories s ON s.id = c.lead WHERE c.id IN ({_marks(chunk)})"
            )
            for r in self.db.execute(query, chunk):
                leads[r["cluster"]] = LeadInfo(r["id"], r["source"], r["words"], from_epoch(r["t"]))  # type: ignore[arg-type]
                if r["first_time"] is not None:
                    first_times[r["cluster"]] = from_epoch(r["first_time"])  # type: ignore[assignment]
        return Found(
            known=known,
            stamps={
                i: Stamps(from_epoch(r["first_seen"]), from_epoch(r["published"]), from_epoch(r["updated"]), r["content_hash"])  # type: ignore[arg-type]
                for i, r in rows.items()
            },
            candidates=candidates,
            by_key={k: tuple(v) for k, v in by_key.items()},
            by_band={band: tuple(seq_ids[s] for s in found if s in seq_ids) for band, found in by_band_seq.items()},
            leads=leads,
            first_times=first_times,
        )

    def save(self, plan: Plan) -> None:
        db = self.db
        next_cluster = int(db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM clusters").fetchone()[0])
        ids = {c.ref: next_cluster + n for n, c in enumerate(plan.clusters)}

        def real(cluster: int | None) -> int | None:
            return ids[cluster] if cluster is not None and cluster < 0 else cluster

        db.executemany(
            "INSERT INTO clusters (id, kind, atom_id, lead, created, first_time) VALUES (?, ?, ?, ?, ?, ?)",
            [(ids[c.ref], c.kind, c.atom_id, c.lead, to_epoch(c.created), to_epoch(c.first_time)) for c in plan.clusters],
        )
        next_seq = int(db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM stories").fetchone()[0])
        rows: list[tuple[object, ...]] = []
        bands: list[tuple[int, float | None, int]] = []
        for n, new in enumerate(plan.stories):
            story, decision = new.story, new.decision
            decision = replace(decision, cluster_id=real(decision.cluster_id), exact_cluster_id=real(decision.exact_cluster_id))
            seq, first_seen = next_seq + n, to_epoch(story.first_seen)
            rows.append(
                (
                    seq,
                    story.id,
                    story.source,
                    first_seen,
                    real(new.cluster),
                    real(new.exact_cluster),
                    json.dumps({f: getattr(decision, f) for f in _DECISION_FIELDS}),
                    *_text_row(story, new.fingerprint),
                )
            )
            bands.extend([(b, first_seen, seq) for b in new.fingerprint.bands])
        db.executemany(_INSERT_STORY, rows)
        db.executemany(
            "INSERT OR REPLACE INTO guids VALUES (?, ?, ?)",
            [(n.story.source, n.story.guid, n.story.id) for n in plan.stories] + list(plan.guids),
        )
        edited = [(e.story.id,) for e in plan.edits]
        db.executemany(_EDIT_STORY, [(*_text_row(e.story, e.fingerprint), e.story.id) for e in plan.edits])
        db.executemany("DELETE FROM story_keys WHERE story_id = ?", edited)
        db.executemany("DELETE FROM story_bands WHERE seq = (SELECT seq FROM stories WHERE id = ?)", edited)
        db.executemany(
            "INSERT OR IGNORE INTO story_keys VALUES (?, ?)",
            [(k, n.story.id) for n in plan.stories for k in n.fingerprint.keys]
            + [(k, e.story.id) for e in plan.edits for k in e.fingerprint.keys],
        )
        db.executemany(
            "INSERT OR IGNORE INTO story_bands SELECT ?, ?, seq FROM stories WHERE id = ?",
            [(b, to_epoch(e.story.first_seen), e.story.id) for e in plan.edits for b in e.fingerprint.bands],
        )
        bands.sort(key=itemgetter(0))  # in index order: each page is visited once
        db.executemany("INSERT OR IGNORE INTO story_bands VALUES (?, ?, ?)", bands)
        db.executemany("UPDATE clusters SET lead = ? WHERE id = ?", [(lead, c) for c, lead in plan.leads.items()])
        db.executemany("UPDATE clusters SET first_time = ? WHERE id = ?", [(to_epoch(t), c) for c, t in plan.first_times.items()])
        for column in ("cluster_id", "exact_cluster_id"):  # an edit may move a member's date either way
            db.executemany(
                f"UPDATE clusters SET first_time = (SELECT MIN(COALESCE(published, first_seen)) FROM stories "
                f"WHERE {column} = clusters.id) WHERE id = (SELECT {column} FROM stories WHERE id = ?)",
                edited,
            )

    def save_states(self, states: Sequence[SourceState]) -> None:
        self.db.executemany(_SAVE_STATE, [_state_row(s) for s in states])
