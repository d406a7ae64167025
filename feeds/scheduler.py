"""The daemon's clock: an APScheduler tick job polls due sources and republishes on change.

The scheduler decides when, nothing else: due-ness lives in the store (SourceState.next_poll), so
restarts keep each source's schedule and `feeds poll` shares the same path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from feeds.config import load_settings
from feeds.errors import ConfigError, FeedsError
from feeds.fetch import Fetcher
from feeds.models import Settings
from feeds.poll import poll_due
from feeds.publish import damaged_outputs, publish_all
from feeds.retention import retain
from feeds.store import Store
from feeds.workers import Runner

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]


SEEN_EVERY = timedelta(minutes=1)  # how often a running daemon notes in the store that it runs (`feeds status`)
Role = Literal["all", "worker", "publisher"]  # what a daemon does: poll and publish, poll only, publish only


def config_stamp(settings: Settings) -> tuple[int, int] | None:
    """When and how the config file last changed (None: it is gone)."""
    try:
        stat = settings.path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size)


def config_digest(path: Path) -> str:
    """The config file's content as a digest: what `feeds status` compares a daemon's with."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return ""


def utc_now() -> datetime:
    """The wall clock, aware UTC; the daemon's only clock."""
    return datetime.now(UTC)


class _SkippedTicks(logging.Filter):
    """A tick still running when the next is due is not news: the next one starts when it ends
    (coalesced). APScheduler would log a warning for every skipped tick; they are counted into
    one line per busy spell instead (`tick-busy`, at INFO, when the long tick ends)."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if "maximum number of running instances" in str(record.msg):
            self.skipped += 1
            return False
        return True


_SKIPPED = _SkippedTicks()
logging.getLogger("apscheduler.scheduler").addFilter(_SKIPPED)


class Daemon:
    """Polls on schedule and publishes when anything changed, until stopped."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        fetcher: Fetcher,
        *,
        clock: Clock = utc_now,
        announce: Callable[[list[str]], None] | None = None,
        subscribe: Callable[[Store, datetime], object] | None = None,
        runner: Runner | None = None,
        role: Role = "all",
    ) -> None:
        self.settings = settings
        self.role = role
        self.store = store
        self.fetcher = fetcher
        self.clock = clock
        self.announce = announce or (lambda written: None)
        self.subscribe = subscribe
        self.runner = runner
        self.stopping = threading.Event()
        self.last_tick: datetime | None = None
        self.error: str | None = None  # what went wrong in the last tick, until one succeeds
        self.publish_pending = False
        self.reload_requested = False  # SIGHUP: read the config again at the next tick
        self.repaired: dict[str, Any] | None = None  # the last outputs found damaged and written again
        self._verified: dict[str, object] = {}  # output -> file stamps that matched its digest
        self._config_seen = config_stamp(settings)
        self._seen_written: datetime | None = None
        from apscheduler.schedulers.background import BackgroundScheduler  # only the daemon pays its import

        self._scheduler = BackgroundScheduler(timezone=UTC)
        self._lock = threading.Lock()

    def reload(self) -> bool:
        """Read the config file again and run with it from now on (new and removed sources,
        intervals, outputs and their rules). A file with errors keeps the running config: every
        problem is logged with its file and line, and nothing is tried again until the file
        changes. Returns True when the new config is in use."""
        self.reload_requested = False
        self._config_seen = config_stamp(self.settings)
        try:
            fresh = load_settings(self.settings.path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload-refused problem=%s", problem)
            log.error("reload-refused action=keep-running-config errors=%d", len(exc.problems))
            return False
        self.settings = fresh
        self.fetcher.private_sources = frozenset(s.name for s in fresh.sources if s.private)
        self.publish_pending = True
        self.store.set_meta("daemon_config", config_digest(fresh.path))
        log.info("config-reloaded sources=%d outputs=%d", len(fresh.sources), len(fresh.outputs))
        return True

    def tick(self) -> None:
        """One cycle: poll what is due (role worker or all); publish if any story is new or
        changed (all), or whenever the store holds something the outputs do not show yet
        (publisher: another node polled it; outputs are only rewritten when they changed).
        Never raises."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            now = self.clock()
            self.store.check()
            if self.reload_requested or config_stamp(self.settings) != self._config_seen:
                self.reload()
            if self._seen_written is None or now - self._seen_written >= SEEN_EVERY:  # not a write every tick
                self.store.set_meta("daemon_seen", str(now.timestamp()))
                self._seen_written = now
            if self.role != "publisher":
                outcomes = poll_due(
                    self.settings, self.store, self.fetcher, now=now, stop=self.stopping, skip_if_busy=True, runner=self.runner
                )
                # A publish that failed (disk full, directory gone) is retried every tick until it works;
                # outputs deleted behind our back are written again.
                self.publish_pending |= any(o.new or o.updated for o in outcomes)
            self.last_tick = now
            if self.role != "worker":
                damaged = damaged_outputs(self.settings, self.store, self._verified)
                if damaged:
                    log.warning("outputs-damaged outputs=%s action=republish", ",".join(damaged))
                    self.publish_pending = True
                if self.publish_pending or self.role == "publisher":
                    self.announce(publish_all(self.settings, self.store, now=self.clock()))
                    self.publish_pending = False
                    if damaged:
                        self.repaired = {"at": now.isoformat(), "outputs": damaged}
                if retain(self.settings, self.store, now=now):  # at most daily
                    self.publish_pending = True
            if self.subscribe is not None and self.role != "publisher":
                self.subscribe(self.store, self.clock())
            self.error = None
        except FeedsError as exc:
            self.error = str(exc)
            log.error("tick-failed error=%s", exc)
        except Exception as exc:
            self.error = f"internal error: {type(exc).__name__}: {exc}"
            log.exception("tick-crashed")
        finally:
            self._lock.release()
            if _SKIPPED.skipped:
                log.info("tick-busy skipped=%d reason=the previous tick ran longer than the interval", _SKIPPED.skipped)
                _SKIPPED.skipped = 0

    def start(self) -> None:
        """Publish what the store holds (unless a worker), then start ticking in the background."""
        if self.role != "worker":
            self.announce(publish_all(self.settings, self.store, now=self.clock()))
        self._scheduler.add_job(
            self.tick,
            "interval",
            seconds=self.settings.tick.total_seconds(),
            id="tick",
            next_run_time=self.clock(),
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
        self._scheduler.start()
        self.store.set_meta("daemon_config", config_digest(self.settings.path))
        log.info(
            "daemon-started sources=%d outputs=%d tick=%ss",
            len(self.settings.sources),
            len(self.settings.outputs),
            self.settings.tick.total_seconds(),
        )

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy when the scheduler ticked recently, the last tick succeeded (publishing
        included), and the store answers."""
        now = self.clock()
        late = self.settings.tick * 3 + timedelta(seconds=60)
        ticking = self._scheduler.running and self.last_tick is not None and now - self.last_tick <= late
        try:
            states = self.store.states()
        except Exception as exc:
            return False, {"scheduler": "running" if ticking else "stalled", "store": f"unreachable: {exc}"}
        sources = {
            name: {"status": s.status, "failures": s.failures, "error": s.error}
            for name, s in sorted(states.items())
            if self.settings.source(name) is not None
        }
        payload = {
            "scheduler": "running" if ticking else "stalled",
            "last_tick": self.last_tick.isoformat() if self.last_tick else None,
            "error": self.error,
            "store": "ok",
            "failing": sum(1 for s in sources.values() if s["status"] in ("failing", "gone")),
            "repaired": self.repaired,  # outputs found missing or damaged, and written again
            "sources": sources,
        }
        return ticking and self.error is None, payload

    def request_stop(self) -> None:
        """Stop polling now: no new work, and requests in flight end now, not at their read timeout."""
        self.stopping.set()
        self.fetcher.abort()

    def stop(self) -> None:
        """Stop ticking; the source being processed finishes its transaction, the rest are abandoned."""
        self.request_stop()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
        log.info("daemon-stopped")

    def on_sighup(self, signum: int, frame: FrameType | None) -> None:
        """SIGHUP: read the config again now (as daemons do), not at the next tick, which may be
        far off; a tick in progress picks the request up when it ends."""
        log.info("signal name=SIGHUP action=reload")
        self.reload_requested = True

        def reload_now() -> None:
            if self._lock.acquire(timeout=60):
                try:
                    if self.reload_requested:
                        self.reload()
                finally:
                    self._lock.release()

        threading.Thread(target=reload_now, name="feeds-reload", daemon=True).start()

    def run_forever(self) -> None:
        """Start, then block until SIGINT or SIGTERM, then stop cleanly."""

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if self.stopping.is_set():  # a second signal: the user will not wait
                log.warning("signal name=%s action=exit-now", signal.Signals(signum).name)
                os._exit(128 + signum)
            log.info("signal name=%s action=stop", signal.Signals(signum).name)
            self.request_stop()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self.on_sighup)
        try:
            self.start()
            while not self.stopping.wait(1.0):
                pass
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
