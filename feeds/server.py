"""HTTP: published outputs with ETag/304/gzip, the index page, live river pages (Server-Sent
Events), OPML of the sources, health, Prometheus metrics, and the WebSub callback.

Starlette app served by uvicorn. Only files named after configured outputs inside publish_dir are
ever served; pages are rendered from the published JSON Feed, so `feeds serve` needs nothing but
the publish directory. Everything that comes from feeds is escaped; story HTML is sanitized again.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import html
import json
import logging
import re
import resource
import signal
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Any
from xml.sax.saxutils import quoteattr

import anyio
import uvicorn
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from feeds.metrics import OUTPUT_RESPONSES
from feeds.models import FORMATS, OutputSpec, Settings, SourceView
from feeds.pages import (
    Filters,
    OutputSummary,
    index_page,
    missing_story_page,
    newest,
    river_item_html,
    river_page,
    seq,
    sources_page,
    story_page,
    time_html,
)
from feeds.timeutil import parse_http_date
from feeds.untrusted import digits, web_url, xml_safe

log = logging.getLogger(__name__)

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src http: https:; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {"Content-Security-Policy": CSP}  # nosniff and no-referrer come from SecurityHeaders
LIVE_CHECK_SECONDS = 1.0  # how often an open river page's stream looks for a newer output


@dataclass(frozen=True, slots=True)
class Published:
    """One output file as served: bytes, gzip variant and validators."""

    data: bytes
    gzipped: bytes
    etag: str
    modified: datetime
    media_type: str


_ARCHIVE = re.compile(r"^(.+)-archive-[1-9][0-9]{0,8}$")


class PublishedFiles:
    """Reads published outputs from publish_dir, cached until the file changes. The outputs are
    the current config's: a daemon that reloads its config serves a new output at once."""

    def __init__(self, settings: Callable[[], Settings]) -> None:
        self._settings = settings
        self._cache: dict[str, tuple[tuple[int, int], Published]] = {}
        self._json: dict[str, tuple[str, dict[str, Any]]] = {}  # by the JSON file's ETag
        self._lock = threading.Lock()

    @property
    def directory(self) -> Path:
        """Where outputs are published."""
        return self._settings().publish_dir

    @property
    def outputs(self) -> dict[str, OutputSpec]:
        """The configured outputs, by name."""
        return {o.name: o for o in self._settings().outputs}

    def is_archive(self, name: str, fmt: str) -> bool:
        """True for an archive page of an output that keeps archives (RFC 5005): immutable."""
        match = _ARCHIVE.match(name)
        output = self.outputs.get(match.group(1)) if match else None
        return fmt == "atom" and output is not None and output.archive

    def _path(self, name: str, fmt: str) -> Path | None:
        if not (name in self.outputs and fmt in FORMATS) and not self.is_archive(name, fmt):
            return None
        path = self.directory / f"{name}.{fmt}"
        # Never follow a link out of the publish directory.
        if path.is_symlink() or path.resolve().parent != self.directory.resolve():
            return None
        return path

    def get(self, name: str, fmt: str) -> Published | None:
        """The current bytes of `<name>.<fmt>`, or None if it is not a published output."""
        path = self._path(name, fmt)
        if path is None:
            return None
        try:
            stat = path.stat()
        except OSError:
            return None
        key = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._cache.get(f"{name}.{fmt}")
            if cached and cached[0] == key:
                return cached[1]
        try:
            data = path.read_bytes()
        except OSError:
            return None
        published = Published(
            data=data,
            gzipped=gzip.compress(data, 6, mtime=0),
            etag='"' + hashlib.sha256(data).hexdigest()[:32] + '"',
            modified=datetime.fromtimestamp(int(stat.st_mtime), UTC),
            media_type=f"{FORMATS[fmt]}; charset=utf-8",
        )
        with self._lock:
            self._cache[f"{name}.{fmt}"] = (key, published)
        return published

    def feed(self, name: str) -> dict[str, Any] | None:
        """The output's JSON Feed, parsed (the river page's data)."""
        published = self.get(name, "json")
        if published is None:
            return None
        with self._lock:
            cached = self._json.get(name)
            if cached and cached[0] == published.etag:
                return cached[1]
        try:
            document: dict[str, Any] = json.loads(published.data)
        except ValueError:
            return None
        with self._lock:
            self._json[name] = (published.etag, document)
        return document


def _etag_matches(header: str, etag: str) -> bool:
    """If-None-Match uses weak comparison: W/"x" matches "x" and "x-gzip" variants of one version."""
    bare = etag.strip('"')
    for candidate in header.split(","):
        value = candidate.strip()
        if value == "*":
            return True
        value = value.removeprefix("W/").strip('"').removesuffix("-gzip")
        if value == bare:
            return True
    return False


