"""The HTML pages: the index, an output's river (excerpts, pages, filters, title search), a
story's own page (every outlet that carried it, as a timeline) and the sources page.

Pure: pages are rendered from the published JSON Feed documents (so `feeds serve` needs only the
publish directory) and from source statuses handed in; `now` is an argument. Everything that
comes from feeds is escaped; story HTML is sanitized again. Every page works without JavaScript:
filters are a GET form, paging is links; `river.js` only adds live updates, "load more" in place
and times that keep counting.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlencode
from xml.sax.saxutils import quoteattr

from feeds.models import FORMATS, SourceView
from feeds.normalize import sanitize_html
from feeds.timeutil import ago, parse_rfc3339
from feeds.untrusted import web_url, xml_safe

PAGE_SIZE = 20  # stories on one page of the river: a few phone screens of excerpts
ALSO_SHOWN = 3  # other outlets named on the river; the story page lists them all
MAX_QUERY = 200  # characters of a title search
MAX_PAGE = 10_000
_WORD = re.compile(r"\w+")
_EXTRAS = '<p class="feeds-'  # where entry_html's own paragraphs start after the lead's text


@dataclass(frozen=True, slots=True)
class Filters:
    """What a river page shows: a title search, one outlet, one tag, and which page."""

    q: str = ""
    source: str = ""
    tag: str = ""
    page: int = 1

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> Filters:
        """From a request's query parameters; anything odd reads as no filter, page 1."""
        page = params.get("page", "")
        return cls(
            q=" ".join(xml_safe(params.get("q", "")[:MAX_QUERY]).split()),
            source=xml_safe(params.get("source", "")[:100]).strip(),
            tag=xml_safe(params.get("tag", "")[:100]).strip(),
            page=min(int(page), MAX_PAGE) if page.isascii() and page.isdigit() and int(page[:6]) >= 1 else 1,
        )

    @property
    def active(self) -> bool:
        """True when anything narrows the river."""
        return bool(self.q or self.source or self.tag)

    def query(self, **change: Any) -> str:
        """The query string of these filters with some changed ("" for none)."""
        target = replace(self, **change)
        pairs = [(k, v) for k, v in (("q", target.q), ("source", target.source), ("tag", target.tag)) if v]
        if target.page > 1:
            pairs.append(("page", str(target.page)))
        return "?" + urlencode(pairs, errors="replace") if pairs else ""  # a lone surrogate cannot be encoded

    def matches(self, item: Mapping[str, Any]) -> bool:
        """Whether a JSON Feed item passes: every word searched starts a word of its title (any
        case: "ferr" finds "Ferry", "7" does not find "17"), an
        outlet that carried it is the source asked for, and it has the tag."""
        if self.q:
            words = _WORD.findall(str(item.get("title") or "").casefold())
            if not all(any(w.startswith(term) for w in words) for term in _WORD.findall(self.q.casefold())):
                return False
        if self.source and self.source not in _sources(item):
            return False
        return not self.tag or self.tag in (item.get("tags") or [])


