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

MAX_TITLE = 1_000
MAX_HTML = 500_000
_TRACKING = re.compile(
    r"^(utm_[a-z_]*|fbclid|gclid|gclsrc|dclid|msclkid|mc_eid|mc_cid|yclid|igshid|_ga|_gl|"
    r"ocid|cmpid|ito|s_cid|at_medium|at_campaign|at_custom\d*|ref_src|__twitter_impression|amp)$",
    re.IGNORECASE,
)
_INDEX = re.compile(r"/index\.(html?|php|aspx?|jsp)$", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
_SAFE_SCHEMES = {"http", "https", "mailto"}
_IMG = re.compile(r"<img\b[^>]*>", re.IGNORECASE)
_WIDTH = re.compile(r"\bwidth\s*=\s*[\"']?\s*(\d+)", re.IGNORECASE)
_HEIGHT = re.compile(r"\bheight\s*=\s*[\"']?\s*(\d+)", re.IGNORECASE)
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
    absolute = urljoin(base, url.strip()) if base else url.strip()
    try:
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


def plain_text(fragment: str | None) -> str:
    """HTML (or text with entities) -> one line of plain text."""
    if not fragment:
        return ""
    text = _TAG.sub(" ", fragment)
    text = html.unescape(html.unescape(text)) if "&amp;" in text else html.unescape(text)
    return _SPACE.sub(" ", text).strip()


def _drop_pixel(match: re.Match[str]) -> str:
    tag = match.group(0)
    width, height = _WIDTH.search(tag), _HEIGHT.search(tag)
    return "" if width and height and int(width.group(1)) <= 1 and int(height.group(1)) <= 1 else tag


def sanitize_html(fragment: str | None, *, base: str | None) -> str | None:
    """Untrusted HTML -> safe HTML: no script, style, event handlers or javascript:/data: URLs.

    Relative links and image sources are made absolute against `base`; 1x1 tracking pixels go.
    """
    if not fragment or not fragment.strip():
        return None

    def fix_url(tag: str, attribute: str, value: str) -> str | None:
        if attribute not in _URL_ATTRIBUTES:
            return value
        target = urljoin(base, value.strip()) if base else value.strip()
        scheme = urlsplit(target).scheme.lower()
        if scheme and scheme not in _SAFE_SCHEMES:
            return None
        return target

    cleaned = nh3.clean(
        _IMG.sub(_drop_pixel, fragment[:MAX_HTML]),
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
    return cleaned or None


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
    return title[:MAX_TITLE] or "(untitled)"


def entry_guid(entry: ParsedEntry, *, link: str | None, title: str) -> str:
    """The source's id for the entry, or one derived from its link and title when it has none."""
    if entry.id:
        return entry.id[:2000]
    if link:
        return link[:2000]
    return "urn:feeds:entry:" + stable_hash(title, plain_text(entry.summary or entry.content)[:2000])


def normalize_entry(entry: ParsedEntry, source: Source, *, base: str, now: datetime) -> Story:
    """One parsed entry of `source` -> a Story; `base` is the URL the feed was fetched from."""
    link = urljoin(base, entry.link.strip()) if entry.link else None
    if link and urlsplit(link).scheme.lower() not in ("http", "https"):
        link = None
    title = clean_title(entry)
    guid = entry_guid(entry, link=link, title=title)
    summary = sanitize_html(entry.summary, base=link or base)
    content = sanitize_html(entry.content, base=link or base)
    published = clamp(entry.published, now=now)
    updated = clamp(entry.updated, now=now)
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
        authors=tuple(a for a in entry.authors if a.name or a.email)[:20],
        categories=tuple(dict.fromkeys(c.strip()[:200] for c in entry.categories if c.strip()))[:50],
        enclosures=tuple(e for e in entry.enclosures if urlsplit(e.url).scheme in ("http", "https"))[:20],
        content_hash=stable_hash(title, summary or "", content or "", size=12),
    )


def normalize_feed(feed: ParsedFeed, source: Source, *, base: str, now: datetime) -> tuple[Story, ...]:
    """Every entry of a feed as Stories, one per guid (a feed repeating a guid keeps the first)."""
    stories: dict[str, Story] = {}
    for entry in feed.entries:
        story = normalize_entry(entry, source, base=base, now=now)
        stories.setdefault(story.id, story)
    return tuple(stories.values())
