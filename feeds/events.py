"""Which stories report the same event: the second level of merging, beside copies of one text.

Outlets that write their own version of an event share little wording with the wire story, but
they agree on its facts: the people, companies and places it names (capitalized names) and its
numbers (amounts, percentages, times of day, dates, scores and counts). Three rules:

1. **Candidates through an index.** Each story's key facts (its first KEY_NUMBERS numbers, and
   the first KEY_NAMES names of its headline and first two paragraphs) give one key per pair of
   facts. Two stories that share a pair are compared; a pair is specific enough that the
   candidate list does not grow with the store.
2. **Verified on facts, with conflicts against.** The score is the weight of the facts both
   carry, less CONFLICT for every fact the headline or lead of one states and the other's whole
   text lacks (an update leads with what is new: a verdict, a cause, a reopening, a second score).
   Small counts and years carry little weight and never conflict; times of day within half an
   hour agree; weekdays are resolved to dates, so "Tuesday" and "Feb. 17" agree.
3. **One outlet, one report.** An event never holds two different texts from the same outlet: an
   outlet does not rewrite itself, so a second text of its own is an update, a sidebar or another
   event. This is what keeps the wire's same-day and next-day follow-ups apart from the story
   they follow, although they repeat its names and numbers.

Events are a partition computed from the copy clusters and the verified links between their
stories (`group`): links are applied strongest first, so the result depends only on what is
stored, never on the order in which sources were polled.

Pure: no store, network or clock.
"""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from itertools import combinations
from typing import TypeVar

from feeds.models import EventFacts, EventLink

KEY_NUMBERS = 8  # numbers of the whole text, and
KEY_NAMES = 6  # names of the headline and first two paragraphs, whose pairs are index keys
MIN_SCORE = 6.0  # agreement needed with no conflict
CONFLICT = 5.0  # what each fact stated by one lead and absent from the other costs
MAX_GAP = timedelta(days=4)
AMBIGUOUS = 1.0  # publication times further apart are never one event
_NAME_WEIGHT = 1.0
_COUNT_WEIGHT = 0.5  # small counts (<= 12) and years: too common to say much
_NUMBER_WEIGHT = 2.0
_TYPED_WEIGHT = 3.0  # amounts, percentages, times, dates, scores
_NEAR_TIME = 30  # minutes within which two times of day are one fact

_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MONTHS = {
    "jan": 1, "january": 1, "feb": 2, "february": 2, "mar": 3, "march": 3, "apr": 4, "april": 4, "may": 5,
    "jun": 6, "june": 6, "jul": 7, "july": 7, "aug": 8, "august": 8, "sep": 9, "sept": 9, "september": 9,
    "oct": 10, "october": 10, "nov": 11, "november": 11, "dec": 12, "december": 12,
}  # fmt: skip
_STOP = frozenset(
    [
        "the",
        "a",
        "an",
        "and",
        "or",
        "but",
        "in",
        "on",
        "at",
        "of",
        "for",
        "to",
        "from",
        "by",
        "with",
        "as",
        "is",
        "was",
        "were",
        "be",
        "been",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "he",
        "she",
        "they",
        "we",
        "you",
        "his",
        "her",
        "their",
        "our",
        "my",
        "about",
        "after",
        "before",
        "over",
        "under",
        "more",
        "most",
        "some",
        "another",
        "other",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "first",
        "second",
        "last",
        "next",
        "new",
        "said",
        "says",
        "say",
        "officials",
        "official",
        "police",
        "city",
        "county",
        "state",
        "national",
        "council",
        "mr",
        "mrs",
        "ms",
        "dr",
        "capt",
        "lt",
        "sgt",
        "gov",
        "sen",
        "rep",
        "st",
        "no",
        "not",
        "if",
        "when",
        "while",
        "where",
        "who",
        "what",
        "which",
        "how",
        "there",
        "here",
        "also",
        "than",
        "then",
        "so",
        "up",
        "down",
        "out",
        "into",
        "per",
    ]
)
_MULTIPLIERS = {"million": 1e6, "billion": 1e9, "bn": 1e9, "m": 1e6, "thousand": 1e3, "k": 1e3}
# Every pattern is a plain alternation over bounded tokens: nothing can backtrack on story text.
_NUM = r"\d{1,3}(?:,\d{3})++(?:\.\d+)?|\d{1,15}+(?:\.\d+)?"
_MONEY = re.compile(
    rf"(?:US|A|C|NZ)?[$£€]\s?({_NUM})\s?(million|billion|bn|m|k|thousand)?\b"
    rf"|({_NUM})\s(million|billion|thousand)?\s?(dollars|pounds|euros)",
    re.IGNORECASE,
)
_PERCENT = re.compile(rf"({_NUM})\s?(?:%|percent\b|per cent\b)", re.IGNORECASE)
_TIME = re.compile(r"\b(\d{1,2})(?::(\d{2}))?\s?([ap])\.?m\b\.?", re.IGNORECASE)
_SCORE = re.compile(r"\b(\d{1,3})-(\d{1,3})\b")
_MONTH_NAMES = "|".join(sorted(_MONTHS, key=len, reverse=True))
_DATE = re.compile(rf"\b(?:({_MONTH_NAMES})\.?\s(\d{{1,2}})|(\d{{1,2}})\s({_MONTH_NAMES}))\b", re.IGNORECASE)
_PLAIN = re.compile(rf"(?<![\w.])({_NUM})(?:\s(million|billion|thousand))?")
_NAME = re.compile(r"\b[A-Z][\w'’-]{0,40}+")
_WEEKDAY = re.compile(r"\b(" + "|".join(_WEEKDAYS) + r")\b", re.IGNORECASE)


