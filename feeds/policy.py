"""When to poll next and what to remember: the pure decisions behind well-behaved polling.

`next_state(state, result, ...)` takes the previous SourceState, one FetchResult (plus what parsing
found) and `now`, and returns the next SourceState. No network, store or clock; jitter is derived
from the source name and `now`, so the same inputs always give the same answer.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import statistics
from dataclasses import replace
from datetime import datetime, timedelta

from feeds.models import FetchResult, ParsedFeed, Source, SourceState, word
from feeds.timeutil import format_duration, parse_http_date, parse_retry_after, to_rfc3339
from feeds.untrusted import MAX_DELTA, MAX_HEADER, MAX_MESSAGE, MAX_URL, clamp_seconds, clean_text, strip_userinfo

JITTER = 0.1  # up to +10% so sources configured alike are not polled in lockstep
CONFIRMATIONS = 2  # a permanent redirect must be seen this many polls in a row before we move
WEBSUB_RELAX = 4  # a source pushed by WebSub is polled this many times less often
_MAX_AGE = re.compile(r"(?:^|,)\s*+(?:s-)?max-age\s*+=\s*+\"?(\d++)", re.IGNORECASE)


def initial_state(source: Source) -> SourceState:
    """The state of a source never polled."""
    return SourceState(name=source.name, url=source.url, configured_url=source.url, interval=source.interval)


def reconcile(state: SourceState | None, source: Source) -> SourceState:
    """The stored state, reset to the config's URL when the user changed it there."""
    if state is None or state.configured_url != source.url:
        fresh = initial_state(source)
        return fresh if state is None else replace(fresh, next_poll=None)
    return state


def is_due(state: SourceState, *, now: datetime, force: bool = False) -> bool:
    """True when the source may be polled now. Gone sources and Retry-After windows always win."""
    if state.status == "gone":
        return False
    if state.retry_after is not None and now < state.retry_after:
        return False
    return force or state.next_poll is None or state.next_poll <= now


def body_hash(body: bytes) -> str:
    """Hash of a response body, to skip parsing a body we already parsed."""
    return hashlib.blake2b(body, digest_size=16).hexdigest()


def body_changed(state: SourceState, result: FetchResult) -> bool:
    """True when a 200 body differs from the last one we parsed."""
    return result.status == 200 and body_hash(result.body) != state.body_hash


