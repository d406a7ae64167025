"""Frozen value types passed between pipeline stages.

Plain data, picklable (so parsing can move to a process pool), no I/O methods.
Imports only the standard library.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

SourceStatus = Literal["new", "ok", "not_modified", "failing", "gone"]
OutcomeStatus = Literal["ok", "not_modified", "unchanged", "failed", "gone", "skipped"]


def word(status: str) -> str:
    """The one word users see for a poll outcome or a source status, wherever they read it (CLI,
    JSON, logs, pages): a 304 and a body that did not change are both "unchanged"."""
    return "unchanged" if status == "not_modified" else status


FORMATS = {"atom": "application/atom+xml", "rss": "application/rss+xml", "json": "application/feed+json"}  # each output's files


@dataclass(frozen=True, slots=True)
class Source:
    """A feed the user listed in the config."""

    name: str
    url: str  # http(s) URL, or file:///absolute/path for a local file
    title: str | None = None
    tags: tuple[str, ...] = ()
    interval: timedelta = timedelta(minutes=30)
    min_interval: timedelta = timedelta(minutes=5)
    max_interval: timedelta = timedelta(days=1)
    priority: int = 0  # higher wins when electing a cluster's lead story
    websub: bool = False  # subscribe to the hub the feed advertises (needs websub.public_url)
    private: bool = False  # may reach private addresses although its URL names a public host
    retention: timedelta | None = None  # delete this source's stories older than this (None: the global setting)
    rebase: datetime | None = None  # samples: this instant of the feed's dates falls on the first poll
    shift: timedelta = timedelta(0)  # added to the feed's dates (resolved from `rebase` when polling)


@dataclass(frozen=True, slots=True)
class SourceState:
    """What we remember about polling one source; saved after every poll."""

    name: str
    url: str  # the URL polled now (moves after a confirmed permanent redirect)
    configured_url: str  # the URL in the config when this state was made
    status: SourceStatus = "new"
    etag: str | None = None
    last_modified: str | None = None
    body_hash: str | None = None
    last_poll: datetime | None = None
    last_success: datetime | None = None
    next_poll: datetime | None = None  # None: due now
    failures: int = 0
    failing_since: datetime | None = None
    error: str | None = None
    warning: str | None = None
    retry_after: datetime | None = None  # no request before this instant, ever
    redirect_to: str | None = None  # a permanent redirect seen, not yet confirmed
    redirect_seen: int = 0
    moved_from: str | None = None
    interval: timedelta | None = None
    interval_reason: str = "configured"
    feed_title: str | None = None
    feed_link: str | None = None
    feed_id: str | None = None
    feed_updated: datetime | None = None
    hub: str | None = None  # the WebSub hub the feed advertises
    topic: str | None = None  # the feed's rel="self" URL: what we subscribe to
    websub_secret: str | None = None  # our HMAC key for this source's subscription
    websub_requested: datetime | None = None  # when we last asked the hub to (re)subscribe us
    websub_expires: datetime | None = None  # lease end, once the hub verified our intent
    seen: tuple[str, ...] = ()  # marks (id and text) of the entries last read: unchanged ones skip the pipeline


@dataclass(frozen=True, slots=True)
class FetchResult:
    """The outcome of one request (after redirects), success or not."""

    url: str  # what we asked for
    final_url: str
    status: int | None  # None: no HTTP response (transport error, cap hit)
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-cased names
    body: bytes = b""
    permanent_redirect: str | None = None  # target, if every hop was 301/308
    error: str | None = None
    elapsed: float = 0.0

    def header(self, name: str) -> str | None:
        """One response header by case-insensitive name."""
        return self.headers.get(name.lower())


@dataclass(frozen=True, slots=True)
class Author:
    """An entry's author as the feed gives it."""

    name: str | None = None
    email: str | None = None
    uri: str | None = None


@dataclass(frozen=True, slots=True)
class Enclosure:
    """A media file attached to an entry (podcasts, images)."""

    url: str
    type: str | None = None
    length: int | None = None


