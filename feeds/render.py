"""Clusters -> Atom 1.0, RSS 2.0 and JSON Feed 1.1 bytes.

Pure: no store, files or clock. Atom follows RFC 4287: one id, title and updated on the feed and
on every entry, rel="self", an author on every entry (falling back to the outlet), a full
atom:source (id, title, link, updated) naming the originating feed, rel="via" links for the other
outlets that carried the story. Ids come from the store and never change between renders.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from feedgen.ext.base import BaseEntryExtension, BaseExtension
from feedgen.feed import FeedEntry, FeedGenerator
from feedgen.util import xml_elem

from feeds import PROJECT_URL, __version__
from feeds.models import FORMATS, Cluster, OutputSpec, Story
from feeds.normalize import display_url, excerpt
from feeds.rules import entry_title
from feeds.timeutil import EPOCH, to_rfc3339
from feeds.untrusted import xml_safe

log = logging.getLogger(__name__)

ATOM_NS = "http://www.w3.org/2005/Atom"
HISTORY_NS = "http://purl.org/syndication/history/1.0"  # RFC 5005 feed paging and archiving


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What outputs say about an originating feed (config plus what its last fetch told us)."""

    name: str
    title: str
    feed_url: str
    link: str | None = None
    id: str | None = None
    updated: datetime | None = None


@dataclass(frozen=True, slots=True)
class Alert:
    """A source failing long enough to tell the output's readers (outputs opt in)."""

    source: SourceInfo
    since: datetime
    message: str
    gone: bool = False

    @property
    def id(self) -> str:
        """Stable for one outage, so readers see one entry per outage."""
        return f"urn:feeds:failing:{self.source.name}:{int(self.since.timestamp())}"

    @property
    def title(self) -> str:
        """What the entry says."""
        state = "is gone (HTTP 410)" if self.gone else f"has been failing since {self.since.strftime('%Y-%m-%d %H:%M UTC')}"
        return f"Source {self.source.title} {state}"


@dataclass(frozen=True, slots=True)
class FeedView:
    """Everything an output format needs: the output, its clusters and its sources."""

    output: OutputSpec
    clusters: tuple[Cluster, ...]
    sources: Mapping[str, SourceInfo]
    base_url: str
    hub: str | None = None  # a WebSub hub to advertise
    alerts: tuple[Alert, ...] = ()
    prev_archive: str | None = None  # RFC 5005: the newest archive page before this document
    current: str | None = None  # RFC 5005: set on an archive page, the live feed it belongs to

    def url(self, fmt: str) -> str:
        """The public URL of this output in one format."""
        return f"{self.base_url}{self.output.name}.{fmt}"

    @property
    def home(self) -> str:
        """The output's river page."""
        return f"{self.base_url}{self.output.name}/"

    @property
    def updated(self) -> datetime:
        """The newest entry's stamp (what readers show as last updated), not the render time."""
        return max([*(c.updated for c in self.clusters), *(a.since for a in self.alerts)], default=EPOCH)

    def outlet(self, story: Story) -> SourceInfo:
        """The SourceInfo of a story's source (a placeholder if it left the config)."""
        return self.sources.get(story.source) or SourceInfo(story.source, story.source, "")


def byline(story: Story, outlet: str) -> list[str]:
    """Who wrote a story, as readers show it: "Ines Calder, Meridian Wire" for each author with
    a name (or e-mail), the outlet alone when there is none. Every format says the outlet where
    readers display an author (Atom author, RSS dc:creator, JSON Feed authors). Not "Ines Calder
    (Meridian Wire)": readers take RSS's "name (e-mail)" habit and drop the outlet as an e-mail."""
    names = [a.name or a.email or "" for a in story.authors if a.name or a.email]
    return [name if outlet.casefold() in name.casefold() else f"{name}, {outlet}" for name in names] or [outlet]


def shown_time(value: datetime) -> str:
    """A time as entries say it in text: "7 Dec 2026 14:02 UTC"."""
    return f"{value.day} {value.strftime('%b %Y %H:%M')} UTC"


def story_page(view: FeedView, cluster: Cluster) -> str:
    """The address of a story's own page (every outlet that carried it, as a timeline)."""
    return f"{view.home}story/{cluster.id}"