def _value(text: str) -> float:
    return float(text.replace(",", ""))


def _fmt(value: float) -> str:
    return f"{value:g}"


def numbers(text: str) -> list[str]:
    """The numeric facts of a text, normalized and typed, in order of first appearance:
    `$14000000`, `%40`, `t14:30`, `d02-17`, `s3-0`, `n1200`."""
    found: list[tuple[int, str]] = []
    taken: list[tuple[int, int]] = []
    for match in _MONEY.finditer(text):
        if match.group(1):
            value = _value(match.group(1)) * _MULTIPLIERS.get((match.group(2) or "").lower(), 1)
        else:
            value = _value(match.group(3)) * _MULTIPLIERS.get((match.group(4) or "").lower(), 1)
        found.append((match.start(), "$" + _fmt(value)))
        taken.append(match.span())
    for match in _PERCENT.finditer(text):
        found.append((match.start(), "%" + _fmt(_value(match.group(1)))))
        taken.append(match.span())
    for match in _TIME.finditer(text):
        hour = int(match.group(1)) % 12 + (12 if match.group(3).lower() == "p" else 0)
        if hour < 24 and int(match.group(2) or 0) < 60:
            found.append((match.start(), f"t{hour:02d}:{match.group(2) or '00'}"))
            taken.append(match.span())
    for match in _SCORE.finditer(text):
        found.append((match.start(), f"s{match.group(1)}-{match.group(2)}"))
        taken.append(match.span())
    for match in _DATE.finditer(text):
        month = _MONTHS[(match.group(1) or match.group(4)).lower()]
        day = int(match.group(2) or match.group(3))
        if 1 <= day <= 31:
            found.append((match.start(), f"d{month:02d}-{day:02d}"))
            taken.append(match.span())
    for match in _PLAIN.finditer(text):
        if any(start <= match.start() < end for start, end in taken):
            continue
        value = _value(match.group(1)) * _MULTIPLIERS.get((match.group(2) or "").lower(), 1)
        found.append((match.start(), "n" + _fmt(value)))
    found.sort()
    return list(dict.fromkeys(fact for _, fact in found))


def names(text: str) -> list[str]:
    """Capitalized words (people, companies, places), casefolded, in order of first appearance;
    common words, weekdays and months left out."""
    out: dict[str, None] = {}
    for match in _NAME.finditer(text):
        word = match.group(0).casefold().replace("’", "'").rstrip("'-")
        word = word.removesuffix("'s")
        if len(word) < 3 or word in _STOP or word in _WEEKDAYS or word in _MONTHS or not any(c.islower() for c in match.group(0)):
            continue
        out[word] = None
    return list(out)


def weekday_dates(text: str, published: datetime | None) -> list[str]:
    """Weekdays a text names, as the dates they fall on in the week up to its publication."""
    if published is None:
        return []
    out = []
    for day in dict.fromkeys(m.group(1).lower() for m in _WEEKDAY.finditer(text)):
        back = (published.weekday() - _WEEKDAYS.index(day)) % 7
        date = (published - timedelta(days=back)).date()
        out.append(f"d{date.month:02d}-{date.day:02d}")
    return out


def _minor(fact: str) -> bool:
    """A small count or a year: too common to weigh much or to conflict."""
    if not fact.startswith("n"):
        return False
    value = float(fact[1:])
    return value.is_integer() and (value <= 12 or 1900 <= value <= 2100)


def weight(fact: str) -> float:
    """How much agreement on one fact counts (names are stored with a `:` prefix)."""
    if fact.startswith(":"):
        return _NAME_WEIGHT
    if fact.startswith("n"):
        return _COUNT_WEIGHT if _minor(fact) else _NUMBER_WEIGHT
    return _TYPED_WEIGHT


def event_facts(title: str, paragraphs: Sequence[str], published: datetime | None) -> EventFacts:
    """The facts of one story from its plain headline and body paragraphs (boilerplate removed)."""
    title = unicodedata.normalize("NFKC", html.unescape(title))
    body = [unicodedata.normalize("NFKC", p) for p in paragraphs]
    whole = " ".join([title, *body])
    lead = " ".join([title, *body[:1]])
    keyed = " ".join([title, *body[:2]])
    # Numbers are the most specific facts and a rewrite may state them anywhere; names of the
    # headline and first two paragraphs say who and where. Every pair of these is a key.
    key_facts = [f for f in numbers(whole) if not _minor(f)][:KEY_NUMBERS] + [":" + n for n in names(keyed)][:KEY_NAMES]
    return EventFacts(
        facts=tuple(dict.fromkeys([*numbers(whole), *weekday_dates(whole, published), *(":" + n for n in names(whole))])),
        lead=tuple(f for f in numbers(lead) if not _minor(f)),
        keys=tuple(key_facts),
    )


