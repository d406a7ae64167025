"""Everything between a fetch and the store, for one source: parse, the next polling state,
normalized stories and their fingerprints. Pure and picklable, so it runs in worker processes,
several sources at once, each under a time limit (feeds.workers).

Imports no I/O library; takes `now` as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from feeds import policy
from feeds.dedupe import fingerprint
from feeds.errors import ParseError
from feeds.models import DedupeSettings, FetchResult, Fingerprint, Source, SourceState, Story
from feeds.normalize import normalize_entries, stable_hash
from feeds.parse import parse_feed


@dataclass(frozen=True, slots=True)
class Prepared:
    """One source's poll, decided: what to store and the state to save."""

    state: SourceState  # the next polling state
    parsed: bool  # a feed was read (a 304, an unchanged body or an error read nothing)
    stories: tuple[Story, ...] = ()
    fingerprints: tuple[Fingerprint, ...] = ()  # one per story, in the same order


@dataclass(frozen=True, slots=True)
class Options:
    """The settings preparing needs (small: it crosses to a worker with every call)."""

    max_entries: int
    dedupe: DedupeSettings


def prepare(source: Source, state: SourceState, result: FetchResult, options: Options, now: datetime) -> Prepared:
    """Parse what was fetched (if it changed), normalize and fingerprint its entries, and decide
    the next state. Errors in the feed are data in the state, never raised."""
    feed = None
    error: str | None = None
    if result.error is None and policy.body_changed(state, result):
        try:
            feed = parse_feed(source.name, result.body, result.headers, url=result.final_url, max_entries=options.max_entries)
        except ParseError as exc:
            error = exc.message
    stories: tuple[Story, ...] = ()
    marks: tuple[str, ...] = ()
    if feed is not None:
        stories, dropped = normalize_entries(feed, source, base=result.final_url, now=now)
        if dropped:
            feed = replace(feed, warning=f"{feed.warning}; {dropped}" if feed.warning else dropped)
        marks = tuple(mark(s) for s in stories)
        seen = set(state.seen)
        # An entry read last time with the same text was stored then (the state that remembers
        # it is saved in the same transaction as its stories): nothing to fingerprint or look up.
        stories = tuple(s for s, m in zip(stories, marks, strict=True) if m not in seen)
    next_state = policy.next_state(state, result, source=source, now=now, feed=feed, error=error)
    if feed is not None:
        next_state = replace(next_state, seen=marks)
    return Prepared(next_state, feed is not None, stories, tuple(fingerprint(s, options.dedupe) for s in stories))


def mark(story: Story) -> str:
    """A story's id and text in 16 hex digits: how the next poll knows the entry unchanged."""
    return stable_hash(story.id, story.content_hash, size=8)