def jitter(name: str, now: datetime) -> float:
    """A fraction in [0, JITTER) fixed by the source and the instant: pure, yet spread out."""
    digest = hashlib.blake2b(f"{name}|{now.isoformat()}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * JITTER


def server_interval(result: FetchResult, feed: ParsedFeed | None) -> timedelta | None:
    """The longest interval the server asks for: Cache-Control max-age, Expires, RSS ttl, sy:updatePeriod."""
    hints: list[timedelta] = []
    cache_control = (result.header("cache-control") or "")[:MAX_HEADER]
    if match := _MAX_AGE.search(cache_control):
        hints.append(clamp_seconds(int(match.group(1)[:12])))
    expires, date = parse_http_date(result.header("expires")), parse_http_date(result.header("date"))
    if expires and date and expires > date:
        hints.append(min(expires - date, MAX_DELTA))
    if feed is not None and feed.ttl:
        hints.append(feed.ttl)
    return max(hints) if hints else None


def publishing_interval(feed: ParsedFeed | None) -> timedelta | None:
    """Half the median gap between the feed's recent entries: how often polling pays off."""
    if feed is None:
        return None
    stamps = sorted({s for e in feed.entries for s in (e.published or e.updated,) if s}, reverse=True)[:20]
    if len(stamps) < 3:
        return None
    gaps = [(a - b).total_seconds() for a, b in itertools.pairwise(stamps)]
    return timedelta(seconds=statistics.median(gaps) / 2)


def choose_interval(
    source: Source, state: SourceState, result: FetchResult, feed: ParsedFeed | None, *, now: datetime
) -> tuple[timedelta, str]:
    """The polling interval for a healthy source and why: configured, adaptive, server or websub."""
    interval, reason = state.interval or source.interval, state.interval_reason
    adaptive = publishing_interval(feed)
    if feed is not None:
        interval, reason = (adaptive, "adaptive") if adaptive is not None else (source.interval, "configured")
    interval = min(max(interval, source.min_interval), source.max_interval)
    hint = server_interval(result, feed)
    if hint is not None and hint > interval:
        interval, reason = min(hint, source.max_interval), "server"
    if websub_active(state, now=now):
        # The hub pushes changes; polling is only a safety net.
        relaxed = min(max(interval * WEBSUB_RELAX, timedelta(hours=1)), source.max_interval)
        if relaxed > interval:
            interval, reason = relaxed, "websub"
    return interval, reason


def websub_active(state: SourceState, *, now: datetime) -> bool:
    """True while a verified WebSub subscription for the source is within its lease."""
    return state.websub_expires is not None and state.websub_expires > now


def needs_subscription(state: SourceState, source: Source, *, now: datetime, retry: timedelta = timedelta(minutes=10)) -> bool:
    """True when a WebSub source should ask its hub to (re)subscribe: none yet, or the lease ends
    within a day (or a tenth of it); not more often than `retry` while a request is pending."""
    if not source.websub or not state.hub or state.status == "gone":
        return False
    if state.websub_requested is not None and now - state.websub_requested < retry:
        return False
    if state.websub_expires is None:
        return True
    lease = state.websub_expires - state.websub_requested if state.websub_requested else timedelta(0)
    return state.websub_expires - now <= max(timedelta(days=1), lease / 10)


def backoff(source: Source, state: SourceState, failures: int) -> timedelta:
    """Exponential backoff for the n-th consecutive failure (before jitter), capped at max_interval."""
    start = max(source.min_interval, min(state.interval or source.interval, source.interval))
    grown: timedelta = start * 2 ** min(failures - 1, 30)
    return min(source.max_interval, grown)


def next_state(
    state: SourceState,
    result: FetchResult,
    *,
    source: Source,
    now: datetime,
    feed: ParsedFeed | None = None,
    error: str | None = None,
) -> SourceState:
    """The state after one poll: `result` is the fetch, `feed`/`error` what parsing gave (if it ran)."""
    state = replace(state, last_poll=now)
    status = result.status
    if result.error or error or status is None or status >= 400:
        return _failed(state, result, source=source, now=now, error=error)
    moved = _track_redirect(state, result)
    if status == 304:
        etag = result.header("etag") or state.etag
        modified = result.header("last-modified") or state.last_modified
        new_hash = state.body_hash
    else:
        etag, modified = result.header("etag"), result.header("last-modified")
        new_hash = body_hash(result.body)
    interval, reason = choose_interval(source, state, result, feed, now=now)
    wait = min(source.max_interval, interval * (1 + jitter(state.name, now)))
    changed = feed is not None
    return replace(
        moved,
        status="ok" if changed else "not_modified",
        etag=etag,
        last_modified=modified,
        body_hash=new_hash,
        last_success=now,
        next_poll=now + wait,
        failures=0,
        failing_since=None,
        error=None,
        warning=feed.warning if feed is not None else state.warning,
        retry_after=None,
        interval=interval,
        interval_reason=reason,
        feed_title=feed.title if feed is not None else state.feed_title,
        feed_link=feed.link if feed is not None else state.feed_link,
        feed_id=feed.id if feed is not None else state.feed_id,
        feed_updated=feed.updated if feed is not None else state.feed_updated,
        hub=feed.hub if feed is not None else state.hub,
        topic=(feed.self_url or strip_userinfo(state.url)) if feed is not None else state.topic,
    )


def _track_redirect(state: SourceState, result: FetchResult) -> SourceState:
    target = result.permanent_redirect
    if not target or target == state.url:
        return replace(state, redirect_to=None, redirect_seen=0)
    seen = state.redirect_seen + 1 if state.redirect_to == target else 1
    if seen >= CONFIRMATIONS:
        return replace(state, url=target, moved_from=state.url, redirect_to=None, redirect_seen=0)
    return replace(state, redirect_to=target, redirect_seen=seen)


def _failed(state: SourceState, result: FetchResult, *, source: Source, now: datetime, error: str | None) -> SourceState:
    status = result.status
    # Error text quotes what servers sent (a Location, a reason): it is shown, stored and published.
    message = clean_text(error or result.error or f"HTTP {status}", MAX_MESSAGE) or f"HTTP {status}"
    failures = state.failures + 1
    if status == 410:
        where = clean_text(strip_userinfo(result.final_url), MAX_URL)
        return replace(
            state,
            status="gone",
            error=f"HTTP 410 Gone at {where}: no longer polled (resume with `feeds sources reset {state.name}`)",
            failures=failures,
            failing_since=state.failing_since or now,
            next_poll=None,
        )
    retry_after = parse_retry_after(result.header("retry-after"), now=now) if status in (429, 503) else None
    if retry_after is not None and retry_after <= now:
        retry_after = None
    wait = min(source.max_interval, backoff(source, state, failures) * (1 + jitter(state.name, now)))
    next_poll = now + wait
    if retry_after is not None:
        next_poll = max(next_poll, retry_after)
        capped = " (capped: the server asked for longer)" if retry_after == now + MAX_DELTA else ""
        message += f" (Retry-After: not before {to_rfc3339(retry_after)}{capped})"
    return replace(
        state,
        status="failing",
        failures=failures,
        failing_since=state.failing_since or now,
        error=message,
        retry_after=retry_after,
        next_poll=next_poll,
        redirect_to=state.redirect_to,
    )


def describe_state(state: SourceState, *, now: datetime) -> str:
    """One phrase for a source's state: ok, unchanged, failing since ..., gone, ..."""
    if state.status == "gone":
        return "gone (HTTP 410; `feeds sources reset` to resume)"
    if state.retry_after and state.retry_after > now:
        return f"retry-after until {to_rfc3339(state.retry_after)}"
    if state.status == "failing":
        since = format_duration(now - state.failing_since) if state.failing_since else "?"
        return f"failing for {since}, backing off until {to_rfc3339(state.next_poll) if state.next_poll else '?'}"
    text = {"new": "never polled"}.get(state.status, word(state.status))
    if state.moved_from:
        text += f" (moved from {state.moved_from})"
    if state.redirect_to:
        text += f" (permanent redirect to {state.redirect_to} seen {state.redirect_seen}x, not yet confirmed)"
    return text
