"""Which stories are the same: fingerprints and cluster assignment.

Exact keys first (canonical URL, normalized body hash), then near-duplicate text: MinHash over
word 3-shingles with LSH banding (128 permutations as 32 bands of 4 rows) over the whole text and
over its lead, so copies cut to the first paragraph are found too. Candidates from the index are
always verified on their exact shingle sets before a merge (band collisions never merge).

Pure: no store, network or clock. Hashes are stable across processes and versions
(blake2b-derived, never Python's hash()); SCHEME_VERSION is stored so a change can re-index.
"""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from urllib.parse import urlsplit

import numpy as np

from feeds.models import DedupeSettings, Story

SCHEME_VERSION = 1
PERMUTATIONS = 128
BANDS = 32
ROWS = PERMUTATIONS // BANDS
LEAD_WORDS = 40
MIN_EXACT_WORDS = 8  # a body shorter than this is too generic to be a key
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


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What the index keeps of a story: exact keys, band keys and the shingle set for verification."""

    story_id: str
    keys: tuple[str, ...]
    bands: tuple[int, ...]
    shingles: tuple[int, ...]  # sorted unique 32-bit shingle hashes
    words: int


@dataclass(frozen=True, slots=True)
class Candidate:
    """A stored story that shares a key or a band with a new one."""

    story_id: str
    source: str
    title: str
    cluster_id: int
    exact_cluster_id: int
    keys: tuple[str, ...]
    shingles: tuple[int, ...]
    words: int


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a new story goes, and why (shown by `feeds clusters explain`)."""

    kind: Literal["new", "exact", "near"]
    cluster_id: int | None = None  # None: start a new near cluster
    exact_cluster_id: int | None = None  # None: start a new exact cluster
    matched: str | None = None  # the story that decided it
    reason: str = "no similar story in the window"
    jaccard: float = 0.0
    containment: float = 0.0
    replaces: str | None = None  # same source, same article under a new guid (GUID rotation)


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


def matching_text(story: Story) -> str:
    """The text compared across outlets: the longer of summary and content, boilerplate,
    bylines and datelines removed, NFKC-normalized and casefolded."""
    candidates = [paragraphs(story.content_html), paragraphs(story.summary_html)]
    body = max(candidates, key=lambda ps: sum(len(p) for p in ps))
    kept = [p for p in body if not _is_boilerplate(p)]
    if kept:
        kept[0] = _strip_dateline(kept[0])
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
    words = matching_text(story).split()
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
    return Fingerprint(story.id, tuple(keys), tuple(bands), tuple(int(s) for s in shingles), len(words))


def similarity(a: Sequence[int], b: Sequence[int]) -> tuple[float, float]:
    """Exact Jaccard and containment (of the smaller set in the larger) of two shingle sets."""
    if not a or not b:
        return 0.0, 0.0
    common = len(set(a).intersection(b))
    return common / (len(a) + len(b) - common), common / min(len(a), len(b))


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
    if not fp.shingles:
        return Decision(kind="new", reason=f"too short to compare ({fp.words} words); exact keys only")
    # Rank by how far a candidate clears either threshold, so a truncated copy (low Jaccard, high
    # containment) is not beaten by a candidate with a higher Jaccard that passes neither test.
    best_score: tuple[float, float, float, Candidate] | None = None
    for candidate in candidates:
        jaccard, containment = similarity(fp.shingles, candidate.shingles)
        strength = max(jaccard / settings.jaccard, containment / settings.containment)
        if best_score is None or strength > best_score[0]:
            best_score = (strength, jaccard, containment, candidate)
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


@dataclass(frozen=True, slots=True)
class LeadInfo:
    """What the lead election needs to know of a cluster member."""

    story_id: str
    source: str
    words: int
    when: datetime


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