def entry_html(view: FeedView, cluster: Cluster) -> str | None:
    """The lead's sanitized HTML, then each other outlet with its own headline, time and a clean
    link ("Also reported by"), which reports are independent, and a link to the story's page."""
    lead = cluster.lead
    body = lead.content_html or lead.summary_html or ""
    others = [o for o in sorted(cluster.others, key=lambda s: (s.when, s.id)) if display_url(o.link)]
    if others:
        items = "".join(
            f'<li><a href="{html.escape(display_url(o.link) or "", quote=True)}">{html.escape(o.title or "(untitled)")}</a>'
            f" ({html.escape(view.outlet(o).title)}, {shown_time(o.when)})</li>"
            for o in others
        )
        body += f'<p class="feeds-also">Also reported by:</p><ul class="feeds-also">{items}</ul>'
    if len(cluster.reports) > 1:  # an event: say which reports are independent, which are copies
        parts = []
        for report in _reports(cluster):
            names = [html.escape(view.outlet(s).title) for s in report]
            parts.append(names[0] + (f" (copied by {', '.join(dict.fromkeys(names[1:]))})" if len(names) > 1 else ""))
        body += f'<p class="feeds-reports">{len(parts)} independent reports: {"; ".join(parts)}</p>'
    if len(cluster.members) > 1 and view.base_url.startswith(("http://", "https://")):
        page = html.escape(story_page(view, cluster), quote=True)
        body += f'<p class="feeds-story"><a href="{page}">How {len(cluster.members)} outlets reported this story</a></p>'
    return xml_safe(body) or None


def _reports(cluster: Cluster) -> list[list[Story]]:
    """An event's independent reports, first reported first; each its stories, earliest first
    (the original, then its copies). A story that is no event holds one report."""
    stories = {s.id: s for s in cluster.members}
    groups = cluster.reports or (tuple(s.id for s in cluster.members),)
    carried = [sorted((stories[i] for i in r if i in stories), key=lambda s: (s.when, s.id)) for r in groups]
    return sorted((r for r in carried if r), key=lambda r: (r[0].when, r[0].id))


def timeline(view: FeedView, cluster: Cluster) -> list[dict[str, Any]]:
    """Every outlet that carried a story, in the order feeds saw them: its headline, clean link,
    published time, when feeds first saw it, when its text changed, and which report it is."""
    rows = []
    for number, report in enumerate(_reports(cluster), 1):
        for position, story in enumerate(report):
            changed = story.updated if story.updated and story.updated - story.when > _CHANGE else None
            rows.append(
                {
                    "source": story.source,
                    "outlet": view.outlet(story).title,
                    "title": story.title,
                    "url": display_url(story.link),
                    "published": to_rfc3339(story.when),
                    "seen": to_rfc3339(story.first_seen),
                    "changed": to_rfc3339(changed) if changed else None,
                    "report": number,
                    "copy": position > 0,
                    "lead": story.id == cluster.lead.id,
                }
            )
    return sorted(rows, key=lambda r: (r["published"], r["seen"], r["source"]))


_CHANGE = timedelta(minutes=1)  # an updated stamp closer than this to publication is no change


class _SourceFeedExt(BaseExtension):  # type: ignore[misc]
    """Feed-level links feedgen does not write: RSS's own self link, and the WebSub hub."""

    def __init__(self) -> None:
        self.rss_self: str | None = None
        self.hub: str | None = None
        self.prev_archive: str | None = None
        self.current: str | None = None

    def extend_atom(self, feed: Any) -> Any:
        if self.hub:
            xml_elem("link", feed, rel="hub", href=self.hub)
        if self.current:  # an archive document (RFC 5005): immutable, linked to the live feed
            xml_elem(f"{{{HISTORY_NS}}}archive", feed)
            xml_elem("link", feed, rel="current", href=self.current, type=FORMATS["atom"])
        if self.prev_archive:
            xml_elem("link", feed, rel="prev-archive", href=self.prev_archive, type=FORMATS["atom"])
        return feed

    def extend_rss(self, feed: Any) -> Any:
        channel = feed.find("channel")
        for link in channel.findall(f"{{{ATOM_NS}}}link"):
            if link.get("rel") == "self" and self.rss_self:
                link.set("href", self.rss_self)
                link.set("type", FORMATS["rss"])
        if self.hub:
            xml_elem(f"{{{ATOM_NS}}}link", channel, rel="hub", href=self.hub)
        return feed


class _SourceEntryExt(BaseEntryExtension):  # type: ignore[misc]
    """Writes a complete atom:source (and RSS <source>) for an entry."""

    def __init__(self) -> None:
        self.info: SourceInfo | None = None
        self.updated: datetime = EPOCH
        self.links: list[dict[str, str]] = []

    def extend_atom(self, entry: Any) -> Any:
        # feedgen 1.0 drops rel, type and title from entry links (it shadows a variable while
        # writing them), so the links are written here instead.
        for old in entry.findall("link"):
            entry.remove(old)
        for link in self.links:
            xml_elem("link", entry, **link)
        info = self.info
        if info is None:
            return entry
        source = xml_elem("source", entry)
        is_web = info.feed_url.startswith(("http://", "https://"))
        xml_elem("id", source).text = info.id or (info.feed_url if is_web else f"urn:feeds:source:{info.name}")
        xml_elem("title", source).text = xml_safe(info.title)
        if info.link:
            xml_elem("link", source, rel="alternate", href=info.link)
        if is_web:
            xml_elem("link", source, rel="self", href=info.feed_url)
        xml_elem("updated", source).text = to_rfc3339(info.updated or self.updated)
        return entry

    def extend_rss(self, entry: Any) -> Any:
        info = self.info
        if info is not None and info.feed_url.startswith(("http://", "https://")):
            xml_elem("source", entry, url=info.feed_url).text = xml_safe(info.title)
        return entry


