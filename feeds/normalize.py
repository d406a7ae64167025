"""ParsedFeed -> Stories: stable ids, canonical URLs, plain titles, sanitized HTML, UTC stamps.

Pure: no network, files or clock (`now` is an argument). Imports no I/O libraries.
"""

from __future__ import annotations

import hashlib
import html
import re
from datetime import datetime
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import nh3

from feeds.models import ParsedEntry, ParsedFeed, Source, Story
from feeds.timeutil import clamp
from feeds.untrusted import MAX_AUTHORS, MAX_CATEGORIES, MAX_DEPTH, MAX_ENCLOSURES, MAX_HTML, MAX_ID, MAX_NAME, MAX_TITLE, web_url, xml_safe

_TRACKING = re.compile(
    r"^(utm_[a-z_]*|fbclid|gclid|gclsrc|dclid|msclkid|mc_eid|mc_cid|yclid|igshid|_ga|_gl|"
    r"ocid|cmpid|ito|s_cid|at_medium|at_campaign|at_custom\d*|ref_src|__twitter_impression|amp)$",
    re.IGNORECASE,
)
_INDEX = re.compile(r"/index\.(html?|php|aspx?|jsp)$", re.IGNORECASE)
# No pattern here can backtrack: `[^<>]*+` stops at the next `<`, so a run of `<` costs linear time.
_TAG = re.compile(r"<[^<>]*+>")
_SPACE = re.compile(r"\s+")
_SAFE_SCHEMES = {"http", "https", "mailto"}
_IMG = re.compile(r"<img\b[^<>]*+>", re.IGNORECASE)
_WIDTH = re.compile(r"\bwidth\s*+=\s*+[\"']?+\s*+(\d{1,9})", re.IGNORECASE)
_HEIGHT = re.compile(r"\bheight\s*+=\s*+[\"']?+\s*+(\d{1,9})", re.IGNORECASE)
# An element's start or end tag, as an HTML tokenizer reads its name (up to space, `/` or `>`).
_ELEMENT = re.compile(r"<(/?)([A-Za-z][^\s/<>]*+)[^<>]*+>")
_VOID = frozenset(["area", "base", "br", "col", "embed", "hr", "img", "input", "keygen", "link", "meta", "param", "source", "track", "wbr"])
_REOPEN = frozenset(["p", "li", "dt", "dd", "option", "tr", "td", "th"])  # a second one closes the first
_URL_ATTRIBUTES = {"href", "src", "cite", "longdesc"}


def stable_hash(*parts: str, size: int = 16) -> str:
    """A hex digest that is the same in every process and version (never Python's hash())."""
    digest = hashlib.blake2b(digest_size=size)
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()


def canonical_url(url: str | None, *, base: str | None = None) -> str | None:
    """A matching key for an article URL: the same article under its many URL shapes maps to one string.

    Lowercase scheme and host, http = https, no `www.`/`amp.` host prefix, no default port,
    no fragment, no trailing slash or `index.*`, AMP variants mapped back, tracking parameters
    removed and the rest sorted. Not for display: it is not always a working URL.
    """
    if not url:
        return None
    try:
        absolute = urljoin(base, url.strip()) if base else url.strip()
        parts = urlsplit(absolute)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower().rstrip(".")
    for prefix in ("www.", "amp.", "m."):
        if host.startswith(prefix) and host.count(".") >= 2:
            host = host[len(prefix) :]
    netloc = host if port in (None, 80, 443) else f"{host}:{port}"
    path = re.sub(r"/{2,}", "/", parts.path or "/")
    path = re.sub(r"\.amp\.html?$", ".html", path, flags=re.IGNORECASE)
    path = "/".join(seg for seg in path.split("/") if seg.lower() != "amp") or "/"
    path = _INDEX.sub("/", path)
    path = path.rstrip("/") or "/"
    query = sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _TRACKING.match(k))
    return f"https://{netloc}{path}" + (f"?{urlencode(query)}" if query else "")


