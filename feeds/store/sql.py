"""What the SQL stores share: one schema (numbered migrations), the batch transaction, the reads.

Every statement here is written once, in SQL that SQLite (3.35+) and PostgreSQL both run:
`?` placeholders (the PostgreSQL connection rewrites them), `INSERT ... ON CONFLICT` upserts,
epoch-second REAL columns. A backend supplies a connection (`Connection`), its transactions
(`_write`) and its reads (`_read`); see `feeds.store` for the contract.
"""

from __future__ import annotations

import json
import re
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from contextlib import AbstractContextManager
from dataclasses import fields, replace
from datetime import datetime
from operator import itemgetter
from typing import Any, Protocol

from feeds.errors import StoreError
from feeds.models import (
    Candidate,
    Cluster,
    Decision,
    EventLink,
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
    facts_from_json,
    facts_to_json,
    from_epoch,
    link_from_json,
    link_to_json,
    people_from_json,
    people_to_json,
    state_from_json,
    state_to_json,
    to_epoch,
)
from feeds.untrusted import host_of

CHUNK = 5000  # values bound in one IN (...) list (SQLite allows 32,766, PostgreSQL 65,535)

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
    # 4: leases, so several worker processes (PostgreSQL) share the sources: a claimed source is
    # polled by its claimer until the lease ends
    """
    ALTER TABLE sources ADD COLUMN claimed_by TEXT;
    ALTER TABLE sources ADD COLUMN lease_until REAL;
    ALTER TABLE sources ADD COLUMN polled_at REAL;
    """,
    # 5: the second level of merging: each story's event facts, and the verified same-event links
    # between stories (events are computed from them when an output asks for events)
    """
    ALTER TABLE stories ADD COLUMN facts TEXT;
    CREATE TABLE event_links (
        a TEXT NOT NULL REFERENCES stories(id),
        b TEXT NOT NULL REFERENCES stories(id),
        score REAL NOT NULL,
        hours REAL NOT NULL,
        evidence TEXT NOT NULL,
        PRIMARY KEY (a, b)
    );
    CREATE INDEX event_links_b ON event_links(b);
    """,
    # 6: retention: the guids of deleted stories are remembered, so a feed that still carries an
    # old entry does not bring it back as new
    """
    CREATE TABLE forgotten_guids (
        source TEXT NOT NULL,
        guid TEXT NOT NULL,
        forgotten REAL NOT NULL,
        PRIMARY KEY (source, guid)
    );
    """,
    # 7: RFC 5005 archives: the pages written for each output, immutable once written
    """
    CREATE TABLE archive_pages (
        output TEXT NOT NULL,
        page INTEGER NOT NULL,
        written REAL NOT NULL,
        PRIMARY KEY (output, page)
    );
    CREATE TABLE archived (
        output TEXT NOT NULL,
        cluster_id INTEGER NOT NULL,
        page INTEGER NOT NULL,
        PRIMARY KEY (output, cluster_id)
    );
    """,
    # 8: per-host politeness across workers (PostgreSQL): each source's host, so a claim can
    # leave alone the hosts other workers are polling. Filled as states are saved (and at once on
    # PostgreSQL); a source without one is claimed as before.
    """
    ALTER TABLE sources ADD COLUMN host TEXT;
    UPDATE sources SET host = NULL WHERE host IS NOT NULL;
    CREATE INDEX sources_claimed_host ON sources(host) WHERE claimed_by IS NOT NULL
    """,
)


_POSTGRES_TYPES = (
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
)
_POSTGRES_STATEMENTS = {
    # SQLite fills hosts as states are saved (one poller needs none); PostgreSQL at once
    "UPDATE sources SET host = NULL WHERE host IS NOT NULL": (
        "UPDATE sources SET host = lower(substring(state::json ->> 'url' from '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^/?#:]+)'))"
    ),
    # json_extract is SQLite's; on PostgreSQL the table is new and empty when this runs, but the
    # statement must still parse
    "UPDATE sources SET retry_after = json_extract": (
        "UPDATE sources SET retry_after = (state::json #>> '{retry_after,t}')::float8, configured_url = state::json ->> 'configured_url'"
    ),
}


