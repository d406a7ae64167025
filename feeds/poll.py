"""Polling: fetch -> policy -> parse -> normalize -> dedupe -> store, one transaction per source.

Failure is data: a source that cannot be fetched or parsed gets a failing state and the loop goes
on; an unexpected exception is logged with its traceback and recorded on the source.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from datetime import datetime

from feeds import policy
from feeds.dedupe import LeadInfo, assign, better_lead, fingerprint
from feeds.errors import ParseError, StoreError
from feeds.fetch import Fetcher
from feeds.metrics import record_poll
from feeds.models import FetchResult, OutcomeStatus, ParsedFeed, PollOutcome, Settings, Source, SourceState, Story
from feeds.normalize import normalize_entries, stable_hash
from feeds.parse import parse_feed
from feeds.store import PollTransaction, Store
from feeds.workers import Inline, Runner, WorkerDiedError, WorkerTimeoutError

log = logging.getLogger(__name__)


def sync_sources(settings: Settings, store: Store) -> None:
    """Give every configured source a stored state (a new source, or one whose URL changed in the
    config, starts afresh), so due selection is one query. Skipped while the config's sources
    are the ones last synced."""
    digest = stable_hash(*(f"{s.name}\t{s.url}" for s in settings.sources))
    if store.meta("sources_digest") == digest:
        return
    stored = store.configured_urls()
    fresh = [policy.initial_state(s) for s in settings.sources if stored.get(s.name, "") != s.url]
    if fresh:
        store.save_states(fresh)
    store.set_meta("sources_digest", digest)


def due_sources(
    settings: Settings, store: Store, *, now: datetime, force: bool = False, names: Collection[str] = ()
) -> list[tuple[Source, SourceState]]:
    """The configured sources to poll now, with their states."""
    sync_sources(settings, store)
    configured = {s.name: (i, s) for i, s in enumerate(settings.sources)}
    plan = []
    for stored in store.due(now, force=force):
        order, source = configured.get(stored.name, (0, None))
        if source is None or (names and source.name not in names):
            continue  # a source no longer configured, or not asked for
        state = policy.reconcile(stored, source)
        if policy.is_due(state, now=now, force=force):
            plan.append((order, source, state))
    return [(source, state) for _, source, state in sorted(plan, key=lambda p: p[0])]


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

    The cycle holds the store's poll lock, so processes sharing a store never poll one source
    twice: a lock held by another process is waited for `lock_wait` seconds; if it is still
    held, nothing is polled (`skip_if_busy`, the daemon's next tick comes soon) or StoreError."""
    with store.poll_lock(wait=lock_wait) as locked:
        if not locked:
            if not skip_if_busy:
                raise StoreError(f"another feeds process has been polling this store for {lock_wait:.0f}s; try again later")
            log.info("poll-skipped reason=another process is polling this store")
            return []
        return _poll_cycle(
            settings, store, fetcher, now=now, force=force, names=names, stop=stop, progress=progress, runner=runner or Inline()
        )


def _poll_cycle(
    settings: Settings,
    store: Store,
    fetcher: Fetcher,
    *,
    now: datetime,
    force: bool,
    names: Collection[str],
    stop: threading.Event | None,
    progress: Callable[[int, int, PollOutcome], None] | None,
    runner: Runner,
) -> list[PollOutcome]:
    plan = due_sources(settings, store, now=now, force=force, names=names)
    sources = {state.name: source for source, state in plan}
    outcomes: list[PollOutcome] = []
    results = fetcher.fetch_many(state for _, state in plan)
    for state, result in results:
        if stop is not None and stop.is_set():
            # Sources not yet stored keep their state: they are due again on the next run.
            log.info("poll-abandoned done=%d left=%d reason=shutdown", len(outcomes), len(plan) - len(outcomes))
            results.close()
            break
        outcomes.append(process_result(settings, store, sources[state.name], state, result, now=now, runner=runner))
        if progress is not None:
            progress(len(outcomes), len(plan), outcomes[-1])
    if any(o.new for o in outcomes):
        store.prune_index(before=now - settings.dedupe.window)
    return outcomes


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
    """Everything after the fetch for one source; never raises. `runner` runs the parse (in a
    worker process under a time limit, in the daemon)."""
    try:
        outcome = _process(settings, store, source, state, result, now=now, runner=runner or Inline())
        record_poll(outcome, result)
        return outcome
    except Exception as exc:
        log.exception("poll-crashed source=%s", source.name)
        message = f"internal error: {type(exc).__name__}: {exc}"
        # Never the input that failed: its headers or body may be what crashed us.
        bare = FetchResult(result.url, result.final_url, None, error=message)
        failed = policy.next_state(state, bare, source=source, now=now, error=message)
        try:
            store.save_state(failed)
        except Exception:
            log.exception("state-not-saved source=%s", source.name)
        return PollOutcome(source.name, "failed", error=message)


