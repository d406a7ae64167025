"""The fetcher against a real local HTTP server: politeness, caps, redirects, failures as data."""

from __future__ import annotations

import gzip
import socket
import time
import tracemalloc
from dataclasses import replace

from feeds import USER_AGENT
from feeds.fetch import Fetcher
from feeds.models import FetchSettings, SourceState
from tests.conftest import FeedServer, rss, story_item


def state(url: str, **kwargs: object) -> SourceState:
    return replace(SourceState(name="src", url=url, configured_url=url), **kwargs)  # type: ignore[arg-type]


def test_sends_user_agent_validators_and_no_cookies(server: FeedServer) -> None:
    url = server.serve(
        "/feed",
        rss(story_item(1)),
        etag='"abc"',
        headers={"Set-Cookie": "track=1; Path=/", "Last-Modified": "Tue, 24 Nov 2026 10:00:00 GMT"},
    )
    fetcher = Fetcher()
    first = fetcher.fetch(state(url))
    assert first.status == 200 and first.header("etag") == '"abc"' and b"Story 1" in first.body
    second = fetcher.fetch(state(url, etag='"abc"', last_modified="Tue, 24 Nov 2026 10:00:00 GMT"))
    assert second.status == 304 and second.body == b""
    hits = server.hits_for("/feed")
    assert hits[0].headers["user-agent"] == USER_AGENT and "feeds/" in USER_AGENT
    assert hits[1].headers["if-none-match"] == '"abc"'
    assert hits[1].headers["if-modified-since"] == "Tue, 24 Nov 2026 10:00:00 GMT"
    assert all("cookie" not in h.headers and "referer" not in h.headers for h in hits)


def test_http_errors_and_transport_failures_are_results(server: FeedServer) -> None:
    fetcher = Fetcher(FetchSettings(connect_timeout=2, read_timeout=2))
    assert fetcher.fetch(state(server.url("/missing"))).status == 404
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    refused = fetcher.fetch(state(f"http://127.0.0.1:{closed}/feed"))
    assert refused.status is None and "connection refused" in (refused.error or "")

    def no_dns(host: str) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    unresolvable = Fetcher(resolver=no_dns).fetch(state("http://feeds.invalid/feed"))
    assert unresolvable.status is None and "cannot resolve host feeds.invalid" in (unresolvable.error or "")
    missing = fetcher.fetch(state("file:///nonexistent/feed.xml"))
    assert missing.status is None and "file not found" in (missing.error or "")


def test_slow_and_trickling_servers_are_cut_off(server: FeedServer) -> None:
    fetcher = Fetcher(FetchSettings(connect_timeout=1, read_timeout=1))
    server.serve("/slow", rss(story_item(1)), delay=3)
    started = time.monotonic()
    slow = fetcher.fetch(state(server.url("/slow")))
    assert slow.status is None and "timed out" in (slow.error or "")
    server.serve("/trickle", "x" * 100, trickle=0.1)
    trickle = fetcher.fetch(state(server.url("/trickle")))
    assert trickle.status is None and "longer than" in (trickle.error or "")
    assert time.monotonic() - started < 8


def test_wire_and_decompressed_caps(server: FeedServer) -> None:
    fetcher = Fetcher(FetchSettings(max_wire_bytes=100_000, max_body_bytes=1_000_000))
    server.serve("/huge", b"x" * 500_000)
    huge = fetcher.fetch(state(server.url("/huge")))
    assert huge.status is None and "100000-byte cap" in (huge.error or "")
    bomb = gzip.compress(b"\0" * 200_000_000, compresslevel=9)  # ~200 KB on the wire
    assert len(bomb) < 300_000
    server.serve("/bomb", bomb, headers={"Content-Encoding": "gzip"})
    big_wire = Fetcher(FetchSettings(max_wire_bytes=1_000_000, max_body_bytes=1_000_000))
    tracemalloc.start()
    result = big_wire.fetch(state(server.url("/bomb")))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert result.status is None and "decompressed body is over the 1000000-byte cap" in (result.error or "")
    assert peak < 20_000_000, peak


def test_gzip_bodies_are_decompressed(server: FeedServer) -> None:
    server.serve("/gz", gzip.compress(rss(story_item(2)).encode()), headers={"Content-Encoding": "gzip"})
    result = Fetcher().fetch(state(server.url("/gz")))
    assert result.status == 200 and b"Story 2" in result.body


def test_redirects_permanent_temporary_loops_and_chains(server: FeedServer) -> None:
    server.serve("/new", rss(story_item(3)))
    server.serve("/old", status=301, headers={"Location": "/new"})
    server.serve("/tmp", status=302, headers={"Location": "/new"})
    server.serve("/mixed", status=301, headers={"Location": "/tmp"})
    fetcher = Fetcher(FetchSettings(max_redirects=3))
    moved = fetcher.fetch(state(server.url("/old")))
    assert moved.status == 200 and moved.permanent_redirect == server.url("/new") and moved.final_url == server.url("/new")
    temporary = fetcher.fetch(state(server.url("/tmp")))
    assert temporary.status == 200 and temporary.permanent_redirect is None
    assert fetcher.fetch(state(server.url("/mixed"))).permanent_redirect is None
    server.serve("/loop-a", status=302, headers={"Location": "/loop-b"})
    server.serve("/loop-b", status=302, headers={"Location": "/loop-a"})
    loop = fetcher.fetch(state(server.url("/loop-a")))
    assert loop.status is None and "redirect loop" in (loop.error or "")
    for i in range(6):
        server.serve(f"/chain{i}", status=302, headers={"Location": f"/chain{i + 1}"})
    chain = fetcher.fetch(state(server.url("/chain0")))
    assert chain.status is None and "more than 3 redirects" in (chain.error or "")
