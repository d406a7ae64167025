"""The polling policy: validators, backoff, Retry-After, redirects, 410, intervals; with properties."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from feeds import policy
from feeds.models import FetchResult, ParsedEntry, ParsedFeed, Source
from tests.conftest import NOW

SOURCE = Source(
    "src", "https://src.example/feed", interval=timedelta(minutes=30), min_interval=timedelta(minutes=5), max_interval=timedelta(days=1)
)
URL = SOURCE.url


def ok(body: bytes = b"<rss/>", **headers: str) -> FetchResult:
    return FetchResult(URL, URL, 200, {k.replace("_", "-"): v for k, v in headers.items()}, body)


def test_validators_are_kept_and_refreshed_by_304() -> None:
    state = policy.initial_state(SOURCE)
    state = policy.next_state(
        state, ok(etag='"v1"', last_modified="Tue, 24 Nov 2026 10:00:00 GMT"), source=SOURCE, now=NOW, feed=ParsedFeed("rss20")
    )
    assert (state.etag, state.last_modified, state.status) == ('"v1"', "Tue, 24 Nov 2026 10:00:00 GMT", "ok")
    not_modified = FetchResult(URL, URL, 304, {"etag": '"v2"'})
    state = policy.next_state(state, not_modified, source=SOURCE, now=NOW + timedelta(hours=1))
    assert (state.etag, state.last_modified, state.status) == ('"v2"', "Tue, 24 Nov 2026 10:00:00 GMT", "not_modified")


def test_same_body_is_not_parsed_again() -> None:
    state = policy.next_state(policy.initial_state(SOURCE), ok(b"abc"), source=SOURCE, now=NOW, feed=ParsedFeed("rss20"))
    assert not policy.body_changed(state, ok(b"abc"))
    assert policy.body_changed(state, ok(b"abd"))


def test_errors_back_off_exponentially_then_recover() -> None:
    state = policy.initial_state(SOURCE)
    waits = []
    for i in range(8):
        now = NOW + timedelta(days=i)
        state = policy.next_state(state, FetchResult(URL, URL, 500), source=SOURCE, now=now)
        waits.append(state.next_poll - now)  # type: ignore[operator]
    assert state.status == "failing" and state.failures == 8 and state.failing_since == NOW
    assert waits == sorted(waits) and waits[0] >= timedelta(minutes=30) and waits[-1] == timedelta(days=1)
    state = policy.next_state(state, ok(), source=SOURCE, now=NOW + timedelta(days=9), feed=ParsedFeed("rss20"))
    assert state.status == "ok" and state.failures == 0 and state.failing_since is None and state.error is None


def test_retry_after_is_honoured_even_when_forced() -> None:
    result = FetchResult(URL, URL, 429, {"retry-after": "7200"})
    state = policy.next_state(policy.initial_state(SOURCE), result, source=SOURCE, now=NOW)
    assert state.retry_after == NOW + timedelta(hours=2)
    assert state.next_poll is not None and state.next_poll >= state.retry_after
    assert not policy.is_due(state, now=NOW + timedelta(hours=1), force=True)
    assert policy.is_due(state, now=NOW + timedelta(hours=2, seconds=1), force=True)
    assert "Retry-After" in (state.error or "")


def test_permanent_redirect_moves_only_when_confirmed() -> None:
    moved = FetchResult(URL, "https://new.example/feed", 200, {}, b"x", permanent_redirect="https://new.example/feed")
    state = policy.next_state(policy.initial_state(SOURCE), moved, source=SOURCE, now=NOW, feed=ParsedFeed("rss20"))
    assert state.url == URL and state.redirect_to == "https://new.example/feed"
    state = policy.next_state(state, moved, source=SOURCE, now=NOW + timedelta(hours=1))
    assert state.url == "https://new.example/feed" and state.moved_from == URL and state.redirect_to is None


def test_temporary_redirect_keeps_the_url() -> None:
    temporary = FetchResult(URL, "https://elsewhere.example/feed", 200, {}, b"x")
    state = policy.next_state(policy.initial_state(SOURCE), temporary, source=SOURCE, now=NOW, feed=ParsedFeed("rss20"))
    state = policy.next_state(state, temporary, source=SOURCE, now=NOW + timedelta(hours=1))
    assert state.url == URL and state.moved_from is None


def test_gone_stops_polling_until_reset() -> None:
    state = policy.next_state(policy.initial_state(SOURCE), FetchResult(URL, URL, 410), source=SOURCE, now=NOW)
    assert state.status == "gone" and "410" in (state.error or "")
    assert not policy.is_due(state, now=NOW + timedelta(days=365), force=True)


def test_server_hints_raise_the_interval() -> None:
    state = policy.next_state(
        policy.initial_state(SOURCE), ok(cache_control="public, max-age=7200"), source=SOURCE, now=NOW, feed=ParsedFeed("rss20")
    )
    assert state.interval == timedelta(hours=2) and state.interval_reason == "server"
    feed = ParsedFeed("rss20", ttl=timedelta(hours=3))
    state = policy.next_state(state, ok(b"new"), source=SOURCE, now=NOW, feed=feed)
    assert state.interval == timedelta(hours=3)


def test_interval_adapts_to_publishing_rate() -> None:
    hourly = ParsedFeed("rss20", entries=tuple(ParsedEntry(published=NOW - timedelta(hours=i)) for i in range(10)))
    weekly = ParsedFeed("rss20", entries=tuple(ParsedEntry(published=NOW - timedelta(weeks=i)) for i in range(10)))
    fast = policy.next_state(policy.initial_state(SOURCE), ok(b"1"), source=SOURCE, now=NOW, feed=hourly)
    slow = policy.next_state(policy.initial_state(SOURCE), ok(b"2"), source=SOURCE, now=NOW, feed=weekly)
    assert fast.interval == timedelta(minutes=30) and fast.interval_reason == "adaptive"
    assert slow.interval == timedelta(days=1)
    assert fast.next_poll < slow.next_poll  # type: ignore[operator]


def test_config_url_change_resets_the_state() -> None:
    state = replace(policy.initial_state(SOURCE), status="gone")
    fresh = policy.reconcile(state, replace(SOURCE, url="https://other.example/feed"))
    assert fresh.status == "new" and fresh.url == "https://other.example/feed"


responses = st.one_of(
    st.builds(lambda: FetchResult(URL, URL, 200, {}, b"same")),
    st.builds(lambda: FetchResult(URL, URL, 304)),
    st.sampled_from([500, 502, 404, 403]).map(lambda code: FetchResult(URL, URL, code)),
    st.integers(1, 200_000).map(lambda s: FetchResult(URL, URL, 429, {"retry-after": str(s)})),
    st.integers(1, 200_000).map(lambda s: FetchResult(URL, URL, 503, {"retry-after": str(s)})),
    st.builds(lambda: FetchResult(URL, URL, None, error="connection failed")),
    st.integers(0, 10**6).map(lambda s: FetchResult(URL, URL, 200, {"cache-control": f"max-age={s}"}, b"x")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(responses, st.integers(0, 10**6)), min_size=1, max_size=25))
def test_next_poll_is_within_bounds_and_never_inside_retry_after(steps: list[tuple[FetchResult, int]]) -> None:
    state = policy.initial_state(SOURCE)
    now = NOW
    for result, gap in steps:
        now += timedelta(seconds=gap)
        if not policy.is_due(state, now=now, force=True):
            continue
        state = policy.next_state(state, result, source=SOURCE, now=now, feed=ParsedFeed("rss20") if result.status == 200 else None)
        assert state.next_poll is not None
        wait = state.next_poll - now
        assert wait >= SOURCE.min_interval
        if state.retry_after is not None:
            assert state.next_poll >= state.retry_after
        else:
            assert wait <= SOURCE.max_interval


@settings(deadline=None)
@given(st.integers(1, 40))
def test_backoff_is_monotone_in_consecutive_failures(failures: int) -> None:
    state = policy.initial_state(SOURCE)
    assert policy.backoff(SOURCE, state, failures) <= policy.backoff(SOURCE, state, failures + 1) <= SOURCE.max_interval
    first = policy.next_state(replace(state, failures=failures - 1), FetchResult(URL, URL, 500), source=SOURCE, now=NOW)
    second = policy.next_state(replace(state, failures=failures), FetchResult(URL, URL, 500), source=SOURCE, now=NOW)
    assert first.next_poll <= second.next_poll  # type: ignore[operator]