def _accepts_gzip(request: Request) -> bool:
    for part in request.headers.get("accept-encoding", "").lower().split(","):
        token, _, params = part.strip().partition(";")
        if token.strip() in ("gzip", "*") and params.replace(" ", "") not in ("q=0", "q=0.0"):
            return True
    return False


def _max_seq(document: Mapping[str, Any] | None) -> int:
    items = (document or {}).get("items") or []
    return max((seq(i) for i in items), default=0)


def _html(text: str, status: int = 200) -> Response:
    return Response(text, status_code=status, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


class SecurityHeaders(BaseHTTPMiddleware):
    """No sniffing and no referrers anywhere."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response


def create_app(
    settings: Settings | Callable[[], Settings],
    *,
    health: HealthCheck,
    metrics: Callable[[], bytes],
    statuses: Callable[[], list[SourceView]] | None = None,
    websub_routes: list[Route] | None = None,
) -> Starlette:
    """The web app: `health`, `metrics` and the sources' `statuses` come from the composition root
    (daemon or serve). `settings` may be a callable: the daemon's current config, reloaded."""
    current: Callable[[], Settings] = settings if callable(settings) else lambda: settings
    files = PublishedFiles(current)

    def site() -> str:
        return current().title

    def output_file(request: Request) -> Response:
        name, fmt = request.path_params["name"], request.path_params["fmt"]
        published = files.get(name, fmt)
        if published is None:
            return PlainTextResponse("not found\n", status_code=404)
        gzipped = _accepts_gzip(request) and len(published.data) > 512
        etag = published.etag[:-1] + '-gzip"' if gzipped else published.etag
        immutable = files.is_archive(name, fmt)  # an archive page never changes once written
        headers = {
            "ETag": etag,
            "Last-Modified": format_datetime(published.modified, usegmt=True),
            "Cache-Control": "public, max-age=31536000, immutable" if immutable else f"public, max-age={current().server.cache_max_age}",
            "Vary": "Accept-Encoding",
        }
        inm = request.headers.get("if-none-match")
        since = parse_http_date(request.headers.get("if-modified-since"))
        if _etag_matches(inm, published.etag) if inm is not None else since is not None and published.modified <= since:
            OUTPUT_RESPONSES.labels(status="304").inc()
            return Response(status_code=304, headers=headers)
        OUTPUT_RESPONSES.labels(status="200").inc()
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        return Response(published.gzipped if gzipped else published.data, media_type=published.media_type, headers=headers)

    def sources_now() -> list[SourceView]:
        return statuses() if statuses is not None else []

    def index(request: Request) -> Response:
        summaries = []
        for name, output in files.outputs.items():
            document = files.feed(name) or {}
            items = document.get("items") or []
            summaries.append(OutputSummary(name, document.get("title") or output.title, len(items), newest(items)))
        rows = sources_now()
        page = index_page(site(), summaries, sources=len(rows), failing=sum(r.failing for r in rows), now=datetime.now(UTC))
        return _html(page)

    def sources(request: Request) -> Response:
        return _html(sources_page(site(), sources_now(), now=datetime.now(UTC)))

    def river(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in files.outputs:
            return PlainTextResponse("not found\n", status_code=404)
        document = files.feed(name) or {}
        filters = Filters.from_query(request.query_params)
        return _html(river_page(site(), name, document, filters, now=datetime.now(UTC), fallback_title=files.outputs[name].title))

    def story(request: Request) -> Response:
        name, number = request.path_params["name"], request.path_params["seq"]
        if name not in files.outputs:
            return PlainTextResponse("not found\n", status_code=404)
        document = files.feed(name) or {}
        title = document.get("title") or files.outputs[name].title
        wanted = digits(number)
        item = next((i for i in document.get("items") or [] if wanted and seq(i) == wanted), None)
        if item is None:
            return _html(missing_story_page(site(), title), status=404)
        return _html(story_page(site(), name, title, item, now=datetime.now(UTC)))

    async def events(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in files.outputs:
            return PlainTextResponse("not found\n", status_code=404)
        # A cursor from the client: a short run of ASCII digits, or none (`²`, 5000 digits: none).
        resume = digits(request.headers.get("last-event-id")) or digits(request.query_params.get("since"))
        filters = Filters.from_query(request.query_params)  # the page's filters: only stories it would show

        async def stream() -> AsyncIterator[ServerSentEvent]:
            last = resume if resume is not None else _max_seq(await run_in_threadpool(files.feed, name))
            yield ServerSentEvent(comment="connected", retry=3000)
            while True:
                document = await run_in_threadpool(files.feed, name) or {}
                items = document.get("items") or []
                fresh = [i for i in items if seq(i) > last]
                for item in sorted(fresh, key=seq):
                    last = seq(item)
                    if not filters.matches(item):
                        continue
                    now = datetime.now(UTC)
                    payload = {"html": river_item_html(item, now=now), "updated": time_html(newest(items), now=now)}
                    yield ServerSentEvent(json.dumps(payload), event="story", id=str(last))
                await anyio.sleep(LIVE_CHECK_SECONDS)

        return EventSourceResponse(stream(), ping=15, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    def opml(request: Request) -> Response:
        known = {row.name: row.state for row in sources_now()}
        outlines = []
        for source in current().sources:
            state = known.get(source.name)
            url = web_url(state.url if state is not None else source.url)  # no credentials, no odd schemes
            if url is None:
                continue  # a local file is nothing another reader can subscribe to
            title = xml_safe(source.title or (state.feed_title if state else None) or source.name)
            link = web_url(state.feed_link) if state is not None else None
            home = f" htmlUrl={quoteattr(link)}" if link else ""
            outlines.append(f'    <outline type="rss" text={quoteattr(title)} title={quoteattr(title)} xmlUrl={quoteattr(url)}{home}/>')
        document = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<opml version="2.0">\n  <head>\n'
            f"    <title>{html.escape(xml_safe(current().title))} sources</title>\n"
            f"    <dateCreated>{format_datetime(datetime.now(UTC), usegmt=True)}</dateCreated>\n  </head>\n  <body>\n"
            + "\n".join(outlines)
            + "\n  </body>\n</opml>\n"
        )
        return Response(document, media_type="text/x-opml; charset=utf-8")

    def health_endpoint(request: Request) -> Response:
        ok, payload = health()
        return JSONResponse({"status": "ok" if ok else "unhealthy", **payload}, status_code=200 if ok else 503)

    def metrics_endpoint(request: Request) -> Response:
        return Response(metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def river_without_slash(request: Request) -> Response:
        # A relative Location: an absolute one would be built from the client's Host header.
        name = request.path_params["name"]
        if name not in files.outputs:
            return PlainTextResponse("not found\n", status_code=404)
        return Response(status_code=308, headers={"Location": f"{name}/"})

    def static(request: Request) -> Response:
        name = request.path_params["file"]
        types = {"river.js": "text/javascript; charset=utf-8", "river.css": "text/css; charset=utf-8"}
        if name not in types:
            return PlainTextResponse("not found\n", status_code=404)
        data = (resources.files("feeds") / "static" / name).read_bytes()
        return Response(data, media_type=types[name], headers={"Cache-Control": "public, max-age=3600"})

    routes = [
        Route("/", index),
        Route("/health", health_endpoint),
        Route("/metrics", metrics_endpoint),
        Route("/sources.opml", opml),
        Route("/sources", sources),
        Route("/static/{file}", static),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        *(websub_routes or []),
        Route("/{name}.{fmt}", output_file, methods=["GET", "HEAD"]),
        Route("/{name}/", river),
        Route("/{name}", river_without_slash),
        Route("/{name}/events", events),
        Route("/{name}/story/{seq}", story),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)])
    app.router.redirect_slashes = False  # its redirects are absolute URLs from the Host header
    return app


class _GuardedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with two bounds it lacks: a connection over the limit is closed
    at once, and a request's head must arrive within `header_timeout` s (a client that opens
    connections and sends nothing, or one byte at a time, cannot hold file descriptors)."""

    max_connections = 512
    header_timeout = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self.connections) >= self.max_connections:
            self.transport = transport  # type: ignore[assignment]
            self.flow = None  # type: ignore[assignment]
            transport.close()
            return
        super().connection_made(transport)  # type: ignore[arg-type]
        self._await_request()

    def _await_request(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:
            self._cancel_header_timer()  # a whole request head arrived

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self.flow is None:
            return  # closed in connection_made: never counted
        super().connection_lost(exc)


class _Server(uvicorn.Server):
    """uvicorn, but a SIGTERM/SIGINT only stops serving: uvicorn would re-raise the signal after
    shutting down, killing the process before the daemon can stop its scheduler cleanly."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True


def connection_limit(wanted: int) -> int:
    """How many connections the server may hold: `wanted`, but at most half the file descriptors
    this process may open (raised to the hard limit first), so polling and the store keep theirs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return max(16, min(wanted, soft // 2)) if soft != resource.RLIM_INFINITY else wanted


def make_server(app: Starlette, *, host: str, port: int, max_connections: int = 512, header_timeout: float = 10.0) -> uvicorn.Server:
    """A uvicorn server for the app (run it with .run(); it returns on SIGINT/SIGTERM)."""
    limit = connection_limit(max_connections)
    protocol = type("GuardedH11", (_GuardedH11,), {"max_connections": limit, "header_timeout": header_timeout})
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=3,
        limit_concurrency=limit,
        timeout_keep_alive=5,
    )
    return _Server(config)