def _generator(view: FeedView) -> FeedGenerator:
    fg = FeedGenerator()
    fg.register_extension("feedssource", _SourceFeedExt, _SourceEntryExt, atom=True, rss=True)
    fg.load_extension("dc", atom=False, rss=True)
    fg.feedssource.rss_self = view.url("rss")
    fg.feedssource.hub = view.hub
    fg.feedssource.prev_archive = view.prev_archive
    fg.feedssource.current = view.current
    fg.id(view.url("atom"))
    fg.title(view.output.title)
    fg.subtitle(view.output.description or f"{view.output.title}: merged by feeds")
    fg.link(href=view.url("atom"), rel="self", type=FORMATS["atom"])
    fg.link(href=view.home, rel="alternate", type="text/html")
    fg.updated(view.updated)
    fg.lastBuildDate(view.updated)
    fg.generator("feeds", version=__version__, uri=PROJECT_URL)
    fg.language("en")
    for alert in view.alerts:
        _alert_entry(fg.add_entry(order="append"), alert)
    for cluster in view.clusters:
        _entry(fg.add_entry(order="append"), view, cluster)
    return fg


def alert_html(alert: Alert) -> str:
    """The body of a failing-source entry: the last error, escaped."""
    return xml_safe(f"<p>{html.escape(alert.title)}.</p><p>Last error: {html.escape(alert.message)}</p>")


def _alert_entry(fe: FeedEntry, alert: Alert) -> None:
    fe.id(alert.id)
    fe.guid(alert.id, permalink=False)
    fe.title(xml_safe(alert.title))
    fe.updated(alert.since)
    fe.published(alert.since)
    fe.author({"name": "feeds"})
    fe.content(alert_html(alert), type="html")
    fe.category(term="feeds:source-failing")
    fe.feedssource.info = alert.source
    fe.feedssource.updated = alert.since


def _entry(fe: FeedEntry, view: FeedView, cluster: Cluster) -> None:
    lead = cluster.lead
    outlet = view.outlet(lead)
    fe.id(cluster.atom_id)
    fe.guid(cluster.atom_id, permalink=False)
    fe.title(xml_safe(entry_title(cluster, view.output, view.outlet(lead).title)))
    lead_link = display_url(lead.link)
    links = [{"rel": "alternate", "type": "text/html", "href": lead_link}] if lead_link else []
    for other in cluster.others:
        link = display_url(other.link)
        if link and link != lead_link:
            links.append({"rel": "via", "type": "text/html", "href": link, "title": xml_safe(view.outlet(other).title)})
    if lead.enclosures:
        enc = lead.enclosures[0]
        fe.enclosure(xml_safe(enc.url), str(enc.length or 0), xml_safe(enc.type or "application/octet-stream"))
    links += [
        {
            "rel": "enclosure",
            "href": xml_safe(e.url),
            "type": xml_safe(e.type or "application/octet-stream"),
            **({"length": str(e.length)} if e.length else {}),
        }
        for e in lead.enclosures
    ]
    if lead_link:
        fe.link(href=lead_link, rel="alternate")
    fe.feedssource.links = links
    fe.feedssource.updated = max((m.stamp for m in cluster.members if m.source == lead.source), default=lead.stamp)
    fe.updated(cluster.updated)
    fe.published(lead.when)
    # Names, never e-mail addresses: RSS's <author> must be one (newsboat misreads "e-mail (name)",
    # and republishing addresses only feeds harvesters), so RSS carries dc:creator instead.
    names = byline(lead, outlet.title)
    authors = [{"name": xml_safe(name), **({"uri": a.uri} if a.uri else {})} for name, a in zip(names, lead.authors, strict=False)]
    fe.author(authors or [{"name": xml_safe(outlet.title)}])
    fe.dc.dc_creator([xml_safe(n) for n in names])
    if lead.content_html and lead.summary_html:
        fe.summary(xml_safe(lead.summary_html), type="html")
    # Atom needs content or an alternate link; an entry with neither still gets its title as text.
    fe.content(entry_html(view, cluster) or f"<p>{html.escape(xml_safe(lead.title))}</p>", type="html")
    for term in lead.categories:
        fe.category(term=xml_safe(term))
    fe.feedssource.info = outlet


