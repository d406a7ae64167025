"""Polling: fetch -> policy -> parse -> normalize -> dedupe -> store, one transaction per source.

Failure is data: a source that cannot be fetched or parsed gets a failing state and the loop goes
on; an unexpected exception is logged with its traceback and recorded on the source.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from feeds import dedupe, policy
from feeds.errors import StoreError
from feeds.fetch import Fetcher
from feeds.metrics import record_poll
from feeds.models import FetchResult, Fingerprint, OutcomeStatus, PollOutcome, Settings, Source, SourceState, Story, word
from feeds.normalize import stable_hash
from feeds.prepare import Options, Prepared, prepare
from feeds.store import PollTransaction, Store
from feeds.timeutil import to_rfc3339
from feeds.workers import Inline, Runner, WorkerDiedError, WorkerTimeoutError

log = logging.getLogger(__name__)
STATE_BATCH = 200  # states of polls that stored nothing else, saved per transaction
STORY_BATCH = 25  # sources whose new stories are stored per transaction
STORE_IDLE = 0.5  # seconds without a newly prepared source after which the writer stores what it has
CLAIM = 250  # sources a worker claims at a time from a shared store


@dataclass(frozen=True, slots=True)
class _SourceIndex:
    """What due selection needs of the configured sources, computed once per configuration."""

    sources: tuple[Source, ...]  # held, so the cache key (its id) stays this object's
    digest: str
    by_name: dict[str, tuple[int, Source]]
    priorities: dict[str, int]


_INDEXES: dict[int, _SourceIndex] = {}


def _index(settings: Settings) -> _SourceIndex:
    """The configured sources by name and their digest: a daemon tick costs the same at 100,000
    sources as at 1,000 (the config is immutable, so this is computed once, not every tick)."""
    cached = _INDEXES.get(id(settings.sources))
    if cached is not None and cached.sources is settings.sources:
        return cached
    digest = stable_hash(*(f"{s.name}\t{s.url}" for s in settings.sources))
    index = _SourceIndex(
        settings.sources,
        digest,
        {s.name: (i, s) for i, s in enumerate(settings.sources)},
        {s.name: s.priority for s in settings.sources if s.priority},
    )
    if len(_INDEXES) >= 4:
        _INDEXES.clear()
    _INDEXES[id(settings.sources)] = index
    return index


def sync_sources(settings: Settings, store: Store) -> None:
    """Give every configured source a stored state (a new source, or one whose URL changed in the
    config, starts afresh), so due selection is one query. Skipped while the config's sources
    are the ones last synced."""
    digest = _index(settings).digest
    if store.meta("sources_digest") == digest:
        return
    stored = store.configured_urls()
    fresh = [policy.initial_state(s) for s in settings.sources if stored.get(s.name, "") != s.url]
    if fresh:
        store.add_states(fresh)
    store.set_meta("sources_digest", digest)


def due_sources(
    settings: Settings, store: Store, *, now: datetime, force: bool = False, names: Collection[str] = ()
) -> list[tuple[Source, SourceState]]:
    """The configured sources to poll now, with their states."""
    return _claim(settings, store, now=now, force=force, names=names, limit=None)[0]


def _claim(
    settings: Settings, store: Store, *, now: datetime, force: bool, names: Collection[str], limit: int | None
) -> tuple[list[tuple[Source, SourceState]], int]:
    """Due sources (claimed, on a shared store), in config order, and how many rows the store
    gave (some may be left out: no longer configured, not asked for)."""
    sync_sources(settings, store)
    configured = _index(settings).by_name
    plan = []
    # Workers sharing a store take whole hosts, as many as this one's fetch window keeps busy at
    # its per-host limit, and leave the other hosts to the other workers.
    hosts = -(-settings.fetch.workers // max(settings.fetch.per_host, 1))
    claimed = store.due(now, force=force, limit=limit, names=names, hosts=hosts)
    for stored in claimed:
        order, source = configured.get(stored.name, (0, None))
        if source is None or (names and source.name not in names):
            continue  # a source no longer configured, or not asked for
        state = policy.reconcile(stored, source)
        if policy.is_due(state, now=now, force=force):
            plan.append((order, source, state))
    return [(source, state) for _, source, state in sorted(plan, key=lambda p: p[0])], len(claimed)


def poll_due(
    settings: Settings,
    store: Store,
    fetcher: Fetcher,
    *,
    now: datetime,
    force: bool = False,
    names: Collection[str] = (),
    stop: threading.Event | None = None,
    progress: Callable[[int, int, PollOutcome], None] | None = None,
    lock_wait: float = 0.0,
    skip_if_busy: bool = False,
    runner: Runner | None = None,
) -> list[PollOutcome]:
    """Poll every due source once (fetches run in parallel); return what each poll did.
    `progress(done, total, outcome)` is told after each source.

    On a store of one poller (SQLite) the cycle holds the store's poll lock, so processes
    sharing it never poll one source twice: a lock held by another process is waited for
    `lock_wait` seconds; if it is still held, nothing is polled (`skip_if_busy`, the daemon's
    next tick comes soon) or StoreError. On a shared store (PostgreSQL) workers claim sources in
    chunks of CLAIM until none is left, and release their claims when the cycle ends."""
    with store.poll_lock(wait=lock_wait) as locked:
        if not locked:
            if not skip_if_busy:
                raise StoreError(f"another feeds process has been polling this store for {lock_wait:.0f}s; try again later")
            log.info("poll-skipped reason=another process is polling this store")
            return []
        run = runner or Inline()
        if not store.shared:
            plan = due_sources(settings, store, now=now, force=force, names=names)
            return _poll_cycle(settings, store, fetcher, plan, now=now, stop=stop, progress=progress, runner=run)
        outcomes: list[PollOutcome] = []
        try:
            while not (stop is not None and stop.is_set()):
                plan, claimed = _claim(settings, store, now=now, force=force, names=names, limit=CLAIM)
                if not claimed:
                    break
                outcomes += _poll_cycle(settings, store, fetcher, plan, now=now, stop=stop, progress=progress, runner=run)
        finally:
            store.release()
        return outcomes


def _poll_cycle(
    settings: Settings,
    store: Store,
    fetcher: Fetcher,
    plan: Sequence[tuple[Source, SourceState]],
    *,
    now: datetime,
    stop: threading.Event | None,
    progress: Callable[[int, int, PollOutcome], None] | None,
    runner: Runner,
) -> list[PollOutcome]:
    """Fetch (threads) -> prepare (worker processes, several sources at once) -> store (a writer
    thread, up to STORY_BATCH sources per transaction, or fewer after STORE_IDLE seconds without
    more, while the workers prepare the next ones).
    Fetches run only as far ahead as preparing keeps up, and preparing only as far ahead as
    storing does (bounded queues all the way)."""
    plan = [(rebased(store, source, now=now), state) for source, state in plan]
    sources = {state.name: (source, state) for source, state in plan}
    fetched: dict[str, FetchResult] = {}
    outcomes: list[PollOutcome] = []
    results = fetcher.fetch_many(state for _, state in plan)
    options = Options(settings.max_entries, settings.dedupe)
    states_only: list[SourceState] = []  # polls that store nothing but a state: saved in batches
    # Prepared sources go to the writer one by one; it stores them STORY_BATCH at a time, or as
    # soon as none has come for STORE_IDLE seconds, so one slow source never holds back what the
    # others brought (and a stop keeps everything prepared before it).
    writes: queue.Queue[tuple[Source, SourceState, FetchResult, Prepared] | None] = queue.Queue(maxsize=2 * STORY_BATCH)
    reporting = threading.Lock()

    def done(outcome: PollOutcome) -> None:
        with reporting:
            outcomes.append(outcome)
            if progress is not None:
                progress(len(outcomes), len(plan), outcome)

    def store_work(work: list[tuple[Source, SourceState, FetchResult, Prepared]]) -> None:
        try:
            for outcome in _store_batch(settings, store, work, now=now):
                done(outcome)
        except Exception:  # _store_batch never raises; should it, the cycle must not hang
            log.exception("batch-not-stored sources=%d", len(work))

    def writer() -> None:
        work: list[tuple[Source, SourceState, FetchResult, Prepared]] = []
        while True:
            try:
                item = writes.get(timeout=STORE_IDLE if work else None)
            except queue.Empty:
                store_work(work)
                work = []
                continue
            if item is None:
                break
            work.append(item)
            if len(work) >= STORY_BATCH:
                store_work(work)
                work = []
        if work:
            store_work(work)

    def calls() -> Iterator[tuple[str, tuple[Any, ...]]]:
        for state, result in results:
            if stop is not None and stop.is_set():
                results.close()  # fetches not started are cancelled: those sources stay due
                return
            source = sources[state.name][0]
            if result.error is None and policy.body_changed(state, result):
                fetched[state.name] = result
                yield state.name, (source, state, result, options, now)
                continue
            # Nothing to parse (304, the same body, a failure): decided here, no worker needed.
            try:
                prepared = prepare(source, state, result, options, now)
            except Exception as exc:  # a bug must cost this source alone, never the cycle
                done(store_prepared(settings, store, source, state, result, prepared=exc, now=now))
                continue
            states_only.append(prepared.state)
            done(_outcome(source, result, prepared, 0, 0))
            if len(states_only) >= STATE_BATCH:
                _save_states(store, states_only)

    thread = threading.Thread(target=writer, name="feeds-store", daemon=True)
    thread.start()
    try:
        for name, prepared in runner.imap(prepare, calls()):
            if stop is not None and stop.is_set():
                # Sources not yet stored keep their state: they are due again on the next run.
                log.info("poll-abandoned left=%d reason=shutdown", len(plan) - len(outcomes) - writes.qsize())
                break
            source, state = sources[name]
            if isinstance(prepared, Prepared):
                writes.put((source, state, fetched.pop(name), prepared))
            else:
                done(store_prepared(settings, store, source, state, fetched.pop(name), prepared=prepared, now=now))
    finally:
        writes.put(None)
        thread.join()
    _save_states(store, states_only)
    if any(o.new for o in outcomes):
        prune(settings, store, now=now)
    return outcomes


def rebased(store: Store, source: Source, *, now: datetime) -> Source:
    """A source whose dates are rebased (the bundled samples) with its shift: the time between
    its `rebase` instant and this store's first poll of a source rebased on that instant (kept
    in the store, so every later poll and every such source shifts alike)."""
    if source.rebase is None:
        return source
    key = f"rebase:{to_rfc3339(source.rebase)}"
    first = store.meta(key)
    if first is None:
        first = str(now.timestamp())
        store.set_meta(key, first)
    return replace(source, shift=datetime.fromtimestamp(float(first), UTC) - source.rebase)


def process_result(
    settings: Settings,
    store: Store,
    source: Source,
    state: SourceState,
    result: FetchResult,
    *,
    now: datetime,
    runner: Runner | None = None,
) -> PollOutcome:
    """Prepare and store one fetched (or pushed) result; never raises. `runner` runs the
    preparing (in a worker process under a time limit, in the daemon)."""
    prepared: Prepared | Exception
    try:
        source = rebased(store, source, now=now)
        prepared = (runner or Inline()).run(prepare, source, state, result, Options(settings.max_entries, settings.dedupe), now)
    except Exception as exc:
        prepared = exc
    return store_prepared(settings, store, source, state, result, prepared=prepared, now=now)


def store_prepared(
    settings: Settings,
    store: Store,
    source: Source,
    state: SourceState,
    result: FetchResult,
    *,
    prepared: Prepared | Exception,
    now: datetime,
) -> PollOutcome:
    """Store what preparing decided, in one transaction; a preparing that failed (a worker over
    its time limit, a bug) fails the source alone. Never raises."""
    try:
        if isinstance(prepared, WorkerTimeoutError | WorkerDiedError):
            prepared = _failed(state, result, source=source, now=now, message=f"parsing {prepared}")
        elif isinstance(prepared, Exception):
            raise prepared
        (new, updated), *_ = _write(settings, store, [(source, prepared)], now=now)
        return _outcome(source, result, prepared, new, updated)
    except Exception as exc:
        log.error("poll-crashed source=%s", source.name, exc_info=exc)
        message = f"internal error: {type(exc).__name__}: {exc}"
        try:
            store.save_state(_failed(state, result, source=source, now=now, message=message).state)
        except Exception:
            log.exception("state-not-saved source=%s", source.name)
        return PollOutcome(source.name, "failed", error=message)


def _failed(state: SourceState, result: FetchResult, *, source: Source, now: datetime, message: str) -> Prepared:
    # Never the input that failed: its headers or body may be what crashed us.
    bare = FetchResult(result.url, result.final_url, None, error=message)
    return Prepared(policy.next_state(state, bare, source=source, now=now, error=message), parsed=False)


def _store_batch(
    settings: Settings, store: Store, batch: Sequence[tuple[Source, SourceState, FetchResult, Prepared]], *, now: datetime
) -> list[PollOutcome]:
    """Store several sources' prepared polls in one transaction: the band index's random inserts
    dirty the same pages for many sources, so one commit writes a fraction of what one commit per
    source did. If the batch fails, each source is stored on its own, so one bad source costs
    only itself."""
    if not batch:
        return []
    try:
        counts = _write(settings, store, [(source, prepared) for source, _, _, prepared in batch], now=now)
    except Exception:
        log.exception("batch-not-stored sources=%d action=one-by-one", len(batch))
        return [
            store_prepared(settings, store, source, state, result, prepared=prepared, now=now) for source, state, result, prepared in batch
        ]
    return [
        _outcome(source, result, prepared, new, updated)
        for (source, _, result, prepared), (new, updated) in zip(batch, counts, strict=True)
    ]


def _save_states(store: Store, states: list[SourceState]) -> None:
    """Save and clear a batch of states; a failure is logged, and those sources are polled again."""
    if not states:
        return
    try:
        store.save_states(states)
    except Exception:
        log.exception("states-not-saved count=%d", len(states))
    states.clear()


def _write(settings: Settings, store: Store, polls: Sequence[tuple[Source, Prepared]], *, now: datetime) -> tuple[tuple[int, int], ...]:
    """Ingest the polls' stories and save their states in one transaction; (new, updated) each."""
    with store.transaction() as tx:
        counts = ingest(tx, [(p.stories, p.fingerprints) for _, p in polls], settings, now=now)
        tx.save_states([p.state for _, p in polls])
    return counts


