"""Which stories are the same: fingerprints and cluster assignment.

Exact keys first (canonical URL, normalized body hash), then near-duplicate text: MinHash over
word 3-shingles with LSH banding (128 permutations as 32 bands of 4 rows) over the whole text and
over its lead, so copies cut to the first paragraph are found too. Candidates from the index are
always verified on their exact shingle sets before a merge (band collisions never merge).
Each new story is also checked against other outlets' stories that share a pair of its key facts
(`events`); the verified same-event links are stored, and `merge_events` turns copy clusters into
event clusters when an output asks for `dedupe: event`.

Pure: no store, network or clock. Hashes are stable across processes and versions
(blake2b-derived, never Python's hash()); SCHEME_VERSION is stored so a change can re-index.
"""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Literal
from urllib.parse import urlsplit

import numpy as np

from feeds.events import compare, event_facts, event_keys, group
from feeds.models import (
    Candidate,
    Cluster,
    Decision,
    DedupeSettings,
    EventLink,
    Fingerprint,
    Found,
    LeadInfo,
    NewCluster,
    NewStory,
    Plan,
    Probe,
    Stamps,
    StoredLink,
    Story,
    StoryEdit,
)
from feeds.normalize import stable_hash

SCHEME_VERSION = 1
PERMUTATIONS = 128
BANDS = 32
ROWS = PERMUTATIONS // BANDS
LEAD_WORDS = 40
MIN_EXACT_WORDS = 8  # a body shorter than this is too generic to be a key
# A band or event key shared by more stories than this in the dedupe window tells nothing (a
# templated headline, a name and a number every story of a day carries) and would make every
# new story compare with all of them: it finds no candidates. Copies still meet through their
# other bands and exact keys; events through their other pairs of facts.
COMMON_KEY = 100
COPY_SCORE = 100.0  # a same-event link between verified copies: stronger than any facts-based one
_PRIME = np.uint64((1 << 61) - 1)
_MASK = np.uint64(0xFFFFFFFF)


def _coefficients() -> tuple[np.ndarray, np.ndarray]:
    values = [
        int.from_bytes(hashlib.blake2b(f"feeds-minhash-{i}".encode(), digest_size=8).digest(), "big") for i in range(2 * PERMUTATIONS)
    ]
    a = np.array([(v >> 33) | 1 for v in values[:PERMUTATIONS]], dtype=np.uint64)  # < 2**31, odd
    b = np.array([v >> 32 for v in values[PERMUTATIONS:]], dtype=np.uint64)  # < 2**32
    return a, b


_A, _B = _coefficients()

