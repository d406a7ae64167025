"""Managing sources the way users arrive with them: the config file edited in place, feeds
discovered from a web page's address, subscription lists (OPML) imported and exported.

Every edit goes through `ConfigFile`: a round-trip YAML load (ruamel.yaml keeps comments, key
order, quoting and flow style), the change, then the new text written to a temporary file beside
the config, validated there by `load_settings` exactly as `feeds check` would, and renamed over
the config only when valid. Nothing is half-written and nothing invalid is left behind.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import unicodedata
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit
from xml.sax.saxutils import quoteattr

import listparser
import lxml.html
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from feeds.config import load_settings
from feeds.errors import ConfigError, FeedsError, ParseError
from feeds.fetch import Fetcher
from feeds.models import Settings, Source
from feeds.normalize import canonical_url
from feeds.parse import parse_feed
from feeds.policy import initial_state

MAX_OUTLINES = 100_000  # feeds in one subscription list
MAX_OPML_BYTES = 20 * 1024 * 1024
# Where sites put their feed when their pages do not say (tried in this order, at most these).
COMMON_PATHS = ("/feed", "/rss", "/feed.xml", "/rss.xml", "/atom.xml", "/index.xml", "/feed.json", "/feeds/posts/default")
_FEED_TYPES = frozenset(
    [
        "application/rss+xml",
        "application/atom+xml",
        "application/feed+json",
        "application/json",
        "application/rdf+xml",
        "application/xml",
        "text/xml",
    ]
)
_SLUG = re.compile(r"[^a-z0-9]+")


class ManageError(FeedsError):
    """A source command that cannot be done; the message is one line for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def slugify(text: str, *, fallback: str = "source") -> str:
    """A source name from a title: lowercase ASCII letters and digits joined by `-`."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return _SLUG.sub("-", ascii_text).strip("-")[:60].strip("-") or fallback


def unique_name(base: str, taken: Collection[str]) -> str:
    """`base`, or `base-2`, `base-3`... whichever is not taken."""
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


class ConfigFile:
    """The config file, loaded for a round-trip edit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.yaml = YAML()  # round-trip mode
        self.yaml.indent(mapping=2, sequence=4, offset=2)
        self.yaml.width = 4096  # never fold a long URL or title
        self.yaml.preserve_quotes = True
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise ManageError(f"{path}: config file not found (create one with `feeds init`)") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ManageError(f"{path}: cannot read the config: {exc}") from exc
        try:
            self.data = self.yaml.load(text)
        except YAMLError as exc:
            raise ManageError(f"{path}: invalid YAML, fix it first (`feeds check` shows where): {str(exc).splitlines()[0]}") from exc
        if not isinstance(self.data, CommentedMap):
            raise ManageError(f"{path}: expected a mapping with `sources:`")
        sources = self.data.get("sources")
        if sources is None:
            sources = self.data["sources"] = CommentedSeq()
        if not isinstance(sources, CommentedSeq):
            raise ManageError(f"{path}: `sources:` must be a list")
        self.sources: CommentedSeq = sources

    def names(self) -> list[str]:
        """The names of the sources listed now."""
        return [str(s.get("name")) for s in self.sources if isinstance(s, dict)]

    def urls(self) -> set[str]:
        """The canonical URLs of the sources listed now (for spotting duplicates)."""
        return {canonical_url(str(s.get("url"))) or str(s.get("url")) for s in self.sources if isinstance(s, dict)}

    def add(self, name: str, url: str, *, title: str | None = None, tags: Sequence[str] = ()) -> None:
        """Append a source entry in the file's style: `name`, `url`, then `title` and `tags`."""
        entry = CommentedMap()
        entry["name"] = name
        entry["url"] = url
        if title:
            entry["title"] = title
        if tags:
            flow = CommentedSeq(tags)
            flow.fa.set_flow_style()
            entry["tags"] = flow
        self.sources.append(entry)

    def remove(self, name: str) -> None:
        """Drop a source entry (its comments go with it)."""
        for index, entry in enumerate(self.sources):
            if isinstance(entry, dict) and entry.get("name") == name:
                del self.sources[index]
                return
        raise ManageError(f"{self.path}: no source named {name!r} (see `feeds sources list`)")

    def text(self) -> str:
        """The edited file's text."""
        out = io.StringIO()
        self.yaml.dump(self.data, out)
        return out.getvalue()

    def save(self) -> Settings:
        """Validate the edited file and replace the config with it atomically; return its settings.
        An invalid result (or a file that cannot be written) leaves the config as it was."""
        text = self.text()
        directory = self.path.parent
        try:
            handle, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        except OSError as exc:
            raise ManageError(f"{self.path}: cannot write beside the config: {exc.strerror}") from exc
        temp = Path(name)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            try:
                settings = load_settings(temp)
            except ConfigError as exc:
                problems = "; ".join(p.replace(str(temp), str(self.path)) for p in exc.problems)
                raise ManageError(f"the edit would make the config invalid, nothing was written: {problems}") from exc
            with contextlib.suppress(OSError):  # keep the config's permissions
                os.chmod(temp, self.path.stat().st_mode & 0o7777)
            os.replace(temp, self.path)
        except OSError as exc:
            raise ManageError(f"{self.path}: cannot write the config: {exc.strerror or exc}") from exc
        finally:
            temp.unlink(missing_ok=True)
        return settings


