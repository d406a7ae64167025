"""Storage behind one protocol: SQLite (the embedded default) and PostgreSQL (many workers).

The contract every backend keeps:

- **It saves decisions and never makes them.** Which cluster a story joins, its lead, the Atom
  ids of new clusters, the stamps of edited stories and when to prune are decided in pure code
  (`dedupe.plan`, `policy`) and handed in as values from `feeds.models`. The store imports no
  pipeline stage (an import contract in pyproject.toml says so).
- **Batch calls.** A poll cycle talks to the store once per batch of sources, not per story:
  `due` (one indexed query), `transaction()` -> `tx.lookup(probe)` (a few statements for the
  whole batch) -> `tx.save(plan)` and `tx.save_states(states)` (executemany), commit;
  `save_states` alone for polls that stored nothing else. Reads for outputs (`clusters`) are
  one query for the ids and one for the members.
- **Cluster assignment is serialized.** A transaction holds the store's assignment lock from
  lookup to commit, so what `lookup` found is still true when `save` applies the plan (SQLite:
  BEGIN IMMEDIATE, one writer at a time; PostgreSQL: a transaction advisory lock, across every
  worker). Surrogate ids (cluster ids, story sequence numbers) are given out by the store
  inside that lock.
- **Who polls what.** A store of one poller (`shared = False`, SQLite) lets one poll cycle run
  at a time (`poll_lock`) and `due` only reads. A shared store (PostgreSQL) lets workers poll
  side by side: `due` claims sources with a lease that `release` (or its end) gives up.
- **Threads.** A store object may be called from any thread (SQLite: one connection behind a
  lock, reads outside write transactions see the last commit in WAL mode; PostgreSQL: a
  connection pool, a connection per call).
- **Errors.** Every backend error leaves as `StoreError` naming the database, never as a
  driver exception; a failed transaction is rolled back whole.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from feeds.errors import StoreError
from feeds.models import Author, Cluster, Enclosure, EventFacts, EventLink, Found, Plan, Probe, SourceState, Story


@dataclass(frozen=True, slots=True)
class StoredStory:
    """A story with where it sits in the index, for `feeds clusters` and explain."""

    story: Story
    cluster_id: int
    exact_cluster_id: int
    decision: dict[str, Any]


class PollTransaction(Protocol):
    """One batch's reads and writes, under the store's write lock, committed together or not at all."""

    def lookup(self, probe: Probe) -> Found: ...
    def save(self, plan: Plan) -> None: ...
    def save_states(self, states: Sequence[SourceState]) -> None: ...


STORE_MARKER = ".feeds-store"  # written into the publish directory: outputs there came from a store


class Store(Protocol):
    """Everything the pipeline keeps: source states, stories, clusters, published outputs."""

    shared: bool  # several worker processes claim sources from it (leases); else one poller at a time

    def close(self) -> None: ...
    def check(self) -> None: ...
    def poll_lock(self, *, wait: float) -> AbstractContextManager[bool]: ...
    def transaction(self) -> AbstractContextManager[PollTransaction]: ...
    def states(self) -> dict[str, SourceState]: ...
    def due(
        self, now: datetime, *, force: bool = False, limit: int | None = None, names: Collection[str] = (), hosts: int | None = None
    ) -> list[SourceState]: ...
    def release(self) -> None: ...
    def configured_urls(self) -> dict[str, str | None]: ...
    def save_state(self, state: SourceState) -> None: ...
    def save_states(self, states: Sequence[SourceState]) -> None: ...
    def add_states(self, states: Sequence[SourceState]) -> None: ...
    def meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def story_counts(self) -> dict[str, int]: ...
    def cluster_count(self) -> int: ...
    def clusters(self, sources: Iterable[str], *, exact: bool, limit: int) -> list[Cluster]: ...
    def unarchived(self, sources: Iterable[str], *, exact: bool, output: str, before: datetime, limit: int) -> list[Cluster]: ...
    def archive_pages(self, output: str) -> list[int]: ...
    def add_archive_page(self, output: str, page: int, cluster_ids: Sequence[int], *, now: datetime) -> None: ...
    def event_links(self, story_ids: Iterable[str]) -> list[tuple[str, str, EventLink]]: ...
    def expiring(self, *, before: datetime) -> list[tuple[str, str, int, datetime]]: ...
    def source_stories(self, source: str) -> list[str]: ...
    def delete_stories(self, story_ids: Sequence[str], *, now: datetime) -> int: ...
    def shrink(self) -> None: ...
    def stored_story(self, story_id: str) -> StoredStory | None: ...
    def prune_index(self, *, before: datetime) -> int: ...
    def output_digest(self, name: str) -> str | None: ...
    def save_output(self, name: str, digest: str, *, now: datetime) -> None: ...


def open_store(url: str, *, base: Path, must_exist: bool = False, lease: timedelta | None = None) -> Store:
    """Open the store a `storage:` URL names; relative SQLite paths are relative to `base`.
    With `must_exist`, a missing database is an error instead of a new, empty store. `lease`:
    how long a worker's claims last on a shared store."""
    if url.startswith("sqlite:///"):
        from feeds.store.sqlite import SQLiteStore

        raw = url[len("sqlite:///") :]
        path = Path(raw) if raw.startswith("/") else base / raw
        if must_exist and not path.exists():
            raise StoreError(
                f"{path}: the database does not exist, but outputs were published from it (a {STORE_MARKER} file "
                "in the publish directory says so); restore it, or delete that file to start a new, empty store"
            )
        return SQLiteStore(path)
    if url.startswith(("postgresql://", "postgres://")):
        from feeds.store.postgres import PostgresStore

        return PostgresStore(url) if lease is None else PostgresStore(url, lease=lease)
    raise StoreError(f"storage {url!r}: unsupported (use sqlite:///path/to/feeds.db or postgresql://user@host:5432/db)")