def _meta(item: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = item.get("_feeds")
    return meta if isinstance(meta, Mapping) else {}


def seq(item: Mapping[str, Any]) -> int:
    """An item's live-update sequence number and page id (0 for items that are not stories)."""
    value = _meta(item).get("seq")
    return value if isinstance(value, int) and value >= 0 else 0


def _outlets(item: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    rows = _meta(item).get("outlets")
    return [r for r in rows if isinstance(r, Mapping)] if isinstance(rows, list) else []


def _sources(item: Mapping[str, Any]) -> set[str]:
    lead = _meta(item).get("source") or {}
    return {str(r.get("source")) for r in _outlets(item)} | {str(lead.get("name"))}


def stamp(item: Mapping[str, Any], key: str = "date_modified") -> datetime | None:
    """An item's time: `key`, else its publication."""
    return parse_rfc3339(item.get(key) or item.get("date_published"))


def newest(items: Sequence[Mapping[str, Any]]) -> datetime | None:
    """The newest last-modified stamp of JSON Feed items (a page's "last updated")."""
    return max((s for s in (stamp(i) for i in items) if s), default=None)


def time_html(value: datetime | None, *, now: datetime) -> str:
    """A <time>: relative text ("9 days ago"), the exact time on hover; river.js keeps it current."""
    if value is None:
        return ""
    exact = value.strftime("%Y-%m-%d %H:%M UTC")
    return f'<time datetime="{value.strftime("%Y-%m-%dT%H:%M:%SZ")}" title="{exact}">{ago(value, now=now)}</time>'


def _link(url: Any, text: str, *, cls: str = "") -> str:
    """An escaped link to an http(s) page, or the text alone."""
    href = web_url(url) if isinstance(url, str) else None
    klass = f' class="{cls}"' if cls else ""
    return f'<a{klass} href="{html.escape(href, quote=True)}" rel="noopener noreferrer">{text}</a>' if href else text


def page(title: str, body: str, *, root: str, head: str = "", script: bool = False) -> str:
    """A whole page: escaped title, the stylesheet, and the script when the page has one."""
    js = f'<script src="{root}static/river.js" defer></script>' if script else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        f'<link rel="stylesheet" href="{root}static/river.css">'
        f"{head}</head><body>{body}{js}</body></html>"
    )


def alternates(name: str, title: str, *, root: str) -> str:
    """<link rel="alternate"> tags for an output's three formats (feed autodiscovery)."""
    return "".join(
        f'<link rel="alternate" type="{FORMATS[fmt]}" title={quoteattr(f"{title} ({label})")} href="{root}{name}.{fmt}">'
        for fmt, label in (("atom", "Atom"), ("rss", "RSS"), ("json", "JSON Feed"))
    )


def _subscribe(name: str, *, root: str) -> str:
    return f'<a href="{root}{name}.atom">Atom</a> · <a href="{root}{name}.rss">RSS</a> · <a href="{root}{name}.json">JSON Feed</a>'


# -- the index -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutputSummary:
    """One output on the index."""

    name: str
    title: str
    entries: int
    updated: datetime | None


def index_page(site: str, outputs: Sequence[OutputSummary], *, sources: int, failing: int, now: datetime) -> str:
    """The index: every output with its entry count, last update and subscribe links, and how
    many sources are failing (linked to the sources page)."""
    rows = "".join(
        f'<li><h2><a href="{o.name}/">{html.escape(o.title)}</a></h2>'
        f'<p class="meta">{o.entries} entries · last updated {time_html(o.updated, now=now) or "never"}</p>'
        f'<p class="subscribe">Subscribe: {_subscribe(o.name, root="")}</p></li>'
        for o in outputs
    )
    health = f'<strong class="failing">{failing} of {sources} failing</strong>' if failing else "all polled without errors"
    body = (
        f"<header><h1>{html.escape(site)}</h1></header>"
        f'<main><ul class="outputs">{rows}</ul>'
        f'<p class="sources-line"><a href="sources">Sources</a>: {sources} · {health} · <a href="sources.opml">OPML</a></p></main>'
    )
    head = "".join(alternates(o.name, o.title, root="") for o in outputs)
    return page(site, body, root="", head=head, script=True)


# -- the river -------------------------------------------------------------------------------------


def river_item_html(item: Mapping[str, Any], *, now: datetime) -> str:
    """One story on the river: headline (to the article), outlet and time, how many outlets
    carried it, an excerpt, the other outlets (each with its headline, clean link and time),
    tags, and "Read more" to the story's own page."""
    meta = _meta(item)
    number = seq(item)
    outlet = html.escape(str((meta.get("source") or {}).get("title") or ""))
    title = html.escape(str(item.get("title") or "(untitled)"))
    outlets = {str(r.get("source")) for r in _outlets(item)}
    carried = f' · <a href="story/{number}">{len(outlets)} outlets</a>' if len(outlets) > 1 else ""
    summary = html.escape(str(item.get("summary") or ""))
    others = [r for r in _outlets(item) if not r.get("lead")]
    also = ", ".join(
        f"{_link(r.get('url'), html.escape(str(r.get('title') or '(untitled)')))} "
        f"({html.escape(str(r.get('outlet') or ''))}, {time_html(parse_rfc3339(r.get('published')), now=now)})"
        for r in others[:ALSO_SHOWN]
    )
    if len(others) > ALSO_SHOWN:
        also += f' and <a href="story/{number}">{len(others) - ALSO_SHOWN} more</a>'
    tags = "".join(
        f'<a href="?{urlencode({"tag": t}, errors="replace")}">{html.escape(t)}</a> '
        for t in (item.get("tags") or [])
        if isinstance(t, str)
    )
    return (
        f'<article class="story" id="story-{number}" data-seq="{number}">'
        f"<h2>{_link(item.get('url'), title)}</h2>"
        f'<p class="meta"><span class="outlet">{outlet}</span> · {time_html(stamp(item, "date_published"), now=now)}{carried}</p>'
        + (f'<p class="excerpt">{summary}</p>' if summary else "")
        + (f'<p class="also">Also reported by: {also}</p>' if also else "")
        + (f'<p class="tags">{tags.strip()}</p>' if tags else "")
        + f'<p class="more"><a href="story/{number}">Read more</a></p></article>'
    )


def _choices(name: str, label: str, options: Sequence[tuple[str, str]], chosen: str) -> str:
    rows = "".join(
        f'<option value="{html.escape(value, quote=True)}"{" selected" if value == chosen else ""}>{html.escape(text)}</option>'
        for value, text in [("", f"every {label}"), *options]
    )
    return f'<label>{label.capitalize()} <select name="{name}">{rows}</select></label>'


def river_page(site: str, name: str, document: Mapping[str, Any], filters: Filters, *, now: datetime, fallback_title: str) -> str:
    """An output's river: a filter form, one page of stories newest first, links to older and
    newer pages. Live updates (river.js) only on the first page."""
    title = str(document.get("title") or fallback_title)
    items = [i for i in document.get("items") or [] if isinstance(i, Mapping)]
    shown = [i for i in items if filters.matches(i)]
    pages = max(1, -(-len(shown) // PAGE_SIZE))
    current = min(filters.page, pages)
    chunk = shown[(current - 1) * PAGE_SIZE : current * PAGE_SIZE]
    outlets: dict[str, str] = {}
    tags: set[str] = set()
    for item in items:
        for row in [
            *_outlets(item),
            {"source": (_meta(item).get("source") or {}).get("name"), "outlet": (_meta(item).get("source") or {}).get("title")},
        ]:
            if row.get("source"):
                outlets.setdefault(str(row["source"]), str(row.get("outlet") or row["source"]))
        tags.update(t for t in item.get("tags") or [] if isinstance(t, str))
    form = (
        '<form class="filters" method="get" action="">'
        f'<label>Search titles <input type="search" name="q" value="{html.escape(filters.q, quote=True)}" maxlength="{MAX_QUERY}"></label> '
        + _choices("source", "outlet", sorted(outlets.items(), key=lambda o: o[1].casefold()), filters.source)
        + " "
        + (_choices("tag", "tag", [(t, t) for t in sorted(tags, key=str.casefold)], filters.tag) + " " if tags else "")
        + '<button type="submit">Show</button>'
        + (' <a href="./">clear</a>' if filters.active else "")
        + "</form>"
    )
    nav = []
    if current > 1:
        nav.append(f'<a class="newer" href="./{filters.query(page=current - 1)}">Newer stories</a>')
    if current < pages:
        nav.append(f'<a class="older" href="./{filters.query(page=current + 1)}">Older stories</a>')
    counted = f"{len(shown)} of {len(items)} stories" if filters.active else f"{len(items)} stories"
    status = f"{counted} · page {current} of {pages}" if pages > 1 else counted
    empty = "No story matches." if filters.active else "No stories yet."
    live = current == 1
    body = (
        f'<header><p class="crumbs"><a href="../">{html.escape(site)}</a></p><h1>{html.escape(title)}</h1>'
        f'<p class="meta">Last updated <span id="last-updated">{time_html(newest(items), now=now) or "never"}</span> · '
        f"{_subscribe(name, root='../')}"
        f' <span id="live" class="live" hidden>live</span></p>{form}<p class="meta count">{status}</p></header>'
        f'<main id="river"{" data-events=events" if live else ""} data-seq="{max((seq(i) for i in items), default=0)}"'
        f' data-filter="{html.escape(filters.query(page=1), quote=True)}">'
        f"{''.join(river_item_html(i, now=now) for i in chunk) or f'<p class=empty>{empty}</p>'}</main>"
        f'<nav class="pages">{" ".join(nav)}</nav>'
    )
    return page(f"{title} · {site}", body, root="../", head=alternates(name, title, root="../"), script=True)


# -- a story's own page ----------------------------------------------------------------------------


def lead_html(item: Mapping[str, Any]) -> str:
    """The lead's own text, without what feeds appends to an entry (the outlets, the reports, the
    link to this page), sanitized again. The lead's stored HTML carries no class attributes, so the
    first `<p class="feeds-` is feeds' own."""
    content = str(item.get("content_html") or "")
    cut = content.find(_EXTRAS)
    return sanitize_html(content if cut < 0 else content[:cut], base=None) or ""


def _timeline(item: Mapping[str, Any], *, now: datetime) -> str:
    events: list[tuple[datetime, int, str]] = []
    for row in _outlets(item):
        outlet = html.escape(str(row.get("outlet") or row.get("source") or ""))
        headline = _link(row.get("url"), html.escape(str(row.get("title") or "(untitled)")))
        published = parse_rfc3339(row.get("published"))
        seen = parse_rfc3339(row.get("seen"))
        changed = parse_rfc3339(row.get("changed"))
        report = row.get("report") if isinstance(row.get("report"), int) else 1
        what = "carried a copy" if row.get("copy") else "published" if report == 1 else "reported it independently"
        lead = ' <span class="badge">lead</span>' if row.get("lead") else ""
        late = ""
        if published and seen and (seen - published).total_seconds() > 600:
            late = f' <span class="seen">(feeds saw it {time_html(seen, now=now)})</span>'
        if published:
            events.append((published, 0, f"<li>{time_html(published, now=now)} <b>{outlet}</b> {what}: {headline}{lead}{late}</li>"))
        if changed:
            events.append((changed, 1, f'<li class="changed">{time_html(changed, now=now)} <b>{outlet}</b> changed its text</li>'))
    events.sort(key=lambda e: (e[0], e[1]))
    return f'<ol class="timeline">{"".join(e[2] for e in events)}</ol>'


def story_page(site: str, name: str, output_title: str, item: Mapping[str, Any], *, now: datetime) -> str:
    """A merged story on its own: the lead's headline and text, and every outlet that carried it,
    as a timeline of when each published, copied or changed it."""
    meta = _meta(item)
    title = html.escape(str(item.get("title") or "(untitled)"))
    outlet = html.escape(str((meta.get("source") or {}).get("title") or ""))
    outlets = {str(r.get("source")) for r in _outlets(item)}
    reports = {r.get("report") for r in _outlets(item)}
    said = f"{len(outlets)} outlet{'s' if len(outlets) != 1 else ''}"
    if len(reports) > 1:
        said += f", {len(reports)} independent reports"
    body = (
        f'<header><p class="crumbs"><a href="../../">{html.escape(site)}</a> › <a href="../">{html.escape(output_title)}</a></p>'
        f"<h1>{_link(item.get('url'), title)}</h1>"
        f'<p class="meta"><span class="outlet">{outlet}</span> · {time_html(stamp(item, "date_published"), now=now)}</p></header>'
        f'<main><article class="story full"><div class="body">{lead_html(item)}</div></article>'
        f'<section class="carried"><h2>Carried by {said}</h2>{_timeline(item, now=now)}</section></main>'
    )
    return page(f"{item.get('title') or '(untitled)'} · {site}", body, root="../../", script=True)


def missing_story_page(site: str, output_title: str) -> str:
    """What a story page says once its story has left the output."""
    body = (
        f'<header><p class="crumbs"><a href="../../">{html.escape(site)}</a> › <a href="../">{html.escape(output_title)}</a></p>'
        "<h1>Story not found</h1></header><main><p>This story is not (or no longer) in this feed.</p></main>"
    )
    return page(f"Story not found · {site}", body, root="../../")


# -- the sources page ------------------------------------------------------------------------------


def sources_page(site: str, rows: Sequence[SourceView], *, now: datetime) -> str:
    """`feeds status` in the browser: failing sources first, then by name."""
    ordered = sorted(rows, key=lambda r: (not r.failing, r.name))
    failing = sum(r.failing for r in rows)
    lines = []
    for r in ordered:
        state = r.state
        due = time_html(state.next_poll, now=now) if state.next_poll and state.next_poll > now else "due"
        reason = f' <span class="why">every {html.escape(r.interval)} ({html.escape(state.interval_reason or "")})</span>'
        error = f'<br><span class="error">{html.escape(state.error)}</span>' if state.error else ""
        warning = f'<br><span class="warning">{html.escape(state.warning)}</span>' if state.warning else ""
        lines.append(
            f'<tr class="{"failing" if r.failing else "ok"}">'
            f'<th scope="row">{html.escape(r.title)}<br><code>{html.escape(r.name)}</code></th>'
            f"<td>{html.escape(r.description)}{error}{warning}</td>"
            f"<td>{time_html(state.last_success, now=now) or 'never'}</td>"
            f"<td>{due}{reason}</td><td class=num>{r.stories}</td></tr>"
        )
    summary = f'<strong class="failing">{failing} failing</strong> of {len(rows)}' if failing else f"{len(rows)}, none failing"
    body = (
        f'<header><p class="crumbs"><a href="./">{html.escape(site)}</a></p><h1>Sources</h1>'
        f'<p class="meta">{summary} · <a href="sources.opml">OPML</a></p></header>'
        '<main><div class="table"><table class="sources"><thead><tr><th scope="col">Source</th><th scope="col">State</th>'
        '<th scope="col">Last success</th><th scope="col">Next poll</th><th scope="col" class=num>Stories</th></tr></thead>'
        f"<tbody>{''.join(lines)}</tbody></table></div></main>"
    )
    return page(f"Sources · {site}", body, root="", script=True)
