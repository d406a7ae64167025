"""Publishing: store -> render -> files, written atomically and only when their bytes change."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from feeds.dedupe import merge_events
from feeds.errors import PublishError
from feeds.metrics import PUBLISH_SECONDS, PUBLISHES
from feeds.models import Cluster, OutputSpec, Settings, SourceState
from feeds.render import RENDERERS, Alert, FeedView, SourceInfo, render_all, render_atom
from feeds.rules import select
from feeds.store import STORE_MARKER, Store
from feeds.untrusted import web_url

log = logging.getLogger(__name__)


def source_infos(settings: Settings, states: Mapping[str, SourceState]) -> dict[str, SourceInfo]:
    """What outputs say about each configured source: config plus what its feed told us."""
    infos = {}
    for source in settings.sources:
        state = states.get(source.name)
        title = source.title or (state.feed_title if state else None) or source.name
        infos[source.name] = SourceInfo(
            name=source.name,
            title=title,
            # A web address only: a local file's path is nobody's business (and no reader can subscribe to it).
            feed_url=web_url(state.url if state else source.url) or "",
            link=state.feed_link if state else None,
            id=state.feed_id if state else None,
            updated=state.feed_updated if state else None,
        )
    return infos


def failure_alerts(
    output: OutputSpec, names: Sequence[str], infos: Mapping[str, SourceInfo], states: Mapping[str, SourceState], *, now: datetime
) -> tuple[Alert, ...]:
    """Entries for the output's sources failing at least `report_failures` (outputs opt in)."""
    if output.report_failures is None:
        return ()
    alerts = []
    for name in names:
        state = states.get(name)
        if state is None or state.failing_since is None or state.status not in ("failing", "gone"):
            continue
        if state.status == "gone" or now - state.failing_since >= output.report_failures:
            alerts.append(Alert(infos[name], state.failing_since, state.error or "unknown error", gone=state.status == "gone"))
    return tuple(sorted(alerts, key=lambda a: a.since, reverse=True))