# -- codecs shared by the SQL stores ---------------------------------------------------------


def to_epoch(value: datetime | None) -> float | None:
    """Aware datetime -> seconds since the epoch, for SQL columns."""
    return value.timestamp() if value is not None else None


def from_epoch(value: float | None) -> datetime | None:
    """Seconds since the epoch -> aware UTC datetime."""
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def state_to_json(state: SourceState) -> str:
    """A SourceState as JSON text (datetimes as epoch seconds, durations as seconds)."""
    data: dict[str, Any] = {}
    for f in fields(state):
        value = getattr(state, f.name)
        if isinstance(value, datetime):
            value = {"t": value.timestamp()}
        elif isinstance(value, timedelta):
            value = {"s": value.total_seconds()}
        data[f.name] = value
    return json.dumps(data, sort_keys=True)


def state_from_json(text: str) -> SourceState:
    """The inverse of state_to_json; unknown keys (from a newer version) are ignored."""
    values: dict[str, Any] = {}
    for key, raw in json.loads(text).items():
        if key not in _STATE_FIELDS:
            continue
        if type(raw) is dict:
            values[key] = datetime.fromtimestamp(raw["t"], UTC) if "t" in raw else timedelta(seconds=raw["s"]) if "s" in raw else raw
        else:
            values[key] = raw
    return SourceState(**values)


_STATE_FIELDS = frozenset(f.name for f in fields(SourceState))  # a tick decodes every due state: fields() once


def people_to_json(authors: Sequence[Author]) -> str:
    """Authors as JSON text."""
    return json.dumps([[a.name, a.email, a.uri] for a in authors])


def people_from_json(text: str | None) -> tuple[Author, ...]:
    """The inverse of people_to_json."""
    return tuple(Author(*row) for row in json.loads(text or "[]"))


def enclosures_to_json(enclosures: Sequence[Enclosure]) -> str:
    """Enclosures as JSON text."""
    return json.dumps([[e.url, e.type, e.length] for e in enclosures])


def enclosures_from_json(text: str | None) -> tuple[Enclosure, ...]:
    """The inverse of enclosures_to_json."""
    return tuple(Enclosure(*row) for row in json.loads(text or "[]"))


def facts_to_json(facts: EventFacts | None) -> str | None:
    """A story's event facts as JSON text (NULL for a story too short to compare)."""
    return None if facts is None else json.dumps([facts.facts, facts.lead, facts.keys])


def facts_from_json(text: str | None) -> EventFacts | None:
    """The inverse of facts_to_json."""
    if not text:
        return None
    found, lead, keys = json.loads(text)
    return EventFacts(tuple(found), tuple(lead), tuple(keys))


def link_to_json(link: EventLink) -> str:
    """The evidence of a same-event link as JSON text."""
    return json.dumps({"agreed": link.agreed, "conflicts": link.conflicts, "same": link.same})


def link_from_json(score: float, hours: float, text: str) -> EventLink:
    """The inverse of link_to_json, with the link's score and hours from their columns."""
    data = json.loads(text)
    return EventLink(score, bool(data["same"]), tuple(data["agreed"]), tuple(data["conflicts"]), hours)