@dataclass(frozen=True, slots=True)
class ParsedEntry:
    """One entry as the parser read it, before normalization."""

    id: str | None = None
    link: str | None = None
    title: str | None = None
    title_is_html: bool = False
    summary: str | None = None
    content: str | None = None
    authors: tuple[Author, ...] = ()
    categories: tuple[str, ...] = ()
    enclosures: tuple[Enclosure, ...] = ()
    published: datetime | None = None
    updated: datetime | None = None


@dataclass(frozen=True, slots=True)
class ParsedFeed:
    """A feed as the parser read it: its own metadata and its entries."""

    format: str
    title: str | None = None
    link: str | None = None
    id: str | None = None
    updated: datetime | None = None
    entries: tuple[ParsedEntry, ...] = ()
    warning: str | None = None  # a bozo feed we still read
    ttl: timedelta | None = None  # RSS <ttl> or sy:updatePeriod
    hub: str | None = None
    self_url: str | None = None


@dataclass(frozen=True, slots=True)
class Story:
    """One entry of one source, normalized; the unit we store and merge."""

    source: str
    guid: str  # the source's own id for the entry (or one derived from link and title)
    id: str  # globally unique and stable: derived from source and guid
    title: str
    link: str | None
    canonical_url: str | None
    first_seen: datetime
    published: datetime | None = None
    updated: datetime | None = None
    summary_html: str | None = None
    content_html: str | None = None
    authors: tuple[Author, ...] = ()
    categories: tuple[str, ...] = ()
    enclosures: tuple[Enclosure, ...] = ()
    content_hash: str = ""  # changes when the title, summary or content changes

    @property
    def when(self) -> datetime:
        """The stamp to sort and show by: published, else first seen."""
        return self.published or self.first_seen

    @property
    def stamp(self) -> datetime:
        """The last-updated stamp: updated, else published, else first seen."""
        return self.updated or self.published or self.first_seen


@dataclass(frozen=True, slots=True)
class Cluster:
    """One story as reported by one or more outlets; published as one entry."""

    id: int
    atom_id: str  # minted once, never changes, even when the lead does
    lead: Story
    members: tuple[Story, ...]  # lead first
    reports: tuple[tuple[str, ...], ...] = ()  # an event's reports: the member ids of each copy cluster

    @property
    def others(self) -> tuple[Story, ...]:
        """Every member but the lead."""
        return tuple(m for m in self.members if m.id != self.lead.id)

    @property
    def updated(self) -> datetime:
        """The newest last-updated stamp of any member."""
        return max(m.stamp for m in self.members)


def ordered_cluster(cluster_id: int, atom_id: str, lead_id: str, members: Sequence[Story]) -> Cluster:
    """A cluster from its stored members: the elected lead first; when the lead is not among
    `members` (an output that leaves its source out), the earliest member leads there."""
    lead = next((s for s in members if s.id == lead_id), members[0])
    return Cluster(cluster_id, atom_id, lead, (lead, *(s for s in members if s.id != lead.id)))


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """One merged feed to publish as <name>.atom, .rss and .json."""

    name: str
    title: str
    include_sources: tuple[str, ...] = ()
    include_tags: tuple[str, ...] = ()
    limit: int = 100
    dedupe: Literal["copies", "event", "exact"] = "event"
    description: str | None = None
    report_failures: timedelta | None = None  # publish an entry for sources failing at least this long
    include_rules: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (field, patterns): each field must match one
    exclude_rules: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (field, patterns): any match drops the entry
    max_age: timedelta | None = None
    per_source_limit: int | None = None  # entries led by one source
    min_sources: int = 1  # independent reports an entry needs
    title_template: str | None = None  # e.g. "[{source}] {title}"
    archive: bool = False  # RFC 5005 archive documents of what leaves the live feed

    @property
    def has_rules(self) -> bool:
        """True when rules may drop entries (so more than `limit` are read to fill the output)."""
        return bool(self.include_rules or self.exclude_rules or self.max_age or self.per_source_limit or self.min_sources > 1)

    def includes(self, source: Source) -> bool:
        """True when stories of this source belong in the output."""
        if not self.include_sources and not self.include_tags:
            return True
        return source.name in self.include_sources or bool(set(source.tags) & set(self.include_tags))