def display_url(url: str | None) -> str | None:
    """A link as outputs show it: the article's own address without tracking parameters
    (`utm_*`, `fbclid`, ...), AMP variants mapped back to the article, no fragment and no
    credentials. Unlike
    `canonical_url` it keeps scheme, host and port, so it still opens the page; None for
    anything but http(s)."""
    if not url:
        return None
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018  # a port out of range raises here
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    netloc = parts.netloc.rpartition("@")[2]  # never credentials
    if netloc.lower().startswith("amp.") and parts.hostname.count(".") >= 2:
        netloc = netloc[4:]
    path = re.sub(r"\.amp\.html?$", ".html", parts.path, flags=re.IGNORECASE)
    if any(seg.lower() == "amp" for seg in path.split("/")):
        path = "/".join(seg for seg in path.split("/") if seg.lower() != "amp") or "/"
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _TRACKING.match(k)]
    return f"{parts.scheme.lower()}://{netloc}{path}" + (f"?{urlencode(query)}" if query else "")


def plain_text(fragment: str | None) -> str:
    """HTML (or text with entities) -> one line of plain text."""
    if not fragment:
        return ""
    text = _TAG.sub(" ", fragment[:MAX_HTML])
    text = html.unescape(html.unescape(text)) if "&amp;" in text else html.unescape(text)
    return _SPACE.sub(" ", text).strip()


def excerpt(fragment: str | None, *, limit: int = 300) -> str:
    """The start of a text as plain text, cut at a word within `limit` characters ("…" if cut)."""
    head = (fragment or "")[: limit * 8]
    if head.rfind("<") > head.rfind(">"):
        head = head[: head.rfind("<")]  # a tag cut in two
    text = plain_text(head)
    if len(text) <= limit:
        return text
    cut = text[: limit + 1].rsplit(" ", 1)[0] if " " in text[: limit + 1] else text[:limit]
    return cut.rstrip(" ,;:.-") + "…"


def _drop_pixel(match: re.Match[str]) -> str:
    tag = match.group(0)
    width, height = _WIDTH.search(tag), _HEIGHT.search(tag)
    return "" if width and height and int(width.group(1)) <= 1 and int(height.group(1)) <= 1 else tag


def limit_depth(fragment: str, *, depth: int = MAX_DEPTH) -> str:
    """Drop start tags that would nest elements deeper than `depth`, in one linear pass.

    HTML sanitizers build the element tree, and html5ever's cost grows with the square of its
    depth (350 KB of nested <div> took 12 s); real articles nest a few dozen levels at most.
    """
    if fragment.count("<") <= depth:
        return fragment
    open_tags: dict[str, int] = {}
    level = 0

    def keep(match: re.Match[str]) -> str:
        nonlocal level
        name = match.group(2).lower()
        if name in _VOID:
            return match.group(0)
        if match.group(1):
            if open_tags.get(name, 0) > 0:
                open_tags[name] -= 1
                level -= 1
            return match.group(0)
        if name in _REOPEN and open_tags.get(name, 0) > 0:
            return match.group(0)
        if level >= depth:
            return ""
        open_tags[name] = open_tags.get(name, 0) + 1
        level += 1
        return match.group(0)

    return _ELEMENT.sub(keep, fragment)


def sanitize_html(fragment: str | None, *, base: str | None) -> str | None:
    """Untrusted HTML -> safe HTML: no script, style, event handlers or javascript:/data: URLs.

    Relative links and image sources are made absolute against `base`; 1x1 tracking pixels go.
    """
    if not fragment or not fragment.strip():
        return None

    def fix_url(tag: str, attribute: str, value: str) -> str | None:
        if attribute not in _URL_ATTRIBUTES:
            return value
        try:
            target = urljoin(base, value.strip()) if base else value.strip()
            scheme = urlsplit(target).scheme.lower()
        except ValueError:  # e.g. an unclosed IPv6 bracket: drop the attribute, keep the entry
            return None
        if scheme and scheme not in _SAFE_SCHEMES:
            return None
        return target

    cleaned = nh3.clean(
        limit_depth(_IMG.sub(_drop_pixel, xml_safe(fragment[:MAX_HTML]))),
        clean_content_tags={
            "script",
            "style",
            "noscript",
            "iframe",
            "object",
            "embed",
            "template",
            "svg",
            "math",
            "form",
            "textarea",
            "select",
            "button",
        },
        attribute_filter=fix_url,
        url_schemes=_SAFE_SCHEMES,
        link_rel="noopener noreferrer nofollow",
    ).strip()
    # Character references decode to anything (`&#1;`): the output must stay XML-safe too.
    return xml_safe(cleaned) or None


