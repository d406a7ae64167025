"""What each configured source is doing, in one shape for `feeds status`, its JSON and the
sources page: state in words, last success, next poll and why, error, stories."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from feeds.models import Settings, SourceView, word
from feeds.policy import describe_state, reconcile
from feeds.store import Store
from feeds.timeutil import format_duration, to_rfc3339
from feeds.untrusted import strip_userinfo


def stamp(value: datetime | None) -> str | None:
    """An exact time for JSON (RFC 3339), or None."""
    return to_rfc3339(value) if value else None


def status_json(row: SourceView) -> dict[str, Any]:
    """The `feeds status --json` row (exact times, RFC 3339)."""
    state = row.state
    return {
        "source": row.name,
        "url": strip_userinfo(state.url),
        "status": word(state.status),
        "state": row.description,
        "last_poll": stamp(state.last_poll),
        "last_success": stamp(state.last_success),
        "failures": state.failures,
        "failing_since": stamp(state.failing_since),
        "error": state.error,
        "warning": state.warning,
        "next_poll": stamp(state.next_poll),
        "retry_after": stamp(state.retry_after),
        "interval": row.interval,
        "interval_reason": state.interval_reason,
        "moved_from": state.moved_from,
        "stories": row.stories,
    }


def source_statuses(settings: Settings, store: Store | None, *, now: datetime) -> list[SourceView]:
    """Every configured source in config order, its stored state reconciled with the config
    (without a store: as the config describes them, never polled)."""
    states = store.states() if store is not None else {}
    counts = store.story_counts() if store is not None else {}
    rows = []
    for source in settings.sources:
        state = reconcile(states.get(source.name), source)
        rows.append(
            SourceView(
                name=source.name,
                title=source.title or state.feed_title or source.name,
                state=state,
                description=describe_state(state, now=now),
                stories=counts.get(source.name, 0),
                interval=format_duration(state.interval or source.interval),
            )
        )
    return rows