def write_atomic(path: Path, data: bytes) -> bool:
    """Write `data` to `path` via a temporary file and rename; skip if the bytes are the same.

    Readers see the old file or the new one, never a partial one, even after a crash.
    """
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise PublishError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise PublishError(f"{path.parent}: cannot write outputs there: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise PublishError(f"{path}: cannot write: {exc.strerror}") from exc
    return True


STALE_TEMP = 600.0  # seconds; younger temp files may belong to a publisher still writing


def remove_stale_temp_files(directory: Path, *, now: datetime) -> None:
    """Remove temporary files that a killed writer left behind (never a live writer's)."""
    for path in directory.glob(".*.tmp"):
        try:
            if now.timestamp() - path.stat().st_mtime > STALE_TEMP:
                path.unlink()
        except OSError:
            pass


def files_digest(files: Iterable[bytes]) -> str:
    """What is stored of an output's published files (in RENDERERS order), to tell them intact."""
    return hashlib.sha256(b"".join(files)).hexdigest()


def damaged_outputs(settings: Settings, store: Store, verified: dict[str, object]) -> list[str]:
    """Outputs whose files are missing or no longer hold what was published (a deleted publish
    directory, a truncated or hand-edited file): their bytes no longer match the digest stored
    when they were written. Files are hashed only when their size or time changed since they
    last checked out (`verified`, kept by the caller), so a tick costs a few stat calls."""
    damaged = []
    for output in settings.outputs:
        paths = [settings.publish_dir / f"{output.name}.{fmt}" for fmt in RENDERERS]
        try:
            stamp: object = tuple((st.st_mtime_ns, st.st_size) for st in (p.stat() for p in paths))
        except OSError:
            stamp = None
        if stamp is not None and verified.get(output.name) == stamp:
            continue
        expected = store.output_digest(output.name)
        if expected is None:
            continue  # never published yet: nothing to repair
        if stamp is None:
            damaged.append(output.name)  # missing
            continue
        try:
            actual = files_digest(p.read_bytes() for p in paths)
        except OSError:
            damaged.append(output.name)
            continue
        if actual != expected:
            damaged.append(output.name)
        else:
            verified[output.name] = stamp
    return damaged


def missing_outputs(settings: Settings) -> list[str]:
    """Output files that should exist and do not (a deleted publish directory, a stray rm)."""
    return [
        str(settings.publish_dir / f"{o.name}.{fmt}")
        for o in settings.outputs
        for fmt in RENDERERS
        if not (settings.publish_dir / f"{o.name}.{fmt}").is_file()
    ]


def output_clusters(settings: Settings, store: Store, output: OutputSpec, names: Sequence[str], *, now: datetime) -> list[Cluster]:
    """The entries of an output, newest first: its copy clusters (or exact ones), or with
    `dedupe: event` those clusters merged into events by their stored links; then its rules
    (`rules.select`). An event gathers clusters first reported within the dedupe window of each
    other, so reading twice as many clusters as entries covers the newest events; an output with
    rules reads four times as many again, so rules that drop entries still fill it."""
    wanted = output.limit * (4 if output.has_rules else 1)
    if output.dedupe != "event":
        clusters = store.clusters(names, exact=output.dedupe == "exact", limit=wanted)
    else:
        clusters = store.clusters(names, exact=False, limit=2 * wanted)
        links = store.event_links(s.id for c in clusters for s in c.members)
        priorities = {s.name: s.priority for s in settings.sources}
        clusters = merge_events(clusters, links, priorities)
    return select(clusters, output, now=now)


def archive_name(output: str, page: int) -> str:
    """The file name (without extension) of an output's archive page."""
    return f"{output}-archive-{page}"


def archive(
    settings: Settings,
    store: Store,
    output: OutputSpec,
    *,
    sources: Mapping[str, SourceInfo],
    live: Sequence[Cluster],
    now: datetime,
    written: list[str],
) -> tuple[str | None, list[Cluster]]:
    """RFC 5005 archives: entries that left the live feed become archive pages of `limit`
    clusters each, oldest first; a page is written once and never again (`fh:archive`, linked to
    the live feed as `current` and to the page before as `prev-archive`), and every cluster is
    in exactly one page, even one first polled long after its time. Returns the newest page's
    URL, for the live feed's `prev-archive` link, and the entries that left the live window but
    do not fill a page yet: the live document carries them (RFC 5005: everything not archived
    is in the current document), so a reader paging back misses nothing."""
    pages = store.archive_pages(output.name)
    page = pages[-1] if pages else 0
    leftover: list[Cluster] = []
    if live:  # nothing the live feed shows, or anything newer, is archived
        before = min(m.when for c in live for m in c.members)
        current = f"{settings.base_url}{output.name}.atom"
        exact = output.dedupe == "exact"
        priorities = {s.name: s.priority for s in settings.sources}
        kept = replace(output, max_age=None, per_source_limit=None, limit=output.limit)  # patterns and min_sources hold

        def entries_of(batch: list[Cluster]) -> list[Cluster]:
            if output.dedupe == "event":
                batch = merge_events(batch, store.event_links(s.id for c in batch for s in c.members), priorities)
            return select(batch, kept, now=now)

        while True:
            batch = store.unarchived(sources, exact=exact, output=output.name, before=before, limit=output.limit)
            if len(batch) < output.limit:
                leftover = entries_of(batch)
                break
            entries = entries_of(batch)
            page += 1
            name = archive_name(output.name, page)
            spec = replace(output, name=name, title=f"{output.title} (archive {page})")
            prev = f"{settings.base_url}{archive_name(output.name, page - 1)}.atom" if page > 1 else None
            view = FeedView(spec, tuple(entries), sources, settings.base_url, prev_archive=prev, current=current)
            path = settings.publish_dir / f"{name}.atom"
            write_atomic(path, render_atom(view))
            written.append(str(path))
            store.add_archive_page(output.name, page, [c.id for c in batch], now=now)
            log.info("archived output=%s page=%d entries=%d", output.name, page, len(entries))
    return (f"{settings.base_url}{archive_name(output.name, page)}.atom" if page else None), leftover


def publish_all(settings: Settings, store: Store, *, now: datetime) -> list[str]:
    """Render every output and write the files that changed; return the paths written."""
    directory = settings.publish_dir
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PublishError(f"{directory}: cannot create the publish directory: {exc.strerror}") from exc
    started = time.perf_counter()
    remove_stale_temp_files(directory, now=now)
    marker = directory / STORE_MARKER
    if not marker.exists():
        write_atomic(marker, f"{settings.storage}\n".encode())
    states = store.states()
    infos = source_infos(settings, states)
    written: list[str] = []
    for output in settings.outputs:
        names = [s.name for s in settings.sources if output.includes(s)]
        clusters = output_clusters(settings, store, output, names, now=now)
        alerts = failure_alerts(output, names, infos, states, now=now)
        sources = {n: infos[n] for n in names}
        newest = None
        if output.archive:
            newest, leftover = archive(settings, store, output, sources=sources, live=clusters, now=now, written=written)
            clusters = [*clusters, *leftover]
        view = FeedView(output, tuple(clusters), sources, settings.base_url, hub=settings.websub.hub, alerts=alerts, prev_archive=newest)
        files = render_all(view)
        digest = files_digest(files.values())
        for fmt, data in files.items():
            path = directory / f"{output.name}.{fmt}"
            if write_atomic(path, data):
                written.append(str(path))
                PUBLISHES.inc()
        if store.output_digest(output.name) != digest:
            store.save_output(output.name, digest, now=now)
            log.info("published output=%s entries=%d", output.name, len(clusters))
    PUBLISH_SECONDS.observe(time.perf_counter() - started)
    return written
