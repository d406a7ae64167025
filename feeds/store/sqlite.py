"""The SQLite store: WAL mode, numbered migrations on open, one IMMEDIATE transaction per batch.

Several processes may share one SQLite file (a cron `feeds poll` beside `feeds run`): writers are
serialized by SQLite's lock and wait up to `BUSY_TIMEOUT` seconds, then fail with a clear message;
pollers take turns (`poll_lock`).
"""

from __future__ import annotations

import fcntl
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from feeds.errors import StoreError
from feeds.models import SourceState
from feeds.store import state_from_json, to_epoch
from feeds.store.sql import MIGRATIONS, Row, SQLStore, statements

BUSY_TIMEOUT = 30.0


class SQLiteStore(SQLStore):
    """A Store in one SQLite file."""

    shared = False  # one poller at a time (the poll lock), so no leases

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
                for statement in statements(number, "sqlite"):
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

    def _read(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        try:
            return self._db.execute(sql, parameters).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc

    @contextmanager
    def _write(self, *, assign: bool = False) -> Iterator[sqlite3.Connection]:
        """A write transaction. SQLite has one writer at a time (BEGIN IMMEDIATE), so cluster
        assignment (`assign`) is serialized by every transaction alike."""
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

    def shrink(self) -> None:
        """Give freed pages back to the file system: the first time, switch the file to
        incremental auto-vacuum (a one-time VACUUM rewrites it); after that, an incremental
        vacuum frees only the pages deletes left, without rewriting the file."""
        with self._lock:
            try:
                if int(self._db.execute("PRAGMA auto_vacuum").fetchone()[0]) != 2:
                    self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
                    self._db.execute("VACUUM")
                else:
                    self._db.execute("PRAGMA incremental_vacuum")
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot shrink the database: {exc}") from exc

    def due(
        self, now: datetime, *, force: bool = False, limit: int | None = None, names: Collection[str] = (), hosts: int | None = None
    ) -> list[SourceState]:
        """The stored states due at `now` (of `names` only, if given; all but gone ones with
        `force`), never one inside a Retry-After window: one indexed query, whatever the number
        of sources. (`hosts` is for shared stores: one poller keeps its own per-host limits.)"""
        at = to_epoch(now)
        only = sorted(names)
        query = (
            "SELECT state FROM sources WHERE status != 'gone' AND (? OR next_poll IS NULL OR next_poll <= ?) "
            "AND (retry_after IS NULL OR retry_after <= ?) "
            + (f"AND name IN ({', '.join('?' * len(only))}) " if only else "")
            + "ORDER BY next_poll LIMIT ?"
        )
        return [state_from_json(r[0]) for r in self._read(query, (force, at, at, *only, -1 if limit is None else limit))]

    def release(self) -> None:
        """Nothing to release: SQLite pollers take turns under the poll lock."""