# Lines that outlets add around a wire story; dropped before matching. Only short paragraphs are
# tested, so a real paragraph that happens to contain one of these words is kept.
_BOILERPLATE = re.compile(
    r"(get the latest updates|right on your browser|last updated|^updated\b|appeared first on|"
    r"subscribe|sign up|newsletter|advertisement|^advert\b|sponsored|all rights reserved|copyright|©|"
    r"^\(?c\)? ?\d{4}|read more|continue reading|click here|follow us|share this|related:|"
    r"^photo:|^image:|^file photo|this story has been updated|originally (appeared|published)|"
    r"read the full (story|article)|full story at|"
    r"^(by|from|reporting by|written by|story by)\b)",
    re.IGNORECASE,
)
_BOILERPLATE_MAX_WORDS = 20
# Possessive quantifiers and `[^<>]`: no pattern applied to story text can backtrack.
_BLOCK = re.compile(
    r"<\s*+(?:/?(?:p|div|li|h[1-6]|blockquote|tr|section|article|header|footer|figure|figcaption)\b[^<>]*+|br\s*+/?)\s*+>",
    re.IGNORECASE,
)
_TAG = re.compile(r"<[^<>]*+>")
_DATELINE_SPAN = 120  # a dateline is looked for in this many leading characters
_BLANK_LINE = re.compile(r"\n\s*\n")  # paragraphs of plain-text bodies
# Datelines: "OSLO, Norway --", "OSLO —", "Oslo, Norway:", "LIMA, Peru (AP) —", "NEW YORK /PRNewswire/ --".
_DATELINE = re.compile(
    r"^\s*(?P<place>[^\W\d_][\w.'’ -]{0,40}?(?:,\s*[^\W\d_][\w.'’ -]{0,30}?)?)\s*"
    r"(?P<agency>\([^()]{1,40}\)|/\s*[\w ]+\s*/)?\s*"
    r"(?P<sep>--|—|–|:|-(?=\s))\s+",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w+(?:['’.-]\w+)*", re.UNICODE)


def paragraphs(fragment: str | None) -> list[str]:
    """HTML -> plain-text paragraphs, entities decoded, whitespace folded."""
    if not fragment:
        return []
    parts = [p for block in _BLOCK.split(fragment) for p in _BLANK_LINE.split(block)]
    out = []
    for part in parts:
        text = html.unescape(_TAG.sub(" ", part)).replace("\xa0", " ")
        text = " ".join(text.split())
        if text:
            out.append(text)
    return out


def _is_boilerplate(paragraph: str) -> bool:
    return (
        len(paragraph) <= 40 * _BOILERPLATE_MAX_WORDS
        and len(paragraph.split()) <= _BOILERPLATE_MAX_WORDS
        and bool(_BOILERPLATE.search(paragraph))
    )


def _strip_dateline(paragraph: str) -> str:
    match = _DATELINE.match(paragraph[:_DATELINE_SPAN])
    if not match:
        return paragraph
    place = match.group("place").strip()
    words = place.replace(",", " ").split()
    # A dateline is a short place name, capitalized, or upper-case as wire copy writes it.
    if len(words) <= 5 and all(w[:1].isupper() for w in words if w.isalpha() or w[:1].isalpha()):
        return paragraph[match.end() :]
    return paragraph


def body_paragraphs(story: Story) -> list[str]:
    """The paragraphs compared across outlets: of the longer of summary and content, with
    boilerplate, bylines and the dateline removed."""
    candidates = [paragraphs(story.content_html), paragraphs(story.summary_html)]
    body = max(candidates, key=lambda ps: sum(len(p) for p in ps))
    kept = [p for p in body if not _is_boilerplate(p)]
    if kept:
        kept[0] = _strip_dateline(kept[0])
    return kept


def matching_text(story: Story, body: Sequence[str] | None = None) -> str:
    """The text compared across outlets (`body_paragraphs`), NFKC-normalized and casefolded."""
    kept = body_paragraphs(story) if body is None else body
    text = unicodedata.normalize("NFKC", " ".join(kept)).casefold()
    return " ".join(_WORD.findall(text.replace("’", "'")))


def _shingles(words: Sequence[str]) -> np.ndarray:
    if len(words) < 3:
        grams = [" ".join(words)] if words else []
    else:
        grams = [f"{words[i]} {words[i + 1]} {words[i + 2]}" for i in range(len(words) - 2)]
    hashes = {int.from_bytes(hashlib.blake2b(g.encode(), digest_size=4).digest(), "big") for g in grams}
    return np.array(sorted(hashes), dtype=np.uint64)


def _bands(shingles: np.ndarray, tag: str) -> list[int]:
    if shingles.size == 0:
        return []
    signature = ((np.outer(_A, shingles) + _B[:, None]) % _PRIME & _MASK).min(axis=1).astype(np.uint32)
    keys = []
    for band in range(BANDS):
        chunk = signature[band * ROWS : (band + 1) * ROWS].tobytes()
        digest = hashlib.blake2b(f"{SCHEME_VERSION}{tag}{band}".encode() + chunk, digest_size=8).digest()
        keys.append(int.from_bytes(digest, "big", signed=True))
    return keys


def fingerprint(story: Story, settings: DedupeSettings) -> Fingerprint:
    """Exact keys and, for stories long enough to compare, band keys and shingles."""
    body = body_paragraphs(story)
    words = matching_text(story, body).split()
    keys = []
    # A link to a site's home page (feeds that link every entry there) says nothing about the story.
    url = story.canonical_url
    if url and (urlsplit(url).path not in ("", "/") or urlsplit(url).query):
        keys.append("u:" + hashlib.blake2b(url.encode(), digest_size=12).hexdigest())
    if len(words) >= MIN_EXACT_WORDS:
        keys.append("b:" + hashlib.blake2b(" ".join(words).encode(), digest_size=12).hexdigest())
    if len(words) < settings.min_words:
        return Fingerprint(story.id, tuple(keys), (), (), len(words))
    shingles = _shingles(words)
    bands = _bands(shingles, "f") + _bands(_shingles(words[:LEAD_WORDS]), "l")
    facts = event_facts(story.title, body, story.published)
    return Fingerprint(story.id, tuple(keys), tuple(bands), tuple(int(s) for s in shingles), len(words), facts, event_keys(facts))


def similarity(a: Sequence[int], b: Sequence[int]) -> tuple[float, float]:
    """Exact Jaccard and containment (of the smaller set in the larger) of two shingle sets."""
    if not a or not b:
        return 0.0, 0.0
    common = len(set(a).intersection(b))
    return common / (len(a) + len(b) - common), common / min(len(a), len(b))


def _exact(fp: Fingerprint, story: Story, best: Candidate) -> Decision:
    """Joining the cluster of a story sharing an exact key (canonical URL or body text)."""
    shared = sorted(set(best.keys) & set(fp.keys))
    # Same source, same article URL and the same headline or text: the guid rotated, not a new story.
    same_article = (
        best.source == story.source
        and any(k.startswith("u:") for k in shared)
        and (best.title == story.title or any(k.startswith("b:") for k in shared))
    )
    return Decision(
        kind="exact",
        cluster_id=best.cluster_id,
        exact_cluster_id=best.exact_cluster_id,
        matched=best.story_id,
        reason="same canonical URL" if any(k.startswith("u:") for k in shared) else "same body text",
        jaccard=1.0,
        containment=1.0,
        replaces=best.story_id if same_article else None,
    )


def _scored(fp: Fingerprint, candidates: Sequence[Candidate], settings: DedupeSettings) -> list[tuple[float, float, float, Candidate]]:
    """(strength, Jaccard, containment, candidate) of each candidate; a strength of 1 or more
    clears one of the thresholds (a verified copy)."""
    scored = []
    for candidate in candidates:
        jaccard, containment = similarity(fp.shingles, candidate.shingles)
        scored.append((max(jaccard / settings.jaccard, containment / settings.containment), jaccard, containment, candidate))
    return scored


def _also(scored: Sequence[tuple[float, float, float, Candidate]], joined: int | None) -> tuple[str, ...]:
    """The strongest verified copy in each copy cluster but the one joined. A copy of stories
    that sit in two clusters (A ~ B ~ C arrived as A, C, B, or at once on two workers) joins one
    and names the others, whose events then merge, whatever the order of arrival."""
    best: dict[int | None, tuple[float, str]] = {}
    for strength, _, _, candidate in scored:
        if candidate.cluster_id != joined and strength >= 1 and strength > best.get(candidate.cluster_id, (0.0, ""))[0]:
            best[candidate.cluster_id] = (strength, candidate.story_id)
    return tuple(sorted(story_id for _, story_id in best.values()))


def assign(fp: Fingerprint, story: Story, candidates: Sequence[Candidate], settings: DedupeSettings) -> Decision:
    """Join the cluster of the best verified match, or start a new one.

    Merging is across outlets, or the same article URL: a source's own distinct articles are
    never merged with each other, however alike (templated reports, a podcast's stock blurb).
    """
    url_keys = {k for k in fp.keys if k.startswith("u:")}
    candidates = [c for c in candidates if c.source != story.source or url_keys & set(c.keys)]
    exact = [c for c in candidates if set(c.keys) & set(fp.keys)]
    if exact:
        best = min(exact, key=lambda c: (c.source != story.source, c.story_id))
        also = _also(_scored(fp, candidates, settings), best.cluster_id) if fp.shingles else ()
        return replace(_exact(fp, story, best), also=also)
    if not fp.shingles:
        return Decision(kind="new", reason=f"too short to compare ({fp.words} words); exact keys only")
    # Rank by how far a candidate clears either threshold, so a truncated copy (low Jaccard, high
    # containment) is not beaten by a candidate with a higher Jaccard that passes neither test.
    scored = _scored(fp, candidates, settings)
    best_score: tuple[float, float, float, Candidate] | None = None
    for entry in scored:
        if best_score is None or entry[0] > best_score[0]:
            best_score = entry
    if best_score is not None:
        _, jaccard, containment, candidate = best_score
        if jaccard >= settings.jaccard or containment >= settings.containment:
            why = (
                f"jaccard {jaccard:.2f} >= {settings.jaccard}"
                if jaccard >= settings.jaccard
                else f"containment {containment:.2f} >= {settings.containment}"
            )
            return Decision(
                kind="near",
                cluster_id=candidate.cluster_id,
                matched=candidate.story_id,
                reason=why,
                jaccard=jaccard,
                containment=containment,
                also=_also(scored, candidate.cluster_id),
            )
        return Decision(
            kind="new",
            matched=candidate.story_id,
            jaccard=jaccard,
            containment=containment,
            reason=(
                f"nearest story below thresholds (jaccard {jaccard:.2f} < {settings.jaccard}, "
                f"containment {containment:.2f} < {settings.containment})"
            ),
        )
    return Decision(kind="new")


def better_lead(current: LeadInfo, newcomer: LeadInfo, priorities: Mapping[str, int]) -> bool:
    """True when a newcomer is clearly better than the current lead.

    Rule: higher source priority wins; at equal priority, full text beats an excerpt (at least
    1.5x the words); at similar length, a copy published at least 10 minutes earlier (the original).
    """
    mine, theirs = priorities.get(newcomer.source, 0), priorities.get(current.source, 0)
    if mine != theirs:
        return mine > theirs
    if newcomer.words >= 1.5 * max(current.words, 1):
        return True
    if newcomer.words * 1.5 <= current.words:
        return False
    return (current.when - newcomer.when).total_seconds() >= 600


PRUNE_EVERY = timedelta(hours=1)  # of dedupe-window movement between two prunes of the band index


def prune_due(last: datetime | None, horizon: datetime) -> bool:
    """Whether to prune the band index up to `horizon` now: pruning scans the band table, so it
    runs at most once per PRUNE_EVERY of window movement, not after every poll."""
    return last is None or horizon - last >= PRUNE_EVERY


def atom_id(kind: str, story_id: str) -> str:
    """The Atom id of a cluster started by `story_id`: minted once, kept when the lead changes."""
    return "urn:feeds:" + stable_hash(kind, story_id, size=16)


def probe(polls: Sequence[tuple[Sequence[Story], Sequence[Fingerprint]]], *, since: datetime) -> Probe:
    """What a batch of polls asks the store: its guids, and the keys and bands of its stories."""
    fps = [fp for _, fingerprints in polls for fp in fingerprints]
    return Probe(
        guids=tuple((s.source, s.guid) for stories, _ in polls for s in stories),
        keys=tuple(sorted({k for fp in fps for k in fp.keys})),
        bands=tuple(sorted({b for fp in fps for b in (*fp.bands, *fp.event_keys)})),
        since=since,
        common=COMMON_KEY,
    )


def _uncommon(stored: Sequence[str], batch: Sequence[str]) -> tuple[str, ...]:
    """The stories a band or event key finds, stored and in this batch; none when more than
    COMMON_KEY share it (the store drops its side of such a key already)."""
    return () if len(stored) + len(batch) > COMMON_KEY else (*stored, *batch)


def plan(
    polls: Sequence[tuple[Sequence[Story], Sequence[Fingerprint]]],
    found: Found,
    settings: DedupeSettings,
    priorities: Mapping[str, int],
) -> Plan:
    """Decide, in one pure pass, everything a batch of polls changes: which stories are new and
    which cluster each joins (copies inside the batch included: a story matches those planned
    before it), which stored stories were edited and their stamps, new clusters and their Atom
    ids, leads and cluster times. `found` is the store's answer to `probe(polls)`."""
    planner = _Planner(found, settings, priorities)
    counts = tuple(planner.poll(stories, fingerprints) for stories, fingerprints in polls)
    return planner.result(counts)


class _Planner:
    """The state of one plan: the stored index as found, plus what the batch added so far."""

    def __init__(self, found: Found, settings: DedupeSettings, priorities: Mapping[str, int]) -> None:
        self.found, self.settings, self.priorities = found, settings, priorities
        self.by_key: dict[str, list[str]] = {}
        self.by_band: dict[int, list[str]] = {}
        self.by_event: dict[int, list[str]] = {}
        self.links: dict[tuple[str, str], StoredLink] = {}
        self.planned: dict[str, Candidate] = {}
        self.inserts: dict[str, NewStory] = {}
        self.edits: dict[str, StoryEdit] = {}
        self.guids: list[tuple[str, str, str]] = []
        self.leads: dict[int, LeadInfo] = dict(found.leads)
        self.first_times: dict[int, datetime] = {}
        self.started: dict[int, tuple[Literal["near", "exact"], str, datetime]] = {}

    def poll(self, stories: Sequence[Story], fingerprints: Sequence[Fingerprint]) -> tuple[int, int]:
        new = updated = 0
        for story, fp in zip(stories, fingerprints, strict=True):
            if (story.source, story.guid) in self.found.forgotten:
                continue  # deleted by retention: an old entry the feed still carries is not news
            stored = self.found.known.get((story.source, story.guid))
            if stored is not None:
                if self._stamps(stored).content_hash != story.content_hash:
                    self._edit(stored, story, fp)
                    updated += 1
                continue
            if story.id in self.inserts:
                continue  # the same entry twice in one batch
            decision = assign(fp, story, self._candidates(fp), self.settings)
            if decision.replaces is not None:
                # The same article of the same source under a new guid (GUID rotation): one story.
                self._edit(decision.replaces, story, fp)
                self.guids.append((story.source, story.guid, decision.replaces))
                continue
            self._insert(story, fp, decision)
            new += 1
        return new, updated

    def _stamps(self, story_id: str) -> Stamps:
        pending = self.inserts.get(story_id)
        edited = self.edits.get(story_id)
        latest = pending.story if pending else edited.story if edited else None
        if latest is not None:
            return Stamps(latest.first_seen, latest.published, latest.updated, latest.content_hash)
        return self.found.stamps[story_id]

    def _edit(self, story_id: str, story: Story, fp: Fingerprint) -> None:
        """A story changed in place: a story without a date of its own keeps the one it was first
        given; an edit without an updated stamp of its own is stamped when we saw it."""
        old = self._stamps(story_id)
        edited = old.content_hash != story.content_hash
        text = replace(
            story,
            id=story_id,
            first_seen=old.first_seen,
            published=story.published or old.published,
            updated=story.updated or (story.first_seen if edited else old.updated),
        )
        fp = replace(fp, story_id=story_id)
        pending = self.inserts.get(story_id)
        if pending is not None:
            if pending.story.guid != text.guid:  # rotated within the batch: both guids name it
                self.guids.append((pending.story.source, pending.story.guid, story_id))
            self.inserts[story_id] = replace(pending, story=text, fingerprint=fp)
        else:
            self.edits[story_id] = StoryEdit(text, fp)

    def _candidates(self, fp: Fingerprint) -> list[Candidate]:
        ids: set[str] = set()
        for key in fp.keys:
            ids.update(self.found.by_key.get(key, ()))
            ids.update(self.by_key.get(key, ()))
        for band in fp.bands:
            ids.update(_uncommon(self.found.by_band.get(band, ()), self.by_band.get(band, ())))
        ids.discard(fp.story_id)
        return [self.planned.get(i) or self.found.candidates[i] for i in sorted(ids)]

    def _start(self, kind: Literal["near", "exact"], story: Story) -> int:
        ref = -1 - len(self.started)
        self.started[ref] = (kind, atom_id(kind, story.id), story.first_seen)
        return ref

    def _insert(self, story: Story, fp: Fingerprint, decision: Decision) -> None:
        near = decision.cluster_id if decision.cluster_id is not None else self._start("near", story)
        exact = decision.exact_cluster_id if decision.exact_cluster_id is not None else self._start("exact", story)
        self.inserts[story.id] = NewStory(story, fp, near, exact, decision)
        newcomer = LeadInfo(story.id, story.source, fp.words, story.when)
        for cluster in (near, exact):
            if cluster in self.started and cluster not in self.leads:
                self.leads[cluster] = newcomer
                self.first_times[cluster] = story.when
                continue
            current = self.leads.get(cluster)
            if current is not None and better_lead(current, newcomer, self.priorities):
                self.leads[cluster] = newcomer
            first = self.first_times.get(cluster) or self.found.first_times.get(cluster)
            self.first_times[cluster] = story.when if first is None else min(first, story.when)
        self._link(story, fp, near)
        for other in decision.also:  # copies in other clusters: one event, whichever cluster it joined
            a, b = sorted((story.id, other))
            hours = abs((story.when - self._when(other)).total_seconds()) / 3600
            self.links[(a, b)] = StoredLink(a, b, EventLink(COPY_SCORE, True, (f"a copy ({decision.reason})",), (), hours))
        candidate = Candidate(story.id, story.source, story.title, near, exact, fp.keys, fp.shingles, fp.words, fp.event)
        self.planned[story.id] = candidate
        for key in fp.keys:
            self.by_key.setdefault(key, []).append(story.id)
        for band in fp.bands:
            self.by_band.setdefault(band, []).append(story.id)
        for event_key in fp.event_keys:
            self.by_event.setdefault(event_key, []).append(story.id)

    def _when(self, story_id: str) -> datetime:
        stamps = self._stamps(story_id)
        return stamps.published or stamps.first_seen

    def _link(self, story: Story, fp: Fingerprint, near: int) -> None:
        """Verify the same-event candidates of a new story: other outlets' stories that share a
        pair of key facts and are not in its copy cluster. Every verified link is kept (events are
        computed from all of them), so the order in which stories arrive does not matter."""
        if fp.event is None:
            return
        ids: set[str] = set()
        for key in fp.event_keys:
            ids.update(_uncommon(self.found.by_band.get(key, ()), self.by_event.get(key, ())))
        ids.discard(story.id)
        nearest: StoredLink | None = None  # the best rejected one, kept to explain it
        for other in sorted(ids):
            candidate = self.planned.get(other) or self.found.candidates.get(other)
            if candidate is None or candidate.event is None or candidate.source == story.source or candidate.cluster_id == near:
                continue
            link = compare(fp.event, story.when, candidate.event, self._when(other))
            a, b = sorted((story.id, other))
            if link.same:
                self.links[(a, b)] = StoredLink(a, b, link)
            elif nearest is None or link.score > nearest.link.score:
                nearest = StoredLink(a, b, link)
        if nearest is not None:
            self.links.setdefault((nearest.a, nearest.b), nearest)

    def result(self, counts: tuple[tuple[int, int], ...]) -> Plan:
        was = self.found.leads
        stored_first = self.found.first_times
        return Plan(
            clusters=tuple(
                NewCluster(ref, kind, atom, self.leads[ref].story_id, created, self.first_times[ref])
                for ref, (kind, atom, created) in self.started.items()
            ),
            stories=tuple(self.inserts.values()),
            edits=tuple(self.edits.values()),
            guids=tuple(self.guids),
            leads={c: lead.story_id for c, lead in self.leads.items() if c > 0 and c in was and was[c].story_id != lead.story_id},
            first_times={c: t for c, t in self.first_times.items() if c > 0 and (stored_first.get(c) is None or t < stored_first[c])},
            counts=counts,
            links=tuple(self.links.values()),
        )


def merge_events(clusters: Sequence[Cluster], links: Sequence[tuple[str, str, EventLink]], priorities: Mapping[str, int]) -> list[Cluster]:
    """Copy clusters -> event clusters: those the verified links join (`events.group`) become one
    entry. It keeps the id and Atom id of its oldest cluster, so it never changes as the event
    grows; its lead is the best of the clusters' leads (`better_lead`); `reports` lists each copy
    cluster's members, so readers see which reports are copies of which. Newest event first."""
    ordered = sorted(clusters, key=lambda c: c.id)  # creation order
    home = {s.id: c.id for c in clusters for s in c.members}
    earliest = {c.id: min(c.members, key=lambda s: (s.when, s.id)) for c in clusters}
    outlets = {c: frozenset({s.source}) for c, s in earliest.items()}
    firsts = {c: s.when for c, s in earliest.items()}
    pairs = [(home[a], home[b], link.score, link.hours) for a, b, link in links if link.same and a in home and b in home]
    owner = group([c.id for c in ordered], outlets, firsts, pairs)
    parts: dict[int, list[Cluster]] = {}
    for cluster in ordered:
        parts.setdefault(owner[cluster.id], []).append(cluster)
    merged = []
    for first_id, part in parts.items():
        first = part[0]
        if len(part) == 1:
            merged.append(replace(first, reports=(tuple(s.id for s in first.members),)))
            continue
        # The earliest report's lead first, then each other one in time order: the same lead
        # whatever order the clusters were created in.
        leads = sorted((c.lead for c in part), key=lambda s: (s.when, s.id))
        lead = leads[0]
        best = LeadInfo(lead.id, lead.source, len(matching_text(lead).split()), lead.when)
        for other in leads[1:]:
            newcomer = LeadInfo(other.id, other.source, len(matching_text(other).split()), other.when)
            if better_lead(best, newcomer, priorities):
                lead, best = other, newcomer
        members = sorted((s for c in part for s in c.members), key=lambda s: (s.when, s.id))
        reports = tuple(tuple(s.id for s in c.members) for c in part)
        merged.append(Cluster(first_id, first.atom_id, lead, (lead, *(s for s in members if s.id != lead.id)), reports))
    return sorted(merged, key=lambda c: (min(s.when for s in c.members), c.id), reverse=True)
