"""YAML -> validated Settings: every error at once, each as `file:line: field.path: message`.

The YAML is composed into nodes first so every value keeps its line; pydantic checks types and
rejects unknown keys (typos); cross-field checks (duplicate names, unknown references, bounds)
follow. Nothing here polls or writes.
"""

from __future__ import annotations

import gc
import os
import re
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, urlsplit

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from feeds.errors import ConfigError
from feeds.models import DedupeSettings, FetchSettings, OutputSpec, ServerSettings, Settings, Source, WebSubSettings
from feeds.rules import FIELDS as RULE_FIELDS
from feeds.rules import pattern_problem, template_problem
from feeds.timeutil import format_duration, parse_duration
from feeds.untrusted import xml_safe

DEFAULT_PATH = Path("config/feeds.yaml")
# Where the config is looked for when no -c/--config is given: $FEEDS_CONFIG, then these, first found.
SEARCH_PATH = (Path("feeds.yaml"), DEFAULT_PATH, Path("~/.config/feeds/feeds.yaml"), Path("/etc/feeds/feeds.yaml"))


def find_config() -> Path:
    """The config to use when none is named: $FEEDS_CONFIG if set, else the first of SEARCH_PATH
    that exists (relative ones in the current directory), else config/feeds.yaml (whose absence
    the loader reports)."""
    named = os.environ.get("FEEDS_CONFIG")
    if named:
        return Path(named).expanduser()
    return next((p.expanduser() for p in SEARCH_PATH if p.expanduser().is_file()), DEFAULT_PATH)


_COLLECTION_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}
_STR = "tag:yaml.org,2002:str"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: same marks, much faster
MIN_INTERVAL_FLOOR = timedelta(minutes=1)
_SLUG = r"^[a-z0-9][a-z0-9_-]{0,62}$"


