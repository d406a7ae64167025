"""Real fixtures: a threaded local HTTP server serving feeds, real SQLite files, the real CLI."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from feeds.config import load_settings
from feeds.models import Settings

ROOT = Path(__file__).resolve().parent.parent
# The PostgreSQL tests run against this server (each test in a schema of its own); without it they
# are skipped, unless FEEDS_REQUIRE_POSTGRESQL=1 (set by .ci/run) makes that a failure.
POSTGRESQL = os.environ.get("FEEDS_TEST_POSTGRESQL", "")
REQUIRE_POSTGRESQL = os.environ.get("FEEDS_REQUIRE_POSTGRESQL") == "1"
DATA = Path(__file__).resolve().parent / "data"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@dataclass
class Route:
    """What the server answers on one path. `body` may be a callable for dynamic answers."""

    body: bytes | Callable[[], bytes] = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # before the response starts
    trickle: float = 0.0  # seconds between body bytes
    header_trickle: float = 0.0  # seconds between the bytes of the status line and headers
    etag: str | None = None  # answer 304 to a matching If-None-Match
    content_type: str = "application/rss+xml; charset=utf-8"


@dataclass
class Hit:
    """One request the server received."""

    path: str
    headers: dict[str, str]
    at: float


class FeedServer:
    """A threaded HTTP server on 127.0.0.1 serving configured routes and logging every request."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.routes: dict[str, Route] = {}
        self.hits: list[Hit] = []
        self.lock = threading.Lock()
        self.active = 0
        self.max_active: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path
                with server.lock:
                    server.hits.append(Hit(path, {k.lower(): v for k, v in self.headers.items()}, time.monotonic()))
                    server.active += 1
                    host = self.headers.get("Host", "")
                    server.max_active[host] = max(server.max_active.get(host, 0), server.active)
                try:
                    self._answer(server.routes.get(path.split("?")[0]) or server.routes.get(path))
                finally:
                    with server.lock:
                        server.active -= 1

            def _answer(self, route: Route | None) -> None:
                if route is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if route.delay:
                    time.sleep(route.delay)
                if route.header_trickle:
                    head = f"HTTP/1.1 {route.status} OK\r\nContent-Type: {route.content_type}\r\nContent-Length: 0\r\n\r\n".encode()
                    try:
                        for i in range(len(head)):
                            self.wfile.write(head[i : i + 1])
                            self.wfile.flush()
                            time.sleep(route.header_trickle)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    self.close_connection = True
                    return
                if route.etag and self.headers.get("If-None-Match") == route.etag:
                    self.send_response(304)
                    self.send_header("ETag", route.etag)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = route.body() if callable(route.body) else route.body
                self.send_response(route.status)
                headers = {"Content-Type": route.content_type, **route.headers}
                if route.etag:
                    headers.setdefault("ETag", route.etag)
                for name, value in headers.items():
                    if value != "":  # an empty value means: do not send this header
                        self.send_header(name, value)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if headers.get("Connection") == "close":
                    self.close_connection = True
                try:
                    if route.trickle:
                        for i in range(len(body)):
                            self.wfile.write(body[i : i + 1])
                            self.wfile.flush()
                            time.sleep(route.trickle)
                    else:
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # type: ignore[method-assign]  # clients we cut off
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        """The absolute URL of a path on this server."""
        return f"http://{self.host}:{self.port}{path}"

    def serve(self, path: str, body: bytes | str | Callable[[], bytes] = b"", **kwargs: Any) -> str:
        """Serve `body` at `path`; return its URL."""
        self.routes[path] = Route(body=body.encode() if isinstance(body, str) else body, **kwargs)
        return self.url(path)

    def hits_for(self, path: str) -> list[Hit]:
        """Requests received for one path."""
        return [h for h in self.hits if h.path.split("?")[0] == path]

    def close(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FeedServer]:
    """A running local feed server."""
    srv = FeedServer()
    yield srv
    srv.close()


def rss(*items: dict[str, str], title: str = "Test Feed", link: str = "https://site.example/", extra: str = "") -> str:
    """An RSS 2.0 document; each item dict may have title, link, guid, description, pubDate."""
    parts = []
    for item in items:
        fields = "".join(f"<{k}>{v}</{k}>" if k != "guid" else f'<guid isPermaLink="false">{v}</guid>' for k, v in item.items())
        parts.append(f"<item>{fields}</item>")
    return (
        f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>{title}</title>'
        f"<link>{link}</link><description>test</description>{extra}{''.join(parts)}</channel></rss>"
    )


def story_item(n: int, *, words: str = "", day: int = 20, link_host: str = "news.example") -> dict[str, str]:
    """A distinct RSS item number n."""
    text = words or f"Story number {n} reports that the town of Exampleton held meeting {n} about item {n * 7}."
    return {
        "title": f"Story {n}",
        "link": f"https://{link_host}/story/{n}",
        "guid": f"story-{n}",
        "description": f"<p>{text}</p>",
        "pubDate": f"Fri, {day} Nov 2026 {n % 24:02d}:00:00 GMT",
    }


def write_config(
    directory: Path, sources: list[dict[str, Any]], *, outputs: str = "", extra: str = "", storage: str = "sqlite:///feeds.db"
) -> Path:
    """A config file in `directory` with the given sources; returns its path."""
    lines = [f"storage: {storage}", "publish_dir: public", "base_url: http://feeds.test/", extra, "sources:"]
    for source in sources:
        lines.append(f"  - name: {source['name']}")
        for key, value in source.items():
            if key != "name":
                lines.append(f"    {key}: {value}")
    if outputs:
        lines.append(textwrap.dedent(outputs))
    path = directory / "feeds.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def settings_for(directory: Path, sources: list[dict[str, Any]], **kwargs: Any) -> Settings:
    """Load the settings of a freshly written config."""
    return load_settings(write_config(directory, sources, **kwargs))


def wait_for(predicate: Callable[[], object], timeout: float = 30.0) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def run_feeds(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the `feeds` command as a user would (python -m feeds), capturing its output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "feeds", *args], check=False, cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def postgresql() -> Iterator[str]:
    """The DSN of a new, empty schema in the test PostgreSQL, dropped after the test."""
    if not POSTGRESQL:
        message = "needs PostgreSQL: set FEEDS_TEST_POSTGRESQL=postgresql://user@host:5432/db (.ci/run does)"
        if REQUIRE_POSTGRESQL:
            pytest.fail(message)
        pytest.skip(message)
    import psycopg

    schema = "feeds_test_" + secrets.token_hex(5)
    with psycopg.connect(POSTGRESQL, autocommit=True) as db:
        db.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{POSTGRESQL}{'&' if '?' in POSTGRESQL else '?'}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(POSTGRESQL, autocommit=True) as db:
            db.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A storage URL of each backend: a new SQLite file, a new PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feeds.db'}"
    url: str = request.getfixturevalue("postgresql")
    return url
