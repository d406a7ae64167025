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
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class WorkerTimeoutError(Exception):
    """A call ran longer than its limit and was abandoned."""


class WorkerDiedError(Exception):
    """The worker process running a call died."""


class Runner(Protocol):
    """Runs one call of a pure, picklable function; raises what it raised, or a worker error."""

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...
    def close(self) -> None: ...


class Inline:
    """Runs calls in the calling thread: no isolation, no limit."""

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call fn(*args, **kwargs)."""
        return fn(*args, **kwargs)

    def close(self) -> None:
        """Nothing to release."""


class Isolated:
    """Runs calls in worker processes, each within `timeout` seconds; thread-safe."""

    def __init__(self, *, workers: int = 1, timeout: float = 30.0, preload: tuple[str, ...] = ("feeds.parse",)) -> None:
        self.workers = max(1, workers)
        self.timeout = timeout
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(list(preload))
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=self._context)
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

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(*args, **kwargs) in a worker; WorkerTimeoutError after `timeout` s, WorkerDiedError
        if the worker dies. A call lost because another call's overrun replaced the workers is
        run again once."""
        for attempt in (1, 2):
            pool = self._executor()
            try:
                future = pool.submit(fn, *args, **kwargs)
                return future.result(timeout=self.timeout)
            except FutureTimeout:
                log.warning("worker-timeout limit=%ss action=replace-workers", self.timeout)
                self._replace(pool)
                raise WorkerTimeoutError(f"took longer than {self.timeout:.0f}s (a hostile or broken feed?); abandoned") from None
            except (BrokenProcessPool, RuntimeError) as exc:
                replaced_by_another = self._pool is not pool
                self._replace(pool)
                if attempt == 2 or not replaced_by_another:
                    raise WorkerDiedError("the worker process died while parsing (out of memory, or a crash)") from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Stop the workers at once (they hold nothing but the call they may be stuck in)."""
        with self._lock:
            pool = self._pool
        if pool is not None:
            self._replace(pool)