def render_atom(view: FeedView) -> bytes:
    """The output as an Atom 1.0 document."""
    return _isolated(view, lambda v: bytes(_generator(v).atom_str(pretty=True, encoding="UTF-8")))


def render_rss(view: FeedView) -> bytes:
    """The output as an RSS 2.0 document."""
    return _isolated(view, lambda v: bytes(_generator(v).rss_str(pretty=True, encoding="UTF-8")))


def _isolated(view: FeedView, render: Callable[[FeedView], bytes]) -> bytes:
    """Render the whole view; if that fails, render without the entries that fail on their own,
    so one entry no renderer can write costs only itself, never the output."""
    try:
        return render(view)
    except Exception:
        log.exception("render-failed output=%s; retrying entry by entry", view.output.name)
    clusters = []
    for cluster in view.clusters:
        try:
            render(replace(view, clusters=(cluster,), alerts=()))
            clusters.append(cluster)
        except Exception as exc:
            log.error("entry-dropped output=%s entry=%s error=%s: %s", view.output.name, cluster.atom_id, type(exc).__name__, exc)
    alerts = []
    for alert in view.alerts:
        try:
            render(replace(view, clusters=(), alerts=(alert,)))
            alerts.append(alert)
        except Exception as exc:
            log.error("entry-dropped output=%s entry=%s error=%s: %s", view.output.name, alert.id, type(exc).__name__, exc)
    return render(replace(view, clusters=tuple(clusters), alerts=tuple(alerts)))


def render_json(view: FeedView) -> bytes:
    """The output as a JSON Feed 1.1 document."""
    return _isolated(view, _render_json)


def _render_json(view: FeedView) -> bytes:
    items: list[dict[str, Any]] = [
        {
            "id": alert.id,
            "title": alert.title,
            "content_html": alert_html(alert),
            "date_published": to_rfc3339(alert.since),
            "date_modified": to_rfc3339(alert.since),
            "authors": [{"name": "feeds"}],
            "tags": ["feeds:source-failing"],
            "_feeds": {"seq": 0, "source": {"name": alert.source.name, "title": alert.source.title}, "via": []},
        }
        for alert in view.alerts
    ]
    for cluster in view.clusters:
        lead = cluster.lead
        outlet = view.outlet(lead)
        item: dict[str, Any] = {
            "id": cluster.atom_id,
            "url": display_url(lead.link),
            "title": entry_title(cluster, view.output, view.outlet(lead).title),
            "content_html": entry_html(view, cluster) or "",
            "summary": excerpt(lead.summary_html or lead.content_html) or None,  # plain text, as JSON Feed says
            "date_published": to_rfc3339(lead.when),
            "date_modified": to_rfc3339(cluster.updated),
            "authors": [{"name": name} for name in byline(lead, outlet.title)],
            "_feeds": {
                "seq": cluster.id,  # grows with every new story: the river page's live-update cursor
                "source": {"name": outlet.name, "title": outlet.title, "feed_url": outlet.feed_url or None, "home_page_url": outlet.link},
                "via": [{"source": view.outlet(o).title, "url": display_url(o.link)} for o in cluster.others if display_url(o.link)],
                "outlets": timeline(view, cluster),
            },
        }
        if lead.categories:
            item["tags"] = list(lead.categories)
        if lead.enclosures:
            item["attachments"] = [
                {"url": e.url, "mime_type": e.type or "application/octet-stream", **({"size_in_bytes": e.length} if e.length else {})}
                for e in lead.enclosures
            ]
        items.append({k: v for k, v in item.items() if v is not None})
    document = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": view.output.title,
        "home_page_url": view.home,
        "feed_url": view.url("json"),
        "description": view.output.description or f"{view.output.title}: merged by feeds",
        "items": items,
    }
    if view.hub:
        document["hubs"] = [{"type": "WebSub", "url": view.hub}]
    # The same text as the XML formats (a lone surrogate could not even be encoded).
    return json.dumps(_json_safe(document), ensure_ascii=False, indent=2).encode("utf-8") + b"\n"


def _json_safe(value: Any) -> Any:
    """Every string in a JSON document made XML-safe."""
    if isinstance(value, str):
        return xml_safe(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


RENDERERS = {"atom": render_atom, "rss": render_rss, "json": render_json}


def render_all(view: FeedView) -> dict[str, bytes]:
    """Every format of one output, by file extension."""
    return {fmt: render(view) for fmt, render in RENDERERS.items()}
