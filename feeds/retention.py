"""Retention: the store stops growing forever.

With `retention: 90d` (global; a source may set its own), a story is deleted when its whole
cluster is older than the retention of every source in it, unless an output still shows it.
Sources no longer in the config follow the global retention (`feeds sources remove --purge`
deletes theirs at once). A deleted story's keys, bands, links and guid go with it, but the guid
is remembered, so a feed that still carries the old entry does not bring it back as new. The
daemon runs this once a day; `feeds prune [--dry-run]` runs it now. Without any retention set,
nothing is ever deleted (as before).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from feeds.models import Settings
from feeds.publish import output_clusters
from feeds.store import Store

log = logging.getLogger(__name__)

RETAIN_EVERY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Pruned:
    """What a retention pass deleted (or, in a dry run, would delete)."""

    stories: int
    clusters: int
    kept_for_outputs: int  # expired stories kept because an output still shows them


def expired(
    rows: Sequence[tuple[str, str, int, datetime]],
    cutoffs: Mapping[str, datetime | None],
    default: datetime | None,
    shown: frozenset[str],
) -> tuple[list[str], int, int]:
    """Pure: which stories of `rows` (story, source, cluster, time) go. A cluster goes whole,
    when every story in it is older than its source's cutoff (`default` for sources not in
    `cutoffs`; None keeps it) and none is `shown` by an output. Returns the story ids, the
    clusters and how many stories were kept for outputs."""
    clusters: dict[int, list[tuple[str, str, datetime]]] = {}
    for story, source, cluster, when in rows:
        clusters.setdefault(cluster, []).append((story, source, when))
    out: list[str] = []
    gone = kept = 0
    for members in clusters.values():
        old = all((cut := cutoffs.get(source, default)) is not None and when < cut for _, source, when in members)
        if not old:
            continue
        if any(story in shown for story, _, _ in members):
            kept += len(members)
            continue
        out.extend(story for story, _, _ in members)
        gone += 1
    return out, gone, kept


def retain(settings: Settings, store: Store, *, now: datetime, dry_run: bool = False, force: bool = False) -> Pruned | None:
    """Apply retention (at most daily unless `force`); None when it was not due or none is set."""
    retentions = [s.retention for s in settings.sources if s.retention] + ([settings.retention] if settings.retention else [])
    if not retentions:
        return None
    last = store.meta("retained_at")
    if not force and last is not None and now - datetime.fromtimestamp(float(last), UTC) < RETAIN_EVERY:
        return None
    default = now - settings.retention if settings.retention else None
    cutoffs: dict[str, datetime | None] = {s.name: now - s.retention if s.retention else default for s in settings.sources}
    latest = max(c for c in [*cutoffs.values(), default] if c is not None)
    rows = store.expiring(before=latest)
    shown: set[str] = set()
    if rows:
        for output in settings.outputs:
            names = [s.name for s in settings.sources if output.includes(s)]
            shown.update(m.id for c in output_clusters(settings, store, output, names, now=now) for m in c.members)
    ids, clusters, kept = expired(rows, cutoffs, default, frozenset(shown))
    if not dry_run:
        if ids:
            store.delete_stories(ids, now=now)
            store.shrink()
        store.set_meta("retained_at", str(now.timestamp()))
        log.info("retention stories=%d clusters=%d kept_for_outputs=%d", len(ids), clusters, kept)
    return Pruned(len(ids), clusters, kept)


def purge(store: Store, sources: Sequence[str], *, now: datetime) -> int:
    """Delete every story of these sources now (`feeds sources remove --purge`)."""
    ids = [story for source in sources for story in store.source_stories(source)]
    if not ids:
        return 0
    deleted = store.delete_stories(ids, now=now)
    store.shrink()
    return deleted