def event_keys(facts: EventFacts) -> tuple[int, ...]:
    """Index keys: one per pair of key facts, as signed 64-bit integers (the band index's type)."""
    out = []
    for a, b in combinations(sorted(facts.keys), 2):
        digest = hashlib.blake2b(f"event\x00{a}\x00{b}".encode(), digest_size=8).digest()
        out.append(int.from_bytes(digest, "big", signed=True))
    return tuple(out)


def _near_time(fact: str, others: frozenset[str]) -> bool:
    if not fact.startswith("t"):
        return False
    minutes = int(fact[1:3]) * 60 + int(fact[4:6])
    return any(o.startswith("t") and abs(minutes - (int(o[1:3]) * 60 + int(o[4:6]))) <= _NEAR_TIME for o in others)


def _conflicts(lead: Sequence[str], other: frozenset[str]) -> list[str]:
    return [f for f in lead if f not in other and not _near_time(f, other)]


def compare(a: EventFacts, a_when: datetime, b: EventFacts, b_when: datetime) -> EventLink:
    """The evidence that two stories report one event: agreed facts, conflicts and the score.
    Symmetric. `same` says whether the score clears the bar."""
    mine, theirs = frozenset(a.facts), frozenset(b.facts)
    agreed = tuple(f for f in a.facts if f in theirs)
    conflicts = tuple(_conflicts(a.lead, theirs)) + tuple(_conflicts(b.lead, mine))
    score = sum(weight(f) for f in agreed) - CONFLICT * len(conflicts)
    gap = abs(a_when - b_when)
    same = gap <= MAX_GAP and score >= MIN_SCORE
    return EventLink(round(score, 2), same, agreed, conflicts, gap.total_seconds() / 3600)


K = TypeVar("K")


def group(
    clusters: Sequence[K],
    outlets: Mapping[K, frozenset[str]],
    firsts: Mapping[K, datetime],
    links: Sequence[tuple[K, K, float, float]],
) -> dict[K, K]:
    """Copy clusters -> the event each belongs to, named by its first cluster in `clusters` order.

    `outlets` is the outlets whose own text each cluster is (its earliest story's source), `firsts`
    when each was first reported; `links` are verified (cluster, cluster, score, hours apart)
    links between their stories. Strongest first (then nearest in time), a link joins two events
    unless they hold texts of the same outlet, or unless it is one of two readings of a story:
    - *stale*: a report published before an update (a later text of the same outlet, linked to
      its first one) that matches the first one too reports the first one, not the update;
    - *ambiguous*: a story that matches, within AMBIGUOUS of the same score, two events that can
      never be one (they hold texts of the same outlet) joins neither: showing a story twice is
      better than hiding one.
    Depends only on its arguments, never on the order of `links`."""
    order = {c: i for i, c in enumerate(clusters)}
    linked: dict[K, dict[K, float]] = {c: {} for c in clusters}
    for a, b, score, _ in links:
        if a in order and b in order and a != b:
            linked[a][b] = linked[b][a] = max(score, linked[a].get(b, score))
    mine = {c: frozenset(outlets.get(c, frozenset())) for c in clusters}
    earlier = {y: [x for x in linked[y] if mine[x] & mine[y] and firsts[x] < firsts[y]] for y in clusters}

    def stale(report: K, update: K) -> bool:
        return firsts[report] < firsts[update] and any(x in linked[report] for x in earlier[update])

    usable = [link for link in links if link[0] in order and link[1] in order and not stale(*link[:2]) and not stale(*link[1::-1])]
    owner: dict[K, K] = {c: c for c in clusters}
    members: dict[K, list[K]] = {c: [c] for c in clusters}
    held: dict[K, set[str]] = {c: set(mine[c]) for c in clusters}
    usable_pairs = {(a, b) for a, b, _, _ in usable} | {(b, a) for a, b, _, _ in usable}

    def ambiguous(story: K, event: K) -> bool:
        score = max(s for t, s in linked[story].items() if owner[t] == event and (story, t) in usable_pairs)
        return any(
            owner[t] not in (event, owner[story]) and s >= score - AMBIGUOUS and held[owner[t]] & held[event]
            for t, s in linked[story].items()
            if (story, t) in usable_pairs
        )

    def key(link: tuple[K, K, float, float]) -> tuple[float, float, int, int]:
        ends = sorted((order[link[0]], order[link[1]]))
        return (-link[2], link[3], ends[0], ends[1])

    for a, b, _, _ in sorted(usable, key=key):
        first, second = owner[a], owner[b]
        if first == second or held[first] & held[second] or ambiguous(a, second) or ambiguous(b, first):
            continue
        keep, drop = (first, second) if order[first] < order[second] else (second, first)
        for cluster in members[drop]:
            owner[cluster] = keep
        members[keep].extend(members.pop(drop))
        held[keep] |= held.pop(drop)
    return owner
