"""Running pure stages in worker processes, each call under a time limit.

Parsing runs feedparser and regexes we do not own on bytes we did not write; a few inputs make
them take minutes (one regex of feedparser's is quadratic in an author's length). In a worker
process a call that overruns its limit is abandoned: the worker is killed and replaced, the call
fails with a clear message naming the limit, and the daemon goes on. A worker that dies (a crash,
the kernel's OOM killer) fails only the call it was running. Errors cross back pickled.

Workers are forked from a fork server started before any thread of ours, so they never inherit a
lock some thread held. `Inline` runs calls in the calling thread, for tests and one-shot tools.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
K = TypeVar("K")


class WorkerTimeoutError(Exception):
    """A call ran longer than its limit and was abandoned."""


class WorkerDiedError(Exception):
    """The worker process running a call died."""


class Runner(Protocol):
    """Runs calls of a pure, picklable function: one (`run` raises what it raised, or a worker
    error), or a stream (`imap` yields each key with its result or its exception, as they finish)."""

    def run(self, fn: Callable[..., T], *args: Any) -> T: ...
    def imap(self, fn: Callable[..., T], calls: Iterable[tuple[K, tuple[Any, ...]]]) -> Iterator[tuple[K, T | Exception]]: ...
    def close(self) -> None: ...


class Inline:
    """Runs calls in the calling thread: no isolation, no limit."""

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Call fn(*args)."""
        return fn(*args)

    def imap(self, fn: Callable[..., T], calls: Iterable[tuple[K, tuple[Any, ...]]]) -> Iterator[tuple[K, T | Exception]]:
        """fn(*args) for each (key, args), one after the other."""
        for key, args in calls:
            try:
                yield key, fn(*args)
            except Exception as exc:
                yield key, exc

    def close(self) -> None:
        """Nothing to release."""