# -- discovery -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FoundFeed:
    """A feed found for an address: where it is, its title and its format."""

    url: str
    title: str | None
    format: str


def _get(fetcher: Fetcher, url: str, *, typed: str) -> tuple[str, bytes, dict[str, str]]:
    """Fetch `url`, found from the address the user `typed`: only that address decides whether
    private addresses may be reached (a page cannot point discovery at the local network)."""
    result = fetcher.fetch(replace(initial_state(Source(name="discover", url=typed)), url=url))
    if result.error is not None or result.status is None:
        raise ManageError(f"{url}: {result.error or 'no response'}")
    if result.status >= 400:
        raise ManageError(f"{url}: HTTP {result.status}")
    return result.final_url, result.body, dict(result.headers)


def _as_feed(url: str, body: bytes, headers: dict[str, str], max_entries: int) -> FoundFeed | None:
    try:
        feed = parse_feed("discover", body, headers, url=url, max_entries=max_entries)
    except ParseError:
        return None
    return FoundFeed(url, feed.title, feed.format)


def _alternates(body: bytes, base: str) -> list[tuple[str, str | None]]:
    """`<link rel="alternate">` feeds a page names, as (absolute URL, title)."""
    try:
        document = lxml.html.document_fromstring(body[: 2 * 1024 * 1024])
    except (ValueError, lxml.etree.ParserError):
        return []
    out: list[tuple[str, str | None]] = []
    for link in document.iter("link"):
        rel = (link.get("rel") or "").lower().split()
        kind = (link.get("type") or "").lower().split(";")[0].strip()
        href = (link.get("href") or "").strip()
        if "alternate" in rel and kind in _FEED_TYPES and href:
            out.append((urljoin(base, href), link.get("title")))
    return out


def discover(address: str, fetcher: Fetcher, *, max_entries: int = 500) -> list[FoundFeed]:
    """The feeds an address leads to: itself if it is a feed; else the feeds its page names
    (`<link rel="alternate">`: RSS, Atom, JSON Feed); else those at common paths. Each is
    fetched and parsed, so every one listed works. Raises ManageError when there is none."""
    final, body, headers = _get(fetcher, address, typed=address)
    own = _as_feed(final, body, headers, max_entries)
    if own is not None:
        return [own]
    named = _alternates(body, final)
    candidates = [url for url, _ in named] or [urljoin(final, path) for path in COMMON_PATHS]
    found: dict[str, FoundFeed] = {}
    for candidate in dict.fromkeys(candidates):
        try:
            url, feed_body, feed_headers = _get(fetcher, candidate, typed=address)
        except ManageError:
            continue
        feed = _as_feed(url, feed_body, feed_headers, max_entries)
        if feed is not None:
            found.setdefault(canonical_url(feed.url) or feed.url, feed)
    if not found:
        tried = "the feeds its page names" if named else f"{len(candidates)} common feed paths"
        raise ManageError(f"{address}: no feed found (not a feed itself; tried {tried})")
    return list(found.values())