def clean_title(entry: ParsedEntry) -> str:
    """A plain-text title; an entry without one gets the start of its text."""
    title = (
        plain_text(entry.title)
        if entry.title_is_html or (entry.title and "&" in entry.title)
        else _SPACE.sub(" ", entry.title or "").strip()
    )
    if not title:
        text = plain_text(entry.summary or entry.content)
        title = (text[:80].rsplit(" ", 1)[0] + "…") if len(text) > 80 else text
    return xml_safe(title[:MAX_TITLE]) or "(untitled)"


def entry_guid(entry: ParsedEntry, *, link: str | None, title: str) -> str:
    """The source's id for the entry, or one derived from its link and title when it has none."""
    if entry.id:
        return entry.id[:MAX_ID]
    if link:
        return link[:MAX_ID]
    return "urn:feeds:entry:" + stable_hash(title, plain_text(entry.summary or entry.content)[:2000])


def normalize_entry(entry: ParsedEntry, source: Source, *, base: str, now: datetime) -> Story:
    """One parsed entry of `source` -> a Story; `base` is the URL the feed was fetched from."""
    link = web_url(entry.link, base=base)
    title = clean_title(entry)
    guid = entry_guid(entry, link=link, title=title)
    summary = sanitize_html(entry.summary, base=link or base)
    content = sanitize_html(entry.content, base=link or base)
    published = clamp(entry.published + source.shift if entry.published else None, now=now)
    updated = clamp(entry.updated + source.shift if entry.updated else None, now=now)
    return Story(
        source=source.name,
        guid=guid,
        id=stable_hash(source.name, guid, size=12),
        title=title,
        link=link,
        canonical_url=canonical_url(link),
        first_seen=now,
        published=published or updated,
        updated=updated,
        summary_html=summary,
        content_html=content,
        authors=tuple(a for a in entry.authors if a.name or a.email)[:MAX_AUTHORS],
        categories=tuple(dict.fromkeys(c.strip()[:MAX_NAME] for c in entry.categories if c.strip()))[:MAX_CATEGORIES],
        enclosures=tuple(e for e in entry.enclosures if web_url(e.url))[:MAX_ENCLOSURES],
        content_hash=stable_hash(title, summary or "", content or "", size=12),
    )


def normalize_feed(feed: ParsedFeed, source: Source, *, base: str, now: datetime) -> tuple[Story, ...]:
    """Every entry of a feed as Stories, one per guid (a feed repeating a guid keeps the first)."""
    return normalize_entries(feed, source, base=base, now=now)[0]


def normalize_entries(feed: ParsedFeed, source: Source, *, base: str, now: datetime) -> tuple[tuple[Story, ...], str | None]:
    """normalize_feed, and a warning when entries were dropped: one entry that cannot be
    normalized costs only itself, never the feed."""
    stories: dict[str, Story] = {}
    dropped, first = 0, ""
    for entry in feed.entries:
        try:
            story = normalize_entry(entry, source, base=base, now=now)
        except Exception as exc:  # whatever is odd about one entry
            dropped += 1
            first = first or f"{type(exc).__name__}: {exc}"[:200]
            continue
        stories.setdefault(story.id, story)
    warning = f"{dropped} entries could not be normalized and were dropped (first: {first})" if dropped else None
    return tuple(stories.values()), warning