def _process(
    settings: Settings, store: Store, source: Source, state: SourceState, result: FetchResult, *, now: datetime, runner: Runner
) -> PollOutcome:
    feed: ParsedFeed | None = None
    error: str | None = None
    if result.error is None and policy.body_changed(state, result):
        try:
            feed = runner.run(
                parse_feed, source.name, result.body, dict(result.headers), url=result.final_url, max_entries=settings.max_entries
            )
        except ParseError as exc:
            error = exc.message
        except (WorkerTimeoutError, WorkerDiedError) as exc:
            error = f"parsing {exc}"
    stories: tuple[Story, ...] = ()
    if feed is not None:
        stories, dropped = normalize_entries(feed, source, base=result.final_url, now=now)
        if dropped:
            feed = replace(feed, warning=f"{feed.warning}; {dropped}" if feed.warning else dropped)
    new_state = policy.next_state(state, result, source=source, now=now, feed=feed, error=error)
    with store.transaction() as tx:
        new, updated = ingest(tx, source, stories, settings, now=now)
        tx.save_state(new_state)
    if new_state.status in ("failing", "gone"):
        log.warning("poll-failed source=%s status=%s error=%s", source.name, new_state.status, new_state.error)
        return PollOutcome(source.name, "gone" if new_state.status == "gone" else "failed", error=new_state.error)
    if new_state.warning and feed is not None:
        log.warning("poll-warning source=%s warning=%s", source.name, new_state.warning)
    status: OutcomeStatus = "ok" if feed is not None else ("not_modified" if result.status == 304 else "unchanged")
    log.info("polled source=%s status=%s new=%d updated=%d", source.name, status, new, updated)
    return PollOutcome(source.name, status, new=new, updated=updated, warning=new_state.warning if feed else None)


def ingest(tx: PollTransaction, source: Source, stories: Sequence[Story], settings: Settings, *, now: datetime) -> tuple[int, int]:
    """Store a source's stories: new ones join or start clusters, edited ones change in place."""
    known = tx.known(source.name, [s.guid for s in stories])
    since = now - settings.dedupe.window
    priorities = {s.name: s.priority for s in settings.sources}
    new = updated = 0
    for story in stories:
        hit = known.get(story.guid)
        if hit is not None:
            if hit.content_hash != story.content_hash:
                tx.update_story(hit.id, story, fingerprint(story, settings.dedupe))
                updated += 1
            continue
        fp = fingerprint(story, settings.dedupe)
        decision = assign(fp, story, tx.candidates(fp, since=since), settings.dedupe)
        if decision.replaces is not None:
            # The same article of the same source under a new guid (GUID rotation): one story.
            tx.update_story(decision.replaces, story, replace(fp, story_id=decision.replaces))
            tx.add_guid(source.name, story.guid, decision.replaces)
            continue
        tx.add_story(story, fp, decision)
        new += 1
        newcomer = LeadInfo(story.id, story.source, fp.words, story.when)
        for cluster_id in (decision.cluster_id, decision.exact_cluster_id):
            if cluster_id is None:
                continue
            current = tx.lead(cluster_id)
            if current is not None and better_lead(current, newcomer, priorities):
                tx.set_lead(cluster_id, story.id)
    return new, updated
