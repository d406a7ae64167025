"""Worker processes: calls run in parallel under a time limit; a stuck or dying call costs only itself."""

from __future__ import annotations

import os
import pickle
import time

from feeds.errors import ConfigError, ParseError, SourceError
from feeds.workers import Inline, Isolated, WorkerDiedError, WorkerTimeoutError


def behave(how: str, value: int) -> int:
    """A call that finishes, hangs, dies or raises, as told (module-level: workers import it)."""
    if how == "hang":
        time.sleep(3600)
    if how == "die":
        os._exit(1)
    if how == "raise":
        raise ParseError(f"s{value}", "not a feed: broken")
    return value * 2


def test_a_stuck_call_is_abandoned_and_the_others_finish() -> None:
    runner = Isolated(workers=2, timeout=1.5, preload=())
    calls = [(i, ("hang" if i == 3 else "ok", i)) for i in range(8)]
    try:
        started = time.monotonic()
        results = dict(runner.imap(behave, iter(calls)))
        assert time.monotonic() - started < 10
        assert isinstance(results[3], WorkerTimeoutError) and "longer than 2s" in str(results[3])
        assert {k: v for k, v in results.items() if k != 3} == {i: i * 2 for i in range(8) if i != 3}
        assert runner.run(behave, "ok", 21) == 42  # the replaced workers serve on
    finally:
        runner.close()


def test_a_dying_call_fails_alone_and_errors_cross_back_whole() -> None:
    runner = Isolated(workers=2, timeout=30, preload=())
    calls = [(i, ("die" if i == 2 else "raise" if i == 5 else "ok", i)) for i in range(7)]
    try:
        results = dict(runner.imap(behave, iter(calls)))
        assert isinstance(results[2], WorkerDiedError)  # run again by itself, it died again: the culprit
        assert isinstance(results[5], ParseError) and results[5].source == "s5" and results[5].message == "not a feed: broken"
        assert {k: v for k, v in results.items() if k not in (2, 5)} == {i: i * 2 for i in range(7) if i not in (2, 5)}
    finally:
        runner.close()


def test_inline_runs_in_order_and_errors_pickle() -> None:
    assert list(Inline().imap(behave, [(1, ("ok", 1)), (2, ("ok", 2))])) == [(1, 2), (2, 4)]
    for error in (ParseError("src", "bad"), SourceError("src", "gone"), ConfigError(["f:1: x: y"])):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