# -- subscription lists ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subscription:
    """One feed of a subscription list: its URL, title and the folders it sits in, as tags."""

    url: str
    title: str | None
    tags: tuple[str, ...] = field(default_factory=tuple)


def read_opml(path: Path) -> list[Subscription]:
    """The feeds of an OPML file (1.0 or 2.0; nested folders and `category` become tags).
    Raises ManageError with one line for a file that is not a subscription list."""
    try:
        size = path.stat().st_size
        if size > MAX_OPML_BYTES:
            raise ManageError(f"{path}: {size} bytes is larger than a subscription list can be ({MAX_OPML_BYTES} bytes)")
        data = path.read_bytes()
    except OSError as exc:
        raise ManageError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if b"<!ENTITY" in data[:65536].upper():
        raise ManageError(f"{path}: declares XML entities; subscription lists do not (refused: entity expansion attacks)")
    result: Any = listparser.parse(data)
    if not result.feeds and (result.bozo or not result.version):
        reason = f": {result.bozo_exception}" if result.bozo else " (no <opml> document in it)"
        raise ManageError(f"{path}: not an OPML subscription list{reason}")
    if not result.feeds:
        raise ManageError(f"{path}: no feeds in it (no outline has an xmlUrl)")
    if len(result.feeds) > MAX_OUTLINES:
        raise ManageError(f"{path}: {len(result.feeds)} feeds is more than one import takes ({MAX_OUTLINES})")
    out = []
    for feed in result.feeds:
        url = str(feed.get("url") or "").strip()
        if not url:
            continue
        tags = tuple(dict.fromkeys(slugify(t, fallback="") for t in feed.get("tags") or () if slugify(t, fallback="")))
        out.append(Subscription(url, (feed.get("title") or "").strip() or None, tags))
    return out


def write_opml(settings: Settings, *, title: str = "feeds subscriptions") -> str:
    """The configured sources as OPML 2.0: each source once, in the folder of its first tag
    (untagged ones at the top), every tag also in its `category` attribute; `read_opml` reads
    back the same URLs, titles and tags, and readers show the folders."""
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', '<opml version="2.0">', f"  <head><title>{_xml(title)}</title></head>", "  <body>"]

    def outline(source: Source, indent: str) -> str:
        text = quoteattr(source.title or source.name)
        category = f" category={quoteattr(','.join('/' + t for t in source.tags))}" if source.tags else ""
        return f'{indent}<outline type="rss" text={text} title={text} xmlUrl={quoteattr(source.url)}{category}/>'

    folders: dict[str, list[Source]] = {}
    for source in settings.sources:
        if source.tags:
            folders.setdefault(source.tags[0], []).append(source)
    for tag, members in folders.items():
        lines.append(f"    <outline text={quoteattr(tag)} title={quoteattr(tag)}>")
        lines += [outline(s, "      ") for s in members]
        lines.append("    </outline>")
    lines += [outline(s, "    ") for s in settings.sources if not s.tags]
    lines += ["  </body>", "</opml>", ""]
    return "\n".join(lines)


def _xml(text: str) -> str:
    return quoteattr(text)[1:-1]


def check_address(address: str) -> None:
    """A source address must be http(s) or a file path; anything else is one clear line."""
    scheme = urlsplit(address).scheme.lower()
    if scheme in ("http", "https", "file") or (not scheme and address.strip()):
        return
    if len(scheme) == 1:  # a Windows drive letter
        return
    raise ManageError(f"{address}: not an http(s) URL or a file path")