def _split(url: str) -> SplitResult | None:
    """urlsplit, or None for what it cannot read (`http://[::1` raises ValueError)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # a port out of range raises here
    except ValueError:
        return None
    return parts


def _web(url: str) -> bool:
    """An absolute http(s) URL with a host."""
    parts = _split(url)
    return parts is not None and parts.scheme in ("http", "https") and bool(parts.hostname)


# The common source URL, checked without parsing (100,000 sources load in seconds): a host of
# plain characters, an optional port, then a path, query or nothing.
_PLAIN_WEB = re.compile(r"https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:[/?#][^\s]*)?")


class _Loader(_LOADER):  # type: ignore[misc,valid-type]
    """libyaml with a shortcut in YAML 1.1's type resolution: a plain scalar whose first
    character no implicit type can start with (`source-1`, `https://...`) is a string at once,
    without trying every pattern (the patterns were most of the time of a large file)."""

    _STARTS = frozenset(k for k in _LOADER.yaml_implicit_resolvers if k)

    def resolve(self, kind: type, value: str, implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode and implicit[0] and value and value[0] not in self._STARTS:
            return _STR
        return str(super().resolve(kind, value, implicit))


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        try:
            return parse_duration(value)
        except ValueError:
            pass
    raise ValueError(f"not a duration (use e.g. 90s, 15m, 2h, 3d), got {value!r}")


Duration = Annotated[timedelta, BeforeValidator(_duration)]
Slug = Annotated[str, Field(pattern=_SLUG)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _default(cls: type, name: str) -> Any:
    """The default a runtime dataclass declares for a field: every setting is declared once, there."""
    return next(f.default for f in fields(cls) if f.name == name)


def _seconds(cls: type, name: str) -> timedelta:
    return timedelta(seconds=_default(cls, name))


class _Defaults(_Model):
    interval: Duration = _default(Source, "interval")
    min_interval: Duration = _default(Source, "min_interval")
    max_interval: Duration = _default(Source, "max_interval")


class _Source(_Model):
    name: Slug
    url: Annotated[str, Field(min_length=1)]
    title: str | None = None
    tags: list[Slug] = Field(default_factory=list)
    interval: Duration | None = None
    min_interval: Duration | None = None
    max_interval: Duration | None = None
    priority: int = 0
    websub: bool = False
    private: bool = False
    retention: Duration | None = None
    rebase: datetime | None = None


class _Exclude(_Model):
    title: list[str] = Field(default_factory=list)
    content: list[str] = Field(default_factory=list)
    author: list[str] = Field(default_factory=list)
    category: list[str] = Field(default_factory=list)


class _Include(_Exclude):
    tags: list[str] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list)


class _Output(_Model):
    name: Slug
    title: str | None = None
    description: str | None = None
    include: _Include = _Include()
    limit: Annotated[int, Field(ge=1, le=10_000)] = 100
    # copies: one entry per text and its syndicated copies; event: also outlets' own rewrites of
    # the same event; exact: only identical URLs or bodies. "near" is the old name of "copies".
    dedupe: Literal["copies", "event", "exact", "near"] = "event"
    report_failures: Duration | None = None
    exclude: _Exclude = _Exclude()
    max_age: Duration | None = None
    per_source_limit: Annotated[int, Field(ge=1, le=10_000)] | None = None
    min_sources: Annotated[int, Field(ge=1, le=100)] = 1
    title_template: Annotated[str, Field(min_length=1, max_length=500)] | None = None
    archive: bool = False


class _Fetch(_Model):
    connect_timeout: Annotated[float, Field(gt=0, le=300)] = _default(FetchSettings, "connect_timeout")
    read_timeout: Annotated[float, Field(gt=0, le=3600)] = _default(FetchSettings, "read_timeout")
    max_wire_bytes: Annotated[int, Field(ge=1024)] = _default(FetchSettings, "max_wire_bytes")
    max_body_bytes: Annotated[int, Field(ge=1024)] = _default(FetchSettings, "max_body_bytes")
    max_redirects: Annotated[int, Field(ge=0, le=20)] = _default(FetchSettings, "max_redirects")
    workers: Annotated[int, Field(ge=1, le=64)] = _default(FetchSettings, "workers")
    per_host: Annotated[int, Field(ge=1, le=16)] = _default(FetchSettings, "per_host")
    user_agent: str | None = _default(FetchSettings, "user_agent")
    parse_timeout: Annotated[float, Field(gt=0, le=3600)] = _default(FetchSettings, "parse_timeout")
    parse_workers: Annotated[int, Field(ge=0, le=64)] = _default(FetchSettings, "parse_workers")
    max_entries: Annotated[int, Field(ge=1, le=100_000)] = _default(Settings, "max_entries")


class _Dedupe(_Model):
    window: Duration = _default(DedupeSettings, "window")
    jaccard: Annotated[float, Field(gt=0, le=1)] = _default(DedupeSettings, "jaccard")
    containment: Annotated[float, Field(gt=0, le=1)] = _default(DedupeSettings, "containment")
    min_words: Annotated[int, Field(ge=3, le=1000)] = _default(DedupeSettings, "min_words")


class _Server(_Model):
    host: str = _default(ServerSettings, "host")
    port: Annotated[int, Field(ge=0, le=65535)] = _default(ServerSettings, "port")
    cache_max_age: Annotated[int, Field(ge=0, le=86400)] = _default(ServerSettings, "cache_max_age")
    max_connections: Annotated[int, Field(ge=16, le=100_000)] = _default(ServerSettings, "max_connections")
    header_timeout: Duration = _seconds(ServerSettings, "header_timeout")


class _WebSub(_Model):
    hub: str | None = None
    public_url: str | None = None
    lease: Duration = _default(WebSubSettings, "lease")


class _Config(_Model):
    title: Annotated[str, Field(min_length=1, max_length=200)] = _default(Settings, "title")
    storage: str = "sqlite:///feeds.db"
    publish_dir: str = "public"
    base_url: str = "http://localhost:8080/"
    tick: Duration = _default(Settings, "tick")
    lease: Duration = _default(Settings, "lease")
    retention: Duration | None = None
    defaults: _Defaults = _Defaults()
    fetch: _Fetch = _Fetch()
    dedupe: _Dedupe = _Dedupe()
    server: _Server = _Server()
    websub: _WebSub = _WebSub()
    sources: Annotated[list[_Source], Field(min_length=1)]
    outputs: list[_Output] = [_Output(name="all", title="All stories")]


Path_ = tuple[str | int, ...]


class _Reader:
    """Composed YAML nodes -> plain data, recording the line of every path. Bounded for hostile
    files: an alias that contains itself, an alias bomb (each level repeating the one before),
    a key that is not a scalar and a tag safe YAML does not know are problems with a line, not a
    traceback or a hang."""

    def __init__(self, text: str, lines: dict[Path_, int], problems: list[tuple[Path_, str]]) -> None:
        self.lines = lines
        self.problems = problems
        self.budget = 10 * len(text) + 10_000  # nodes visited, aliases expanded included
        self.active: set[int] = set()
        self.constructor = yaml.SafeLoader("")

    def read(self, node: yaml.Node, path: Path_) -> Any:
        self.lines[path] = node.start_mark.line + 1
        self.budget -= 1
        if self.budget < 0:
            raise _TooLargeError(path)
        if id(node) in self.active:
            self.problems.append((path, "an alias refers to itself (recursive YAML)"))
            return None
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _STR:
                return node.value  # what the constructor would do, without its bookkeeping
            try:
                return self.constructor.construct_object(node, deep=True)
            except yaml.YAMLError as exc:
                self.problems.append((path, f"unsupported value: {getattr(exc, 'problem', None) or exc}"))
                return None
        if node.tag not in _COLLECTION_TAGS:
            self.problems.append((path, f"unsupported tag {node.tag}"))
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            return [self.read(item, (*path, i)) for i, item in enumerate(node.value)]
        finally:
            self.active.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> dict[Any, Any]:
        data: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None  # keys stay text: `on:` is "on"
            if not isinstance(key, str):
                self.lines[(*path, f"<key at line {line}>")] = line
                self.problems.append(((*path, f"<key at line {line}>"), "a key must be a plain scalar"))
                continue
            if key in data:
                self.lines[(*path, key)] = line
                self.problems.append(((*path, key), "duplicate key"))
                continue
            data[key] = self.read(value_node, (*path, key))
            self.lines[(*path, key)] = line
        return data


class _UnusualYamlError(Exception):
    """The plain reader met something only the hardened one reads (an alias, an anchor, a tag,
    a key that is not a scalar, a duplicate key, deep nesting)."""


_MAX_DEPTH = 64  # deeper than any config; the hardened reader reports what it is


def _plain_read(text: str, lines: dict[Path_, int] | None) -> Any:
    """The document as plain data, from libyaml's events (no node tree, no recursion), recording
    the line of every path as `_Reader` does (a mapping value: its key's line). Only for plain
    documents: raises `_UnusualYamlError` for anything else, and the caller reads the file again
    with compose and `_Reader`. (Written for speed: a 100,000-source file is 1.1 million events.)
    Without `lines`, paths are not even built: a file without problems needs none."""
    loader = _Loader(text)
    constructor = yaml.SafeLoader("")  # its constructor, for the few plain scalars that are not strings
    starts = _Loader._STARTS
    scalar, mapping, sequence = yaml.ScalarEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent
    ends = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
    stack: list[list[Any]] = []  # [container, its path, the key waiting for its value, the key's line]
    root: Any = None
    documents = 0
    tags: dict[str, str] = {}  # a plain scalar's resolved type, by its text
    get_event = loader.get_event
    try:
        while True:
            event = get_event()
            kind = type(event)
            if kind is scalar or kind is mapping or kind is sequence:
                if event.anchor is not None or (kind is scalar and event.tag is not None):
                    raise _UnusualYamlError
                top = stack[-1] if stack else None
                if top is not None and top[2] is None and type(top[0]) is dict:  # a key: its text, as written
                    if kind is not scalar or event.value in top[0]:
                        raise _UnusualYamlError
                    top[2], top[3] = event.value, event.start_mark.line + 1
                    continue
                value: Any
                if kind is not scalar:
                    value = {} if kind is mapping else []
                else:
                    value = event.value
                    if event.implicit[0] and (not value or value[0] in starts):  # plain, and may be a number, date, ...
                        tag = tags.get(value)
                        if tag is None:
                            tag = tags[value] = loader.resolve(yaml.ScalarNode, value, event.implicit)
                        if tag != _STR:
                            value = constructor.construct_object(yaml.ScalarNode(tag, value, event.start_mark, event.end_mark))
                if top is None:
                    path: Path_ = ()
                    root = value
                    if lines is not None:
                        lines[path] = event.start_mark.line + 1
                elif type(top[0]) is dict:
                    top[0][top[2]] = value
                    if lines is not None or kind is not scalar:
                        path = (*top[1], top[2])
                        if lines is not None:
                            lines[path] = top[3]
                    top[2] = None
                else:
                    if lines is not None or kind is not scalar:
                        path = (*top[1], len(top[0]))
                        if lines is not None:
                            lines[path] = event.start_mark.line + 1
                    top[0].append(value)
                if kind is not scalar:
                    if len(stack) >= _MAX_DEPTH:
                        raise _UnusualYamlError
                    stack.append([value, path, None, 0])
            elif kind in ends:
                stack.pop()
            elif kind is yaml.AliasEvent:
                raise _UnusualYamlError
            elif kind is yaml.DocumentStartEvent:
                documents += 1
                if documents > 1:
                    raise _UnusualYamlError  # compose says what is wrong with a second document
            elif kind is yaml.StreamEndEvent:
                return root
    finally:
        loader.dispose()


class _TooLargeError(Exception):
    """The document expands past the reader's budget (an alias bomb)."""

    def __init__(self, path: Path_) -> None:
        super().__init__(path)
        self.path = path


def _dotted(path: Path_) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _line(path: Path_, lines: dict[Path_, int]) -> int:
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return 1


def load_settings(path: Path) -> Settings:
    """Read and validate a config file; raise ConfigError listing every problem.

    The cyclic garbage collector is paused meanwhile: reading builds millions of small objects
    and no cycles, and the collector's passes over them were more than half the time of a
    100,000-source file."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _load(path)
    finally:
        if was_enabled:
            gc.enable()


def _load(path: Path) -> Settings:
    display = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(
            [f"{display}: config file not found (pass --config FILE, or set FEEDS_CONFIG; looked in {', '.join(map(str, SEARCH_PATH))})"]
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{display}: cannot read config: {exc}"]) from exc
    lines: dict[Path_, int] = {}
    problems: list[tuple[Path_, str]] = []
    plain = True
    try:
        data = _plain_read(text, None)
        node: yaml.Node | None = None
        if data is None:
            raise ConfigError([f"{display}:1: the file is empty; it needs at least `sources:`"])
    except (_UnusualYamlError, yaml.YAMLError):
        plain = False
        try:
            node = yaml.compose(text, Loader=_Loader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{display}:{mark.line + 1}" if mark else display
            raise ConfigError([f"{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}"]) from exc
        except RecursionError as exc:
            raise ConfigError([f"{display}: invalid YAML: nested too deeply"]) from exc
        if node is None:
            raise ConfigError([f"{display}:1: the file is empty; it needs at least `sources:`"]) from None
        data = None
    try:
        if node is not None:
            data = _Reader(text, lines, problems).read(node, ())
    except _TooLargeError as exc:
        line = _line(exc.path, lines)
        raise ConfigError(
            [f"{display}:{line}: {_dotted(exc.path)}: aliases expand to far more than the file holds (is it an alias bomb?)"]
        ) from exc
    except RecursionError as exc:
        raise ConfigError([f"{display}: invalid YAML: nested too deeply"]) from exc
    if not isinstance(data, dict):
        raise ConfigError([f"{display}:1: expected a mapping with `sources:`, got {type(data).__name__}"])
    model: _Config | None = None
    try:
        model = _Config.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(error["loc"])
            message = _message(error)
            problems.append((loc, message))
    problems.extend(_check(data, path.parent, clean="\\" not in text and xml_safe(text) == text))
    if problems:
        if plain:
            _plain_read(text, lines)  # read again, this time for the lines the messages name
        unique = dict.fromkeys(f"{display}:{_line(loc, lines)}: {_dotted(loc)}: {msg}" for loc, msg in problems)
        ordered = sorted(unique, key=lambda p: int(p[len(display) + 1 :].split(":", 1)[0]))
        raise ConfigError(ordered)
    assert model is not None
    return _settings(model, path)


def _message(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key (check the spelling)"
    if kind == "missing":
        return "required"
    if kind == "string_pattern_mismatch":
        return f"must be a lowercase slug (letters, digits, - and _), got {error.get('input')!r}"
    message = str(error["msg"]).removeprefix("Value error, ")
    return message


def _resolve_url(url: str, base: Path) -> str:
    if url.startswith(("http://", "https://")):
        return url  # the common case, without parsing (100,000 sources load in seconds)
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        return url
    if parts.scheme == "file":
        return url
    path = Path(url).expanduser()
    return (path if path.is_absolute() else (base / path)).resolve().as_uri()


def _maybe_duration(value: Any, fallback: timedelta) -> timedelta | None:
    if value is None:
        return fallback
    try:
        return _duration(value)
    except ValueError:
        return None  # pydantic reports it


def _check(data: dict[str, Any], base: Path, *, clean: bool = False) -> list[tuple[Path_, str]]:
    """Checks across fields, on the raw data so they run even when some values have the wrong type.
    `clean`: the file's text holds no control character and no backslash (so no YAML escape), so
    no value can: the walk over every string is skipped."""
    problems: list[tuple[Path_, str]] = []
    raw_defaults = data.get("defaults")
    defaults = raw_defaults if isinstance(raw_defaults, dict) else {}
    fallback = {key: _default(Source, key) for key in ("interval", "min_interval", "max_interval")}
    default_interval = _maybe_duration(defaults.get("interval"), fallback["interval"]) or fallback["interval"]
    default_low = _maybe_duration(defaults.get("min_interval"), fallback["min_interval"]) or fallback["min_interval"]
    default_high = _maybe_duration(defaults.get("max_interval"), fallback["max_interval"]) or fallback["max_interval"]
    sources = data.get("sources") if isinstance(data.get("sources"), list) else []
    seen: dict[str, int] = {}
    tags: set[str] = set()
    for i, src in enumerate(sources or []):
        if not isinstance(src, dict):
            continue
        name, url = src.get("name"), src.get("url")
        if isinstance(name, str):
            if name in seen:
                problems.append((("sources", i, "name"), f"duplicate source name {name!r} (also sources[{seen[name]}])"))
            seen.setdefault(name, i)
        if isinstance(src.get("tags"), list):
            tags.update(t for t in src["tags"] if isinstance(t, str))
        if isinstance(url, str) and url:
            problem = _check_url(url, base)
            if problem:
                problems.append((("sources", i, "url"), problem))
        interval = _maybe_duration(src.get("interval"), default_interval)
        low = _maybe_duration(src.get("min_interval"), default_low)
        high = _maybe_duration(src.get("max_interval"), default_high)
        for key, value in (("interval", interval), ("min_interval", low)):
            if value is not None and value < MIN_INTERVAL_FLOOR:
                floor = format_duration(MIN_INTERVAL_FLOOR)
                problems.append((("sources", i, key), f"must be at least {floor}, got {format_duration(value)!r}"))
        if low is not None and high is not None and not low <= high:
            low_text, high_text = format_duration(low), format_duration(high)
            problems.append((("sources", i, "min_interval"), f"min_interval {low_text} is above max_interval {high_text}"))
    outputs = data.get("outputs") if isinstance(data.get("outputs"), list) else []
    names: dict[str, int] = {}
    for i, out in enumerate(outputs or []):
        if not isinstance(out, dict):
            continue
        name = out.get("name")
        if isinstance(name, str):
            if name in names:
                problems.append((("outputs", i, "name"), f"duplicate output name {name!r} (also outputs[{names[name]}])"))
            names.setdefault(name, i)
        include: dict[str, Any] = out["include"] if isinstance(out.get("include"), dict) else {}
        for j, ref in enumerate(include.get("sources") or [] if isinstance(include.get("sources"), list) else []):
            if isinstance(ref, str) and ref not in seen:
                problems.append((("outputs", i, "include", "sources", j), f"no source named {ref!r}"))
        for j, tag in enumerate(include.get("tags") or [] if isinstance(include.get("tags"), list) else []):
            if isinstance(tag, str) and tag not in tags:
                problems.append((("outputs", i, "include", "tags", j), f"no source has the tag {tag!r}"))
        problems.extend(_check_rules(out, i))
    base_url = data.get("base_url", "http://localhost:8080/")
    if isinstance(base_url, str) and not _web(base_url):
        problems.append((("base_url",), f"must be an absolute http(s) URL, got {base_url!r}"))
    websub: dict[str, Any] = data["websub"] if isinstance(data.get("websub"), dict) else {}
    for key in ("hub", "public_url"):
        value = websub.get(key)
        if isinstance(value, str) and not _web(value):
            problems.append((("websub", key), f"must be an absolute http(s) URL, got {value!r}"))
    for i, src in enumerate(sources or []):
        if isinstance(src, dict) and src.get("websub") is True and not websub.get("public_url"):
            problems.append((("sources", i, "websub"), "needs websub.public_url: the URL where hubs can reach this server"))
    problems.extend(_control_characters(data, ()) if not clean else [])
    publish_dir = data.get("publish_dir")
    if isinstance(publish_dir, str):
        try:
            Path(publish_dir).expanduser().resolve()
        except (ValueError, RuntimeError, OSError) as exc:
            problems.append((("publish_dir",), f"not a usable directory: {publish_dir!r} ({exc})"))
    storage = data.get("storage", "sqlite:///feeds.db")
    if isinstance(storage, str) and not re.match(r"^[a-z][a-z0-9+]*://", storage):
        problems.append((("storage",), f"must be a URL such as sqlite:///feeds.db, got {storage!r}"))
    return problems


def _check_rules(out: dict[str, Any], i: int) -> list[tuple[Path_, str]]:
    """An output's rules: patterns that compile, a template with known fields, and combinations
    that can hold."""
    problems: list[tuple[Path_, str]] = []
    for key in ("include", "exclude"):
        rules = out.get(key)
        if not isinstance(rules, dict):
            continue
        for field in RULE_FIELDS:
            patterns = rules.get(field)
            for j, pattern in enumerate(patterns if isinstance(patterns, list) else []):
                problem = pattern_problem(pattern) if isinstance(pattern, str) else None
                if problem:
                    problems.append((("outputs", i, key, field, j), problem))
    template = out.get("title_template")
    if isinstance(template, str) and (problem := template_problem(template)):
        problems.append((("outputs", i, "title_template"), problem))
    min_sources = out.get("min_sources")
    if isinstance(min_sources, int) and min_sources > 1 and out.get("dedupe") in ("copies", "near", "exact"):
        problems.append(
            (("outputs", i, "min_sources"), f"counts independent reports, which needs dedupe: event (this output has {out['dedupe']})")
        )
    limit, per_source = out.get("limit"), out.get("per_source_limit")
    if isinstance(limit, int) and isinstance(per_source, int) and per_source > limit:
        problems.append((("outputs", i, "per_source_limit"), f"{per_source} is above the output's limit {limit}: it would never apply"))
    return problems


def _control_characters(value: Any, path: Path_) -> list[tuple[Path_, str]]:
    """Every string holding a character XML cannot carry (YAML lets "\x01" through escapes)."""
    if isinstance(value, str):
        if xml_safe(value) == value:
            return []
        bad = next(c for c in value if xml_safe(c) != c)
        return [(path, f"contains the control character U+{ord(bad):04X}")]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _control_characters(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _control_characters(v, (*path, i))]
    return []


def _check_url(url: str, base: Path) -> str | None:
    if _PLAIN_WEB.fullmatch(url):
        return None
    parts = _split(url)
    if parts is None:
        return f"not a valid URL: {url!r}"
    if parts.scheme in ("http", "https"):
        return None if parts.hostname else f"not a valid URL: {url!r}"
    if len(parts.scheme) > 1 and parts.scheme != "file":  # one letter: a Windows drive
        return f"unsupported scheme {parts.scheme!r}: use http(s) or a file path"
    try:  # a file path: `~nobody/x` has no home, a NUL byte is no path
        local = Path(urlsplit(_resolve_url(url, base)).path)
        found = local.is_file()
    except (ValueError, RuntimeError, OSError) as exc:
        return f"not a usable file path: {url!r} ({exc})"
    return None if found else f"no such file: {local}"


def _settings(model: _Config, path: Path) -> Settings:
    base = path.parent.resolve()
    defaults = model.defaults
    sources = tuple(
        Source(
            name=s.name,
            url=_resolve_url(s.url, base),
            title=s.title,
            tags=tuple(s.tags),
            interval=s.interval or defaults.interval,
            min_interval=s.min_interval or defaults.min_interval,
            max_interval=s.max_interval or defaults.max_interval,
            priority=s.priority,
            websub=s.websub,
            private=s.private,
            retention=s.retention,
            rebase=_utc(s.rebase),
        )
        for s in model.sources
    )
    outputs = tuple(
        OutputSpec(
            name=o.name,
            title=o.title or o.name,
            description=o.description,
            include_sources=tuple(o.include.sources),
            include_tags=tuple(o.include.tags),
            limit=o.limit,
            dedupe="copies" if o.dedupe == "near" else o.dedupe,
            report_failures=o.report_failures,
            include_rules=tuple((f, tuple(getattr(o.include, f))) for f in RULE_FIELDS if getattr(o.include, f)),
            exclude_rules=tuple((f, tuple(getattr(o.exclude, f))) for f in RULE_FIELDS if getattr(o.exclude, f)),
            max_age=o.max_age,
            per_source_limit=o.per_source_limit,
            min_sources=o.min_sources,
            title_template=o.title_template,
            archive=o.archive,
        )
        for o in model.outputs
    )
    f = model.fetch
    publish_dir = Path(model.publish_dir).expanduser()
    base_url = model.base_url if model.base_url.endswith("/") else model.base_url + "/"
    return Settings(
        path=path,
        title=model.title.strip() or _default(Settings, "title"),
        storage=os.environ.get("FEEDS_STORAGE") or model.storage,  # keeps a DSN's secrets out of the YAML
        publish_dir=(publish_dir if publish_dir.is_absolute() else base / publish_dir).resolve(),
        base_url=base_url,
        sources=sources,
        outputs=outputs,
        fetch=FetchSettings(**f.model_dump(exclude={"max_entries"})),
        dedupe=DedupeSettings(**model.dedupe.model_dump()),
        tick=model.tick,
        retention=model.retention,
        lease=model.lease,
        max_entries=f.max_entries,
        server=ServerSettings(**{**model.server.model_dump(), "header_timeout": model.server.header_timeout.total_seconds()}),
        websub=WebSubSettings(hub=model.websub.hub, public_url=_slash(model.websub.public_url), lease=model.websub.lease),
    )


def _utc(value: datetime | None) -> datetime | None:
    """An instant from the file, in UTC (without an offset it is UTC)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _slash(url: str | None) -> str | None:
    return url if url is None or url.endswith("/") else url + "/"