class Isolated:
    """Runs calls in worker processes, each within `timeout` seconds; thread-safe."""

    def __init__(self, *, workers: int = 1, timeout: float = 30.0, preload: tuple[str, ...] = ("feeds.prepare",)) -> None:
        self.workers = max(1, workers)
        self.timeout = timeout
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(list(preload))
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=self._context, initializer=_ignore_interrupts)
            return self._pool

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """Kill the pool's workers (one may be stuck in a regex forever) and start afresh."""
        with self._lock:
            if self._pool is not broken:
                return  # another thread replaced it already
            self._pool = None
        for process in list((getattr(broken, "_processes", None) or {}).values()):
            process.kill()
        broken.shutdown(wait=False, cancel_futures=True)

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in a worker; WorkerTimeoutError after `timeout` s, WorkerDiedError if the
        worker dies, or what fn raised."""
        outcome = self._call(fn, args)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def imap(self, fn: Callable[..., T], calls: Iterable[tuple[K, tuple[Any, ...]]]) -> Iterator[tuple[K, T | Exception]]:
        """fn(*args) for each (key, args) in the workers, yielded as each finishes. `calls` is read
        only as workers free up (back-pressure: a fetcher behind it is not run far ahead), so a
        call starts when it is submitted and its time limit is real. A call over the limit yields
        WorkerTimeoutError; the workers are then replaced and the calls they were running start
        again. When a worker dies, each call then running runs again by itself, so the one that
        kills a worker alone yields WorkerDiedError and the others their results."""
        # `calls` is read by a feeder thread: a call that is slow to arrive (a fetch still
        # reading) must not hold back the results of calls already done.
        inbox: queue.Queue[tuple[K, tuple[Any, ...]] | _End] = queue.Queue(maxsize=self.workers)
        closed = threading.Event()

        def put(item: tuple[K, tuple[Any, ...]] | _End) -> bool:
            """Hand one item over; False once the consumer has gone."""
            while not closed.is_set():
                try:
                    inbox.put(item, timeout=0.2)
                    return True
                except queue.Full:
                    continue
            return False

        def feed() -> None:
            try:
                for item in calls:
                    if not put(item):
                        return
            except BaseException as exc:  # handed to the consumer, raised there
                put(_End(exc))
                return
            put(_End(None))

        threading.Thread(target=feed, name="feeds-imap-feed", daemon=True).start()
        running: dict[Future[T], tuple[K, tuple[Any, ...], float]] = {}  # key, args, started
        exhausted = False
        try:
            while True:
                while not exhausted and len(running) < self.workers:
                    try:
                        nxt = inbox.get(block=not running)
                    except queue.Empty:
                        break
                    if isinstance(nxt, _End):
                        exhausted = True
                        if nxt.error is not None:
                            raise nxt.error
                        break
                    key, args = nxt
                    running[self._executor().submit(fn, *args)] = (key, args, time.monotonic())
                if not running:
                    return
                first = min(started for _, _, started in running.values())
                limit = max(0.0, first + self.timeout - time.monotonic())
                if not exhausted and len(running) < self.workers:
                    limit = min(limit, _ADMIT)  # a free worker: look for a newly arrived call soon
                done, _ = wait(running, timeout=limit, return_when=FIRST_COMPLETED)
                yield from self._settle(done, running, fn)
        finally:
            closed.set()

    def _settle(
        self, done: set[Future[T]], running: dict[Future[T], tuple[K, tuple[Any, ...], float]], fn: Callable[..., T]
    ) -> Iterator[tuple[K, T | Exception]]:
        """Yield the calls that finished; deal with overruns and deaths as `imap` says."""
        lost: list[tuple[K, tuple[Any, ...]]] = []
        for future in done:
            key, args, _ = running.pop(future)
            try:
                yield key, future.result()
            except BrokenProcessPool:
                lost.append((key, args))
            except Exception as exc:
                yield key, exc
        now = time.monotonic()
        overdue = [f for f, (_, _, started) in running.items() if now - started >= self.timeout]
        for future in overdue:
            key, _, _ = running.pop(future)
            log.warning("worker-timeout limit=%ss action=replace-workers", self.timeout)
            yield key, WorkerTimeoutError(f"took longer than {self.timeout:.0f}s (a hostile or broken feed?); abandoned")
        if overdue or lost:
            # The workers are killed (one may be stuck for good) and what they held starts again:
            # after a death every call then running is a suspect, run by itself; after an
            # overrun, none is.
            others = [(key, args) for key, args, _ in running.values()]
            suspects, innocent = (lost + others, []) if lost else ([], others)
            running.clear()
            with self._lock:
                pool = self._pool
            if pool is not None:
                self._replace(pool)
            for key, args in suspects:
                yield key, self._call(fn, args)
            for key, args in innocent:
                running[self._executor().submit(fn, *args)] = (key, args, time.monotonic())

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T | Exception:
        """One call by itself: its result, or its exception. A call lost because another thread
        replaced the workers (its call overran) runs again once; one that kills a worker fails."""
        for attempt in (1, 2):
            pool = self._executor()
            try:
                return pool.submit(fn, *args).result(timeout=self.timeout)
            except FutureTimeout:
                log.warning("worker-timeout limit=%ss action=replace-workers", self.timeout)
                self._replace(pool)
                return WorkerTimeoutError(f"took longer than {self.timeout:.0f}s (a hostile or broken feed?); abandoned")
            except (BrokenProcessPool, RuntimeError):
                replaced_by_another = self._pool is not pool
                self._replace(pool)
                if attempt == 2 or not replaced_by_another:
                    return WorkerDiedError("the worker process died while parsing (out of memory, or a crash)")
            except Exception as exc:
                return exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Stop the workers at once (they hold nothing but the call they may be stuck in)."""
        with self._lock:
            pool = self._pool
        if pool is not None:
            self._replace(pool)


def _ignore_interrupts() -> None:
    """Workers leave Ctrl-C to the main process: the terminal sends SIGINT to the whole process
    group, and a worker's KeyboardInterrupt would print a traceback and break the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


_ADMIT = 0.05  # seconds a free worker waits before looking for a newly arrived call


class _End:
    """The end of `imap`'s calls, with the error that ended them, if any."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error