@dataclass(frozen=True, slots=True)
class FetchSettings:
    """How the fetcher behaves; every limit is configurable."""

    connect_timeout: float = 10.0
    read_timeout: float = 30.0  # total time to read a response, not per chunk
    max_wire_bytes: int = 10_000_000
    max_body_bytes: int = 50_000_000
    max_redirects: int = 5
    workers: int = 8
    per_host: int = 2
    user_agent: str | None = None
    parse_timeout: float = 60.0  # seconds one body may take to parse (in a worker process) before it is abandoned
    parse_workers: int = 0  # worker processes that parse; 0: one per core, at most 4


@dataclass(frozen=True, slots=True)
class DedupeSettings:
    """How stories are merged across sources."""

    window: timedelta = timedelta(days=3)
    jaccard: float = 0.5
    containment: float = 0.8
    min_words: int = 15


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The built-in HTTP server."""

    host: str = "127.0.0.1"
    port: int = 8080
    cache_max_age: int = 300  # seconds, for Cache-Control on outputs
    max_connections: int = 512  # open client connections at most (also at most half the file descriptors)
    header_timeout: float = 10.0  # seconds a client has to send a whole request head


@dataclass(frozen=True, slots=True)
class WebSubSettings:
    """WebSub as publisher (ping a hub when outputs change) and as subscriber (get pushed to)."""

    hub: str | None = None  # advertised in outputs and pinged on change
    public_url: str | None = None  # where hubs can reach this server, for subscriptions
    lease: timedelta = timedelta(days=5)


@dataclass(frozen=True, slots=True)
class Settings:
    """A validated configuration file."""

    path: Path
    storage: str
    publish_dir: Path
    base_url: str
    sources: tuple[Source, ...]
    outputs: tuple[OutputSpec, ...]
    fetch: FetchSettings = FetchSettings()
    dedupe: DedupeSettings = DedupeSettings()
    tick: timedelta = timedelta(seconds=10)
    lease: timedelta = timedelta(minutes=10)  # how long a worker's claim on a source lasts (PostgreSQL)
    retention: timedelta | None = None  # delete stories older than this (None: keep everything)
    max_entries: int = 500
    server: ServerSettings = ServerSettings()
    websub: WebSubSettings = WebSubSettings()
    title: str = "feeds"  # the site's name, on the index and every page

    def source(self, name: str) -> Source | None:
        """The source called `name`, if configured."""
        return next((s for s in self.sources if s.name == name), None)


@dataclass(frozen=True, slots=True)
class SourceView:
    """One configured source as its operator sees it (`feeds status`, the sources page)."""

    name: str
    title: str
    state: SourceState
    description: str  # the state in words
    stories: int
    interval: str

    @property
    def failing(self) -> bool:
        """Failing or gone: what an operator looks at first."""
        return self.state.status in ("failing", "gone")


@dataclass(frozen=True, slots=True)
class PollOutcome:
    """What polling one source did; failure is data, not an exception."""

    source: str
    status: OutcomeStatus
    new: int = 0
    updated: int = 0
    error: str | None = None
    warning: str | None = None


# -- the dedupe index: what `dedupe` decides and the store keeps ---------------------------------


@dataclass(frozen=True, slots=True)
class EventFacts:
    """What `events` compares of a story: its facts (typed numbers, resolved dates and `:`names),
    the numbers its headline and lead state, and the key facts its index keys are made of."""

    facts: tuple[str, ...]
    lead: tuple[str, ...]
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EventLink:
    """The evidence that two stories report one event (`events.compare`)."""

    score: float
    same: bool
    agreed: tuple[str, ...]
    conflicts: tuple[str, ...]
    hours: float  # between their publication times


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What the index keeps of a story: exact keys, band keys and the shingle set for verification,
    and its event facts with their index keys (empty for a story too short to compare)."""

    story_id: str
    keys: tuple[str, ...]
    bands: tuple[int, ...]
    shingles: tuple[int, ...]  # sorted unique 32-bit shingle hashes
    words: int
    event: EventFacts | None = None
    event_keys: tuple[int, ...] = ()


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
    event: EventFacts | None = None


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
    also: tuple[str, ...] = ()  # near: the best verified match in each other copy cluster (their events merge)


