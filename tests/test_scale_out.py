"""Scaling out on PostgreSQL, end to end with the real CLI: worker processes share the sources,
and `feeds migrate` moves an installation from SQLite without readers noticing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, FeedServer, rss, run_feeds, story_item, write_config
from tests.test_dedupe import BODY

SOURCES = 300


def feeds(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "feeds", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def hosts() -> Iterator[list[FeedServer]]:
    """Three feed servers on three loopback addresses: three hosts, as politeness sees them."""
    servers = [FeedServer(f"127.0.0.{n}") for n in (2, 3, 4)]
    yield servers
    for server in servers:
        server.close()


def test_three_workers_poll_every_source_exactly_once(tmp_path: Path, hosts: list[FeedServer], postgresql: str) -> None:
    sources = []
    for i in range(SOURCES):
        server = hosts[i % len(hosts)]
        url = server.serve(f"/s{i}", rss(*(story_item(1000 * i + n) for n in range(3)), title=f"Outlet {i}"), delay=0.01)
        sources.append({"name": f"s{i}", "url": url})
    # Each worker takes one host at a time (a fetch window of 2 at 2 per host), so three share three hosts.
    extra = "fetch: {workers: 2, per_host: 2}"
    config = write_config(tmp_path, sources, storage="sqlite:///unused.db", extra=extra, outputs="outputs:\n  - {name: all, title: All}")
    # The DSN comes from the environment, as a deployment keeps its secrets out of the YAML.
    workers = [feeds("poll", "--json", "-c", str(config), env={"FEEDS_STORAGE": postgresql}) for _ in range(3)]
    results = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), [err[-2000:] for _, err in results]
    polled = [json.loads(out)["sources"] for out, _ in results]
    names = [o["source"] for outcomes in polled for o in outcomes]
    assert sorted(names) == sorted(s["name"] for s in sources)  # each source polled by exactly one worker
    assert sum(1 for outcomes in polled if outcomes) >= 2  # the work was shared, not taken by one
    hits = {f"/s{i}": len(hosts[i % len(hosts)].hits_for(f"/s{i}")) for i in range(SOURCES)}
    assert set(hits.values()) == {1}  # fetched exactly once in the cycle
    assert not (tmp_path / "unused.db").exists()
    counted = subprocess.run(
        [sys.executable, "-c", "import sys; from feeds.store import open_store; from pathlib import Path; "
         "s = open_store(sys.argv[1], base=Path()); print(sum(s.story_counts().values())); s.close()", postgresql],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert int(counted.stdout) == 3 * SOURCES  # no story lost, none stored twice


def test_per_host_politeness_holds_across_workers(tmp_path: Path, hosts: list[FeedServer], postgresql: str) -> None:
    sources = []
    for h, server in enumerate(hosts):
        for i in range(6):
            sources.append({"name": f"h{h}s{i}", "url": server.serve(f"/s{i}", rss(story_item(100 * h + i)), delay=0.3)})
    extra = "fetch: {per_host: 1, workers: 2}"  # each worker: two hosts at a time, one request each
    config = write_config(tmp_path, sources, storage="sqlite:///unused.db", extra=extra, outputs="outputs:\n  - {name: all, title: All}")
    workers = [feeds("poll", "--json", "-c", str(config), env={"FEEDS_STORAGE": postgresql}) for _ in range(3)]
    results = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), [err[-2000:] for _, err in results]
    polled = [{o["source"] for o in json.loads(out)["sources"]} for out, _ in results]
    assert sorted(n for names in polled for n in names) == sorted(s["name"] for s in sources)
    assert sum(1 for names in polled if names) >= 2  # shared
    for server in hosts:
        assert max(server.max_active.values()) == 1  # never two requests at once to one host, across three workers
        assert all(len(server.hits_for(f"/s{i}")) == 1 for i in range(6))
    for names in polled:  # each host was polled by one worker alone
        assert all({n[:2] for n in names}.isdisjoint({n[:2] for n in other}) for other in polled if other is not names)


def test_migrate_moves_an_installation_and_readers_see_no_change(tmp_path: Path, server: FeedServer, postgresql: str) -> None:
    wire = {"title": "Seawall approved", "description": f"<p>{BODY}</p>"}
    sources = [
        {"name": "a", "url": server.serve("/a", rss(story_item(1), {**wire, "link": "https://a.example/w", "guid": "a-w"}))},
        {"name": "b", "url": server.serve("/b", rss(story_item(2), {**wire, "link": "https://b.example/w", "guid": "b-w"}))},
    ]
    outputs = "outputs:\n  - {name: all, title: All}"
    old = tmp_path / "old"
    old.mkdir()
    config = write_config(old, sources, outputs=outputs)
    assert run_feeds("poll", "-c", str(config)).returncode == 0
    before = {p.name: p.read_bytes() for p in sorted((old / "public").glob("all.*"))}
    assert b"Seawall approved" in before["all.atom"]

    moved = run_feeds("migrate", "--from", f"sqlite:///{old / 'feeds.db'}", "--to", postgresql)
    assert moved.returncode == 0, moved.stderr
    assert "copied 4 stories" in moved.stdout
    again = run_feeds("migrate", "--from", f"sqlite:///{old / 'feeds.db'}", "--to", postgresql)
    assert again.returncode == 1 and "not empty" in again.stderr  # never merged into a used store

    new = tmp_path / "new"
    new.mkdir()
    config = write_config(new, sources, outputs=outputs, storage=postgresql)
    assert run_feeds("publish", "-c", str(config)).returncode == 0
    after = {p.name: p.read_bytes() for p in sorted((new / "public").glob("all.*"))}
    assert after == before  # the same entries, ids, leads and stamps, byte for byte
    polled = run_feeds("poll", "--force", "--json", "-c", str(config))
    assert {o["source"]: o["new"] for o in json.loads(polled.stdout)["sources"]} == {"a": 0, "b": 0}  # nothing is new again


def test_worker_and_publisher_daemons_on_different_nodes(tmp_path: Path, server: FeedServer, postgresql: str) -> None:
    import signal

    import psycopg
    import requests

    from tests.conftest import wait_for
    from tests.test_server import free_port

    sources = [{"name": "a", "url": server.serve("/a", rss(story_item(1))), "interval": "1m", "min_interval": "1m"}]
    nodes = {}
    for role in ("worker", "publisher"):
        (tmp_path / role).mkdir()
        nodes[role] = write_config(tmp_path / role, sources, storage=postgresql, extra="tick: 1s")
    port = free_port()
    publisher = feeds("run", "--role", "publisher", "--port", str(port), "-c", str(nodes["publisher"]))
    worker = feeds("run", "--role", "worker", "--no-serve", "-c", str(nodes["worker"]))
    try:

        def served() -> bytes:
            try:
                return requests.get(f"http://127.0.0.1:{port}/all.atom", timeout=5).content
            except requests.RequestException:
                return b""

        assert wait_for(lambda: b"Story 1" in served())  # polled by the worker, published by the publisher
        server.serve("/a", rss(story_item(1), story_item(2)))
        run_feeds("sources", "reset", "a", "-c", str(nodes["worker"]))
        assert wait_for(lambda: b"Story 2" in served())
        assert not (tmp_path / "worker" / "public" / "all.atom").exists()  # a worker publishes nothing
    finally:
        for process in (worker, publisher):
            process.send_signal(signal.SIGTERM)
        outputs = [p.communicate(timeout=60) for p in (worker, publisher)]
    assert worker.returncode == 0 and publisher.returncode == 0, [err[-2000:] for _, err in outputs]
    with psycopg.connect(postgresql) as db:
        assert db.execute("SELECT COUNT(*) FROM sources WHERE claimed_by IS NOT NULL").fetchone() == (0,)  # released on shutdown


def test_a_worker_killed_mid_cycle_loses_its_sources_when_the_lease_ends(tmp_path: Path, server: FeedServer, postgresql: str) -> None:
    import signal
    import time

    from tests.conftest import wait_for

    sources = [{"name": f"s{i}", "url": server.serve(f"/s{i}", rss(story_item(i)), delay=3.0)} for i in range(8)]
    config = write_config(tmp_path, sources, storage=postgresql, extra="lease: 4s")
    doomed = feeds("poll", "--json", "-c", str(config))
    assert wait_for(lambda: len(server.hits) >= 2, timeout=30)  # it has claimed its sources and is fetching
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate(timeout=30)
    killed_at = time.monotonic()
    during = json.loads(run_feeds("poll", "--json", "-c", str(config)).stdout)["sources"]
    if time.monotonic() - killed_at < 4:
        assert during == []  # still the dead worker's: nobody polls them twice
    time.sleep(max(0.0, 4.5 - (time.monotonic() - killed_at)))
    after = json.loads(run_feeds("poll", "--json", "-c", str(config)).stdout)["sources"]
    taken_over = during + after
    assert sorted(o["source"] for o in taken_over) == sorted(s["name"] for s in sources)  # once the lease ended, once each
    assert all(o["new"] == 1 for o in taken_over)