def statements(number: int, dialect: str) -> list[str]:
    """The statements of migration `number` (1-based) for "sqlite" or "postgresql": the same
    schema, with PostgreSQL's names for the column types."""
    out = []
    for statement in MIGRATIONS[number - 1].split(";"):
        text = statement.strip()
        if not text:
            continue
        if dialect == "postgresql":
            text = next((v for k, v in _POSTGRES_STATEMENTS.items() if text.startswith(k)), text)
            text = text.replace("WITHOUT ROWID", "")
            for pattern, name in _POSTGRES_TYPES:
                text = pattern.sub(name, text)
        out.append(text)
    return out


class Connection(Protocol):
    """What the shared code needs of a connection (sqlite3's, or the PostgreSQL adapter)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...
    def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Any]], /) -> Any: ...


Row = Any  # a row read by index or by column name (sqlite3.Row, or the PostgreSQL adapter's)


def _pack(shingles: Sequence[int]) -> bytes:
    return array("I", shingles).tobytes()


def _unpack(blob: bytes | None) -> tuple[int, ...]:
    if not blob:
        return ()
    values = array("I")
    values.frombytes(blob)
    return tuple(values)


# Saving a polled state (one with a last poll) ends its claim and records when it was saved, by
# the saving machine's clock (`polled_at`: a forced cycle of a shared store skips sources polled
# since it began); saving a state never polled leaves any claim as it is.
_SAVE_STATE = (
    "INSERT INTO sources (name, status, next_poll, retry_after, configured_url, state, polled_at, host) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET status = excluded.status, next_poll = excluded.next_poll, "
    "retry_after = excluded.retry_after, configured_url = excluded.configured_url, state = excluded.state, host = excluded.host, "
    "claimed_by = CASE WHEN excluded.polled_at IS NULL THEN sources.claimed_by END, "
    "lease_until = CASE WHEN excluded.polled_at IS NULL THEN sources.lease_until END, "
    "polled_at = COALESCE(excluded.polled_at, sources.polled_at)"
)
# New sources, and sources whose configured URL changed, start afresh; a source stored with the
# same URL keeps its state (another worker may have polled it since this one read the config).
_ADD_STATE = _SAVE_STATE.split(" ON CONFLICT", maxsplit=1)[0] + (
    " ON CONFLICT (name) DO UPDATE SET status = excluded.status, next_poll = excluded.next_poll, "
    "retry_after = excluded.retry_after, configured_url = excluded.configured_url, state = excluded.state, host = excluded.host "
    "WHERE sources.configured_url IS NULL OR sources.configured_url != excluded.configured_url"
)


def _state_row(state: SourceState) -> tuple[object, ...]:
    return (
        state.name,
        state.status,
        to_epoch(state.next_poll),
        to_epoch(state.retry_after),
        state.configured_url,
        state_to_json(state),
        None if state.last_poll is None else time.time(),
        host_of(state.url),
    )


def _chunks(values: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _marks(values: Sized) -> str:
    return ",".join("?" * len(values))


def _story(row: Row) -> Story:
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
        facts_to_json(fp.event),
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
    "facts",
)
STORY_COLUMNS = ("seq", "id", "source", "first_seen", "cluster_id", "exact_cluster_id", "decision", *TEXT_COLUMNS)


def _insert_new(db: Connection, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    """Insert rows that cannot exist yet (new stories and their index rows): with COPY where the
    connection has it (PostgreSQL: one stream instead of a statement a row), else executemany."""
    if not rows:
        return
    copy = getattr(db, "copy_rows", None)
    if copy is not None:
        copy(table, columns, rows)
    else:
        db.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({_marks(columns)})", rows)


_DECISION_FIELDS = tuple(f.name for f in fields(Decision))
_EDIT_STORY = f"UPDATE stories SET {', '.join(f'{c} = ?' for c in TEXT_COLUMNS)} WHERE id = ?"
_CANDIDATE = (
    "SELECT seq, id, source, title, cluster_id, exact_cluster_id, shingles, words, facts, first_seen, published, updated, content_hash "
    "FROM stories"
)


class Transaction:
    """The PollTransaction of the SQL stores: a batch's lookup and save, a few statements each."""

    def __init__(self, db: Connection) -> None:
        self.db = db

    def lookup(self, probe: Probe) -> Found:
        by_source: dict[str, list[str]] = {}
        for source, guid in probe.guids:
            by_source.setdefault(source, []).append(guid)
        known: dict[tuple[str, str], str] = {}
        forgotten: set[tuple[str, str]] = set()
        for source, guids in by_source.items():
            for chunk in _chunks(guids, size=CHUNK // 2):
                # Stored guids and those of deleted stories (retention) in one round trip.
                query = (
                    f"SELECT guid, story_id FROM guids WHERE source = ? AND guid IN ({_marks(chunk)}) "
                    f"UNION ALL SELECT guid, NULL FROM forgotten_guids WHERE source = ? AND guid IN ({_marks(chunk)})"
                )
                for guid, story_id in self.db.execute(query, (source, *chunk, source, *chunk)):
                    if story_id is None:
                        forgotten.add((source, guid))
                    else:
                        known[(source, guid)] = story_id
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
        if probe.common:  # keys too common to tell anything find nothing
            by_band_seq = {band: seqs for band, seqs in by_band_seq.items() if len(seqs) <= probe.common}
        rows: dict[str, Row] = {}
        seqs = sorted({seq for found in by_band_seq.values() for seq in found})
        for chunk in _chunks(seqs):
            rows.update((r["id"], r) for r in self.db.execute(f"{_CANDIDATE} WHERE seq IN ({_marks(chunk)})", chunk))
        keyed = {i for ids in by_key.values() for i in ids}
        wanted = sorted((keyed | set(known.values())) - rows.keys())
        for chunk in _chunks(wanted):
            rows.update((r["id"], r) for r in self.db.execute(f"{_CANDIDATE} WHERE id IN ({_marks(chunk)})", chunk))
        seq_ids = {r["seq"]: story_id for story_id, r in rows.items()}
        candidate_ids = sorted(keyed | set(seq_ids.values()))
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
                facts_from_json(r["facts"]),
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
            forgotten=frozenset(forgotten),
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
            bands.extend([(b, first_seen, seq) for b in dict.fromkeys((*new.fingerprint.bands, *new.fingerprint.event_keys))])
        _insert_new(db, "stories", STORY_COLUMNS, rows)
        db.executemany(
            "INSERT INTO guids VALUES (?, ?, ?) ON CONFLICT (source, guid) DO UPDATE SET story_id = excluded.story_id",
            [(n.story.source, n.story.guid, n.story.id) for n in plan.stories] + list(plan.guids),
        )
        edited = [(e.story.id,) for e in plan.edits]
        db.executemany(_EDIT_STORY, [(*_text_row(e.story, e.fingerprint), e.story.id) for e in plan.edits])
        db.executemany("DELETE FROM story_keys WHERE story_id = ?", edited)
        db.executemany("DELETE FROM story_bands WHERE seq = (SELECT seq FROM stories WHERE id = ?)", edited)
        _insert_new(
            db, "story_keys", ("key", "story_id"), [(k, n.story.id) for n in plan.stories for k in dict.fromkeys(n.fingerprint.keys)]
        )
        db.executemany(
            "INSERT INTO story_keys VALUES (?, ?) ON CONFLICT DO NOTHING",
            [(k, e.story.id) for e in plan.edits for k in e.fingerprint.keys],
        )
        db.executemany(
            "INSERT INTO story_bands SELECT ?, ?, seq FROM stories WHERE id = ? ON CONFLICT DO NOTHING",
            [(b, to_epoch(e.story.first_seen), e.story.id) for e in plan.edits for b in (*e.fingerprint.bands, *e.fingerprint.event_keys)],
        )
        db.executemany(
            "INSERT INTO event_links VALUES (?, ?, ?, ?, ?) ON CONFLICT (a, b) DO UPDATE SET "
            "score = excluded.score, hours = excluded.hours, evidence = excluded.evidence",
            [(x.a, x.b, x.link.score, x.link.hours, link_to_json(x.link)) for x in plan.links],
        )
        bands.sort(key=itemgetter(0))  # in index order: each page is visited once
        _insert_new(db, "story_bands", ("band", "first_seen", "seq"), bands)
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


class SQLStore:
    """The reads and writes both SQL backends share. A backend provides `_read` (a query's rows,
    errors as StoreError) and `_write` (a transaction; `assign=True` for one that assigns
    clusters, which the backend serializes)."""

    def _read(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        raise NotImplementedError

    def _write(self, *, assign: bool = False) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    def _one(self, sql: str, parameters: Sequence[Any] = ()) -> Row | None:
        rows = self._read(sql, parameters)
        return rows[0] if rows else None

    def transaction(self) -> AbstractContextManager[Transaction]:
        """One batch's lookup and save, committed together, cluster assignment serialized."""
        return _Transactions(self)

    # -- sources ------------------------------------------------------------------------------

    def states(self) -> dict[str, SourceState]:
        """Every stored source state by name."""
        return {s.name: s for s in (state_from_json(r["state"]) for r in self._read("SELECT state FROM sources"))}

    def configured_urls(self) -> dict[str, str | None]:
        """Each stored source's configured URL (no state is decoded)."""
        return {r[0]: r[1] for r in self._read("SELECT name, configured_url FROM sources")}

    def save_state(self, state: SourceState) -> None:
        """Save one source's state in its own transaction."""
        self.save_states([state])

    def save_states(self, states: Sequence[SourceState]) -> None:
        """Save several sources' states in one transaction."""
        with self._write() as db:
            db.executemany(_SAVE_STATE, [_state_row(s) for s in states])

    def add_states(self, states: Sequence[SourceState]) -> None:
        """Store the initial states of new sources, and of sources whose configured URL changed;
        a source already stored with the same URL keeps its state."""
        with self._write() as db:
            db.executemany(_ADD_STATE, [_state_row(s) for s in states])

    def meta(self, key: str) -> str | None:
        """A value the pipeline remembers in the store (e.g. which config it last synced)."""
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Remember a value in the store."""
        with self._write() as db:
            db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def story_counts(self) -> dict[str, int]:
        """How many stories each source has stored."""
        return {r[0]: int(r[1]) for r in self._read("SELECT source, COUNT(*) FROM stories GROUP BY source")}

    def cluster_count(self) -> int:
        """How many near-duplicate clusters (published entries) are stored."""
        row = self._one("SELECT COUNT(*) FROM clusters WHERE kind = 'near'")
        return int(row[0]) if row else 0

    # -- outputs ------------------------------------------------------------------------------

    def clusters(self, sources: Iterable[str], *, exact: bool, limit: int) -> list[Cluster]:
        """The newest `limit` clusters with a story from `sources`; members limited to them."""
        return self._clusters(sources, exact=exact, limit=limit, order="c.first_time DESC NULLS LAST, c.id DESC")

    def unarchived(self, sources: Iterable[str], *, exact: bool, output: str, before: datetime, limit: int) -> list[Cluster]:
        """The oldest `limit` clusters first reported before `before` that no archive page of
        `output` holds yet, oldest first (what the output's next archive page holds)."""
        where = "c.first_time < ? AND NOT EXISTS (SELECT 1 FROM archived a WHERE a.output = ? AND a.cluster_id = c.id)"
        return self._clusters(sources, exact=exact, limit=limit, order="c.first_time, c.id", where=where, bounds=(to_epoch(before), output))

    def _clusters(
        self, sources: Iterable[str], *, exact: bool, limit: int, order: str, where: str = "1 = 1", bounds: tuple[Any, ...] = ()
    ) -> list[Cluster]:
        names = sorted(set(sources))
        if not names or limit <= 0:
            return []
        column = "exact_cluster_id" if exact else "cluster_id"
        ids = [
            r[0]
            for r in self._read(
                f"SELECT c.id FROM clusters c WHERE c.kind = ? AND {where} AND EXISTS (SELECT 1 FROM stories s "
                f"WHERE s.{column} = c.id AND s.source IN ({_marks(names)})) ORDER BY {order} LIMIT ?",
                ("exact" if exact else "near", *bounds, *names, limit),
            )
        ]
        if not ids:
            return []
        members: dict[int, list[Story]] = {i: [] for i in ids}
        query = (
            f"SELECT * FROM stories WHERE {column} IN ({_marks(ids)}) AND source IN ({_marks(names)}) "
            "ORDER BY COALESCE(published, first_seen), id"
        )
        for row in self._read(query, (*ids, *names)):
            members[row[column]].append(_story(row))
        heads = {
            r["id"]: (r["atom_id"], r["lead"])
            for r in self._read(f"SELECT id, atom_id, lead FROM clusters WHERE id IN ({_marks(ids)})", ids)
        }
        return [ordered_cluster(i, heads[i][0], heads[i][1], members[i]) for i in ids]

    def archive_pages(self, output: str) -> list[int]:
        """The archive pages written for an output, in order."""
        return [r[0] for r in self._read("SELECT page FROM archive_pages WHERE output = ? ORDER BY page", (output,))]

    def add_archive_page(self, output: str, page: int, cluster_ids: Sequence[int], *, now: datetime) -> None:
        """Record an archive page and the clusters it holds (it is never written again)."""
        with self._write() as db:
            db.execute("INSERT INTO archive_pages VALUES (?, ?, ?)", (output, page, to_epoch(now)))
            db.executemany("INSERT INTO archived VALUES (?, ?, ?)", [(output, c, page) for c in cluster_ids])

    def event_links(self, story_ids: Iterable[str]) -> list[tuple[str, str, EventLink]]:
        """The verified same-event links with an end among `story_ids`, each once, in id order."""
        found: dict[tuple[str, str], EventLink] = {}
        for chunk in _chunks(sorted(set(story_ids))):
            for column in ("a", "b"):
                query = f"SELECT a, b, score, hours, evidence FROM event_links WHERE {column} IN ({_marks(chunk)})"
                for r in self._read(query, chunk):
                    found[(r[0], r[1])] = link_from_json(r[2], r[3], r[4])
        return [(a, b, link) for (a, b), link in sorted(found.items())]

    def stored_story(self, story_id: str) -> StoredStory | None:
        """One stored story with its clusters and the decision that placed it."""
        row = self._one("SELECT * FROM stories WHERE id = ?", (story_id,))
        if row is None:
            return None
        return StoredStory(_story(row), row["cluster_id"], row["exact_cluster_id"], json.loads(row["decision"]))

    def prune_index(self, *, before: datetime) -> int:
        """Drop the band rows of stories first seen before `before` (outside every dedupe window):
        lookups never use them, so the index stays as large as the window. Stories are kept."""
        with self._write() as db:
            return int(db.execute("DELETE FROM story_bands WHERE first_seen < ?", (to_epoch(before),)).rowcount)

    def expiring(self, *, before: datetime) -> list[tuple[str, str, int, datetime]]:
        """(story id, source, cluster id, time) of every story in a cluster whose newest story
        is older than `before`: what retention may delete."""
        query = (
            "SELECT id, source, cluster_id, COALESCE(published, first_seen) AS t FROM stories WHERE cluster_id IN "
            "(SELECT cluster_id FROM stories GROUP BY cluster_id HAVING MAX(COALESCE(published, first_seen)) < ?) ORDER BY id"
        )
        return [(r[0], r[1], r[2], from_epoch(r[3])) for r in self._read(query, (to_epoch(before),))]  # type: ignore[misc]

    def source_stories(self, source: str) -> list[str]:
        """The ids of every story of one source."""
        return [r[0] for r in self._read("SELECT id FROM stories WHERE source = ? ORDER BY id", (source,))]

    def delete_stories(self, story_ids: Sequence[str], *, now: datetime) -> int:
        """Delete stories with their keys, bands, links and guids (the guids are remembered:
        `forgotten_guids`); clusters left empty go, a cluster whose lead went gets its earliest
        remaining story as lead, and cluster times are recomputed. One transaction."""
        ids = sorted(set(story_ids))
        deleted = 0
        with self._write(assign=True) as db:
            affected: set[int] = set()
            for chunk in _chunks(ids):
                marks = _marks(chunk)
                for near, exact in db.execute(f"SELECT cluster_id, exact_cluster_id FROM stories WHERE id IN ({marks})", chunk):
                    affected.update((near, exact))
                db.execute(
                    f"INSERT INTO forgotten_guids SELECT source, guid, ? FROM guids WHERE story_id IN ({marks}) ON CONFLICT DO NOTHING",
                    (to_epoch(now), *chunk),
                )
                db.execute(f"DELETE FROM guids WHERE story_id IN ({marks})", chunk)
                db.execute(f"DELETE FROM story_keys WHERE story_id IN ({marks})", chunk)
                db.execute(f"DELETE FROM story_bands WHERE seq IN (SELECT seq FROM stories WHERE id IN ({marks}))", chunk)
                db.execute(f"DELETE FROM event_links WHERE a IN ({marks}) OR b IN ({marks})", (*chunk, *chunk))
                deleted += int(db.execute(f"DELETE FROM stories WHERE id IN ({marks})", chunk).rowcount)
            members = "(CASE clusters.kind WHEN 'near' THEN s.cluster_id ELSE s.exact_cluster_id END) = clusters.id"
            for chunk in _chunks(sorted(affected)):
                marks = _marks(chunk)
                db.execute(f"DELETE FROM clusters WHERE id IN ({marks}) AND NOT EXISTS (SELECT 1 FROM stories s WHERE {members})", chunk)
                db.execute(
                    f"UPDATE clusters SET lead = (SELECT s.id FROM stories s WHERE {members} "
                    "ORDER BY COALESCE(s.published, s.first_seen), s.id LIMIT 1), "
                    f"first_time = (SELECT MIN(COALESCE(s.published, s.first_seen)) FROM stories s WHERE {members}) "
                    f"WHERE id IN ({marks})",
                    chunk,
                )
        return deleted

    def shrink(self) -> None:
        """Give the space of deleted rows back (the backend's way); a no-op by default."""

    def output_digest(self, name: str) -> str | None:
        """The digest of what was last published for an output."""
        row = self._one("SELECT digest FROM outputs WHERE name = ?", (name,))
        return None if row is None else str(row[0])

    def save_output(self, name: str, digest: str, *, now: datetime) -> None:
        """Remember what was published for an output."""
        with self._write() as db:
            db.execute(
                "INSERT INTO outputs VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET digest = excluded.digest, published = excluded.published",
                (name, digest, to_epoch(now)),
            )


class _Transactions:
    """`store.transaction()`: a write transaction that assigns clusters, as a Transaction."""

    def __init__(self, store: SQLStore) -> None:
        self._context = store._write(assign=True)

    def __enter__(self) -> Transaction:
        return Transaction(self._context.__enter__())

    def __exit__(self, *exc: Any) -> bool | None:
        return self._context.__exit__(*exc)


# -- moving an installation between stores ------------------------------------------------------

# Every table with its columns and key, in an order that keeps foreign keys satisfied. Leases are
# not copied: they belong to the workers of the old store.
TABLES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("meta", ("key", "value"), ("key",)),
    ("sources", ("name", "status", "next_poll", "retry_after", "configured_url", "state", "host"), ("name",)),
    ("clusters", ("id", "kind", "atom_id", "lead", "created", "first_time"), ("id",)),
    ("stories", STORY_COLUMNS, ("seq",)),
    ("guids", ("source", "guid", "story_id"), ("source", "guid")),
    ("story_keys", ("key", "story_id"), ("key", "story_id")),
    ("story_bands", ("band", "first_seen", "seq"), ("band", "first_seen", "seq")),
    ("event_links", ("a", "b", "score", "hours", "evidence"), ("a", "b")),
    ("forgotten_guids", ("source", "guid", "forgotten"), ("source", "guid")),
    ("archive_pages", ("output", "page", "written"), ("output", "page")),
    ("archived", ("output", "cluster_id", "page"), ("output", "cluster_id")),
    ("outputs", ("name", "digest", "published"), ("name",)),
)


def copy_store(source: SQLStore, target: SQLStore, *, progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Copy every row of `source` into `target`, which must be empty, in one transaction of the
    target (all or nothing): the same stories, clusters, leads, minted Atom ids, source states and
    output digests, so readers see no change. Returns the rows copied per table; `progress(table,
    rows so far)` is told after each chunk."""
    if target.states() or target.story_counts():
        raise StoreError("the target store is not empty; migrate into a new, empty database")
    copied: dict[str, int] = {}
    with target._write(assign=True) as db:
        for table, columns, keys in TABLES:
            order = ", ".join(keys)
            last: tuple[Any, ...] | None = None
            copied[table] = 0
            while True:
                after = f"WHERE ({order}) > ({_marks(keys)})" if last is not None else ""
                rows = [
                    tuple(r)
                    for r in source._read(
                        f"SELECT {', '.join(columns)} FROM {table} {after} ORDER BY {order} LIMIT ?", (*(last or ()), CHUNK)
                    )
                ]
                if not rows:
                    break
                _insert_new(db, table, columns, rows)
                copied[table] += len(rows)
                last = tuple(rows[-1][columns.index(k)] for k in keys)
                if progress is not None:
                    progress(table, copied[table])
    return copied
