"""The PostgreSQL store: many worker processes, on many machines, share one database.

- **Schema**: the same numbered migrations as SQLite (`feeds.store.sql`), run on open under a
  session advisory lock, so ten processes starting together run each migration exactly once.
- **Leases**: `due` claims due sources with `SELECT ... FOR UPDATE SKIP LOCKED`, setting
  `claimed_by` and `lease_until`; a claimed source is polled by its claimer alone. Saving its
  polled state ends the claim; a clean end of a cycle (or a shutdown) releases the rest; a worker killed with `kill -9` loses them
  when the lease ends and another worker takes its sources over.
- **Cluster assignment** is serialized across workers: every batch transaction takes a
  transaction-level advisory lock before its lookup, so two workers ingesting copies of one
  story make one cluster and elect one lead.
- **Connections**: a psycopg pool; reads run in autocommit, writes in explicit transactions.
  Every driver error leaves as StoreError; a lost connection is replaced by the pool.

The DSN may carry no password: libpq reads PGPASSWORD or PGPASSFILE, so secrets stay out of the
YAML (and `FEEDS_STORAGE` may hold the whole URL).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from feeds.errors import StoreError
from feeds.models import SourceState
from feeds.store import state_from_json, to_epoch
from feeds.store.sql import MIGRATIONS, Row, SQLStore, statements

MIGRATE_LOCK = 0x66656564_0001  # advisory lock keys: "feed" and a number
CLAIM_LOCK = 0x66656564_0003
ASSIGN_LOCK = 0x66656564_0002
LEASE = timedelta(minutes=10)  # a claimed source is its claimer's this long, unless released
POOL_SIZE = 4


class _Row:
    """A row read by index or by column name, like sqlite3.Row."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: dict[str, int], values: Sequence[Any]) -> None:
        self._names, self._values = names, values

    def __getitem__(self, key: int | str) -> Any:
        return self._values[self._names[key]] if isinstance(key, str) else self._values[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _rows(cursor: Any) -> Callable[[Sequence[Any]], _Row]:
    names = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: _Row(names, values)


@lru_cache(maxsize=512)
def _sql(statement: str) -> str:
    """The shared code's `?` placeholders as psycopg's `%s`."""
    return statement.replace("%", "%%").replace("?", "%s")


class _Connection:
    """A psycopg connection as the shared code's Connection; counts the statements it sends
    (an `executemany` is one: psycopg pipelines its rows)."""

    def __init__(self, connection: psycopg.Connection[Any], store: PostgresStore) -> None:
        self.connection = connection
        self.store = store

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        self.store.statements += 1
        return self.connection.execute(_sql(sql), parameters)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Any]], /) -> Any:
        rows = list(seq_of_parameters)
        cursor = self.connection.cursor()
        if rows:
            self.store.statements += 1
            cursor.executemany(_sql(sql), rows)
        return cursor

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Rows into a table with COPY: one stream, no statement per row."""
        self.store.statements += 1
        with self.connection.cursor() as cursor, cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


def redacted(url: str) -> str:
    """A DSN fit for messages and logs: no password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class PostgresStore(SQLStore):
    """A Store in a PostgreSQL database, shared by worker processes through leases."""

    shared = True

    def __init__(self, url: str, *, lease: timedelta = LEASE, pool_size: int = POOL_SIZE) -> None:
        self.url, self.name, self.lease = url, redacted(url), lease
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._cycle_started: float | None = None  # when this worker's poll cycle first claimed (its clock)
        self.statements = 0  # sent to the database by this process (the benchmark's statements per story)
        try:
            self._pool: ConnectionPool[Any] = ConnectionPool(
                url.replace("postgres://", "postgresql://", 1),
                min_size=1,
                max_size=pool_size,
                kwargs={"autocommit": True, "row_factory": _rows, "application_name": f"feeds {self.worker}"[:63]},
                check=ConnectionPool.check_connection,  # a connection lost (database restarted) is replaced, not used
                timeout=30,
                name="feeds",
                open=False,
            )
            self._pool.open(wait=True, timeout=30)
        except (psycopg.Error, PoolTimeout) as exc:
            raise StoreError(f"{self.name}: cannot connect to the database: {exc}") from exc
        try:
            self._migrate()
        except psycopg.Error as exc:
            self._pool.close()
            raise StoreError(f"{self.name}: cannot prepare the database: {exc}") from exc

    def close(self) -> None:
        """Release this worker's claims and close the connections."""
        with suppress(StoreError):  # the database is gone: the leases end by themselves
            self.release()
        self._pool.close()

    def check(self) -> None:
        """Raise StoreError if the database cannot be reached."""
        self._read("SELECT 1")

    @contextmanager
    def poll_lock(self, *, wait: float) -> Iterator[bool]:
        """Workers poll side by side: each claims its own sources (`due`), so there is no store-wide lock."""
        yield True

    # -- schema -------------------------------------------------------------------------------

    def _migrate(self) -> None:
        with self._pool.connection() as connection:
            connection.execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK,))
            try:
                connection.execute("CREATE TABLE IF NOT EXISTS feeds_schema (version INTEGER NOT NULL)")
                row = connection.execute("SELECT version FROM feeds_schema").fetchone()
                version = int(row[0]) if row else 0
                if version > len(MIGRATIONS):
                    raise StoreError(f"{self.name}: schema version {version} is newer than this feeds ({len(MIGRATIONS)}); upgrade feeds")
                for number in range(version + 1, len(MIGRATIONS) + 1):
                    with connection.transaction():
                        for statement in statements(number, "postgresql"):
                            connection.execute(statement)
                        connection.execute("DELETE FROM feeds_schema")
                        connection.execute("INSERT INTO feeds_schema VALUES (%s)", (number,))
            finally:
                connection.execute("SELECT pg_advisory_unlock(%s)", (MIGRATE_LOCK,))

    @property
    def schema_version(self) -> int:
        """The migration the database is at."""
        row = self._one("SELECT version FROM feeds_schema")
        return int(row[0]) if row else 0

    def _read(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        try:
            with self._pool.connection() as connection:
                self.statements += 1
                rows: list[Row] = connection.execute(_sql(sql), parameters).fetchall()
                return rows
        except (psycopg.Error, PoolTimeout) as exc:
            raise StoreError(f"{self.name}: {exc}") from exc

    @contextmanager
    def _write(self, *, assign: bool = False) -> Iterator[_Connection]:
        """A write transaction; one that assigns clusters first takes the assignment lock, so
        batches of all workers are looked up and saved one after another."""
        try:
            with self._pool.connection() as connection, connection.transaction():
                if assign:
                    connection.execute("SELECT pg_advisory_xact_lock(%s)", (ASSIGN_LOCK,))
                yield _Connection(connection, self)
        except (psycopg.Error, PoolTimeout) as exc:
            raise StoreError(f"{self.name}: {exc} (nothing of this transaction was saved)") from exc

    # -- leases -------------------------------------------------------------------------------

    def due(
        self, now: datetime, *, force: bool = False, limit: int | None = None, names: Collection[str] = (), hosts: int | None = None
    ) -> list[SourceState]:
        """Claim up to `limit` sources due at `now` (of `names` only, if given) that no other
        worker holds, never one inside a Retry-After window; they stay this worker's until they
        are saved polled, `release`, or the end of the lease. With `force`, every source not gone
        and not polled (by any worker) since this worker's cycle began is due.

        Per-host politeness across workers: a source whose host another worker holds a live claim
        on is left alone, so one host is polled by one worker at a time and `fetch.per_host` holds
        for the whole cluster. A claim takes sources of at most `hosts` hosts (those it holds
        first), leaving the other hosts to the other workers. Claims are serialized (an advisory
        lock), so two workers never take one host at the same moment. A claim looks at the
        earliest 4 x `limit` due sources only; those on hosts others hold are theirs to take."""
        at = to_epoch(now)
        assert at is not None
        if self._cycle_started is None:
            self._cycle_started = time.time()
        only = sorted(names)
        window = limit * 4 if limit else None  # due sources considered per claim: a claim costs the same at any size
        chosen = (
            "WITH candidates AS (SELECT name, host, next_poll FROM sources WHERE status != 'gone' "
            "AND ((? AND (polled_at IS NULL OR polled_at < ?)) OR next_poll IS NULL OR next_poll <= ?) "
            "AND (retry_after IS NULL OR retry_after <= ?) AND (lease_until IS NULL OR lease_until < ?) "
            + (f"AND name IN ({', '.join('?' * len(only))}) " if only else "")
            + "ORDER BY next_poll NULLS FIRST LIMIT ?), "
            "free AS (SELECT * FROM candidates c WHERE host IS NULL OR NOT EXISTS "
            "(SELECT 1 FROM sources o WHERE o.host = c.host AND o.claimed_by != ? AND o.lease_until >= ?)), "
            "hosts AS (SELECT host FROM free WHERE host IS NOT NULL GROUP BY host "
            "ORDER BY host IN (SELECT host FROM sources WHERE claimed_by = ? AND lease_until >= ?) DESC, "
            "MIN(next_poll) NULLS FIRST LIMIT ?) "
            "UPDATE sources SET claimed_by = ?, lease_until = ? WHERE name IN ("
            "SELECT name FROM sources WHERE name IN (SELECT name FROM free WHERE host IS NULL OR host IN (SELECT host FROM hosts)) "
            "ORDER BY next_poll NULLS FIRST LIMIT ? FOR UPDATE SKIP LOCKED) RETURNING state"
        )
        parameters = (
            *(force, self._cycle_started, at, at, at, *only, window),
            *(self.worker, at, self.worker, at, hosts),
            *(self.worker, at + self.lease.total_seconds(), limit),
        )
        with self._write() as db:
            db.execute("SELECT pg_advisory_xact_lock(?)", (CLAIM_LOCK,))
            rows = db.execute(chosen, parameters).fetchall()
        return [state_from_json(r[0]) for r in rows]

    def release(self) -> None:
        """Give up every claim of this worker (its sources may be polled by others at once) and
        end its cycle."""
        self._cycle_started = None
        with self._write() as db:
            db.execute("UPDATE sources SET claimed_by = NULL, lease_until = NULL WHERE claimed_by = ?", (self.worker,))