@dataclass(frozen=True, slots=True)
class LeadInfo:
    """What the lead election needs to know of a cluster member."""

    story_id: str
    source: str
    words: int
    when: datetime


@dataclass(frozen=True, slots=True)
class Stamps:
    """A stored story's dates and text hash: what an edit of it keeps or moves."""

    first_seen: datetime
    published: datetime | None
    updated: datetime | None
    content_hash: str


@dataclass(frozen=True, slots=True)
class Probe:
    """What a batch of new and edited stories asks the store (`tx.lookup`)."""

    guids: tuple[tuple[str, str], ...]  # (source, guid): which are stored already
    keys: tuple[str, ...]  # exact keys to find stories by
    bands: tuple[int, ...]  # band keys to find stories by, first seen since `since`
    since: datetime
    common: int = 0  # a band key more stories than this share in the window finds none (0: no limit)


@dataclass(frozen=True, slots=True)
class Found:
    """The store's answer to a Probe: everything `dedupe.plan` needs, read in a few statements."""

    known: Mapping[tuple[str, str], str]  # (source, guid) -> stored story id
    stamps: Mapping[str, Stamps]  # story id -> stamps, for known stories and candidates
    candidates: Mapping[str, Candidate]  # story id -> candidate
    by_key: Mapping[str, tuple[str, ...]]  # exact key -> story ids
    by_band: Mapping[int, tuple[str, ...]]  # band key -> story ids (first seen in the window)
    leads: Mapping[int, LeadInfo]  # cluster id -> its current lead, for the candidates' clusters
    first_times: Mapping[int, datetime]  # cluster id -> when it was first reported
    forgotten: frozenset[tuple[str, str]] = frozenset()  # (source, guid) of stories retention deleted


@dataclass(frozen=True, slots=True)
class NewCluster:
    """A cluster a plan starts. `ref` is negative and only names it within the plan: the store
    gives it its id when it saves the plan."""

    ref: int
    kind: Literal["near", "exact"]
    atom_id: str  # minted by the plan, never changes
    lead: str
    created: datetime
    first_time: datetime


@dataclass(frozen=True, slots=True)
class NewStory:
    """A story to insert, with the clusters it joins (stored ids, or refs of NewClusters)."""

    story: Story
    fingerprint: Fingerprint
    cluster: int
    exact_cluster: int
    decision: Decision


@dataclass(frozen=True, slots=True)
class StoryEdit:
    """A stored story's new text, to save and re-index. `story` carries the stored id and
    first-seen stamp and the published/updated stamps the plan decided; the clusters it is in
    are unchanged, and the store recomputes when they were first reported."""

    story: Story
    fingerprint: Fingerprint


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything one batch changes in the store, decided in pure code; `tx.save` applies it."""

    clusters: tuple[NewCluster, ...] = ()
    stories: tuple[NewStory, ...] = ()
    edits: tuple[StoryEdit, ...] = ()
    guids: tuple[tuple[str, str, str], ...] = ()  # (source, guid, story id) beyond the new stories' own
    leads: Mapping[int, str] = field(default_factory=dict)  # stored cluster id -> its new lead
    first_times: Mapping[int, datetime] = field(default_factory=dict)  # stored cluster id -> moved earlier
    counts: tuple[tuple[int, int], ...] = ()  # (new, updated) per source of the batch, in order
    links: tuple[StoredLink, ...] = ()  # verified same-event links of the new stories


@dataclass(frozen=True, slots=True)
class StoredLink:
    """A verified same-event link between two stories (ids in sorted order), with its evidence."""

    a: str
    b: str
    link: EventLink