def _outcome(source: Source, result: FetchResult, prepared: Prepared, new: int, updated: int) -> PollOutcome:
    """What one poll did, logged and counted."""
    new_state = prepared.state
    if new_state.status in ("failing", "gone"):
        log.warning("poll-failed source=%s status=%s error=%s", source.name, new_state.status, new_state.error)
        outcome = PollOutcome(source.name, "gone" if new_state.status == "gone" else "failed", error=new_state.error)
    else:
        if new_state.warning and prepared.parsed:
            log.warning("poll-warning source=%s warning=%s", source.name, new_state.warning)
        status: OutcomeStatus = "ok" if prepared.parsed else ("not_modified" if result.status == 304 else "unchanged")
        log.info("polled source=%s status=%s new=%d updated=%d", source.name, word(status), new, updated)
        outcome = PollOutcome(source.name, status, new=new, updated=updated, warning=new_state.warning if prepared.parsed else None)
    record_poll(outcome, result)
    return outcome


def ingest(
    tx: PollTransaction,
    polls: Sequence[tuple[Sequence[Story], Sequence[Fingerprint]]],
    settings: Settings,
    *,
    now: datetime,
) -> tuple[tuple[int, int], ...]:
    """Store a batch of polls' stories: look up what the store knows of them (a few statements),
    decide in one pure pass (`dedupe.plan`), save the plan. (new, updated) per poll."""
    found = tx.lookup(dedupe.probe(polls, since=now - settings.dedupe.window))
    plan = dedupe.plan(polls, found, settings.dedupe, _index(settings).priorities)
    tx.save(plan)
    return plan.counts


def prune(settings: Settings, store: Store, *, now: datetime) -> None:
    """Drop band rows that fell out of the dedupe window, at most hourly (`dedupe.prune_due`)."""
    horizon = now - settings.dedupe.window
    last = store.meta("pruned_before")
    if dedupe.prune_due(None if last is None else datetime.fromtimestamp(float(last), UTC), horizon):
        store.prune_index(before=horizon)
        store.set_meta("pruned_before", str(horizon.timestamp()))
