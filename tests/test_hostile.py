"""A hostile farm on real sockets: how feeds polls and survives sources that misbehave."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import feedparser

from feeds.fetch import Fetcher
from feeds.poll import poll_due
from feeds.store import open_store
from tests.conftest import NOW, ROOT, FeedServer, rss, settings_for, story_item, write_config
from tests.test_poll import poll

BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY lol "lol">'
    + "".join(f'<!ENTITY lol{i} "{("&lol%s;" % (i - 1 if i > 1 else "")) * 10}">' for i in range(1, 10))
    + ']><rss version="2.0"><channel><title>t</title><item><title>&lol9;</title><link>https://x.example/1</link>'
    "<guid>lol</guid></item></channel></rss>"
)
XXE = (
    '<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><rss version="2.0"><channel>'
    "<title>t</title><item><title>x&xxe;y</title><description>&xxe;</description><link>https://x.example/2</link></item></channel></rss>"
)


def test_per_host_limit_and_a_slow_host_does_not_starve_others(tmp_path: Path, server: FeedServer) -> None:
    sources = []
    for i in range(6):
        sources.append({"name": f"slow{i}", "url": server.serve(f"/slow{i}", rss(story_item(i)), delay=0.6)})
    for i in range(2):
        server.serve(f"/fast{i}", rss(story_item(10 + i)))
        sources.append({"name": f"fast{i}", "url": f"http://localhost:{server.port}/fast{i}"})
    settings = settings_for(tmp_path, sources, extra="fetch: {workers: 8, per_host: 2}")
    started = time.monotonic()
    outcomes, counts, _ = poll(settings)
    elapsed = time.monotonic() - started
    assert all(o.status == "ok" for o in outcomes.values()) and len(counts) == 8
    assert server.max_active[f"127.0.0.1:{server.port}"] == 2  # never more than 2 in flight to one host
    assert elapsed >= 1.8  # 6 slow requests, 2 at a time, 0.6 s each
    slow_done = sorted(h.at for h in server.hits if h.path.startswith("/slow"))
    fast_done = [h.at for h in server.hits if h.path.startswith("/fast")]
    assert max(fast_done) < slow_done[-1] - 0.5  # the other host was served while the slow one queued


def test_entity_expansion_and_external_entities_are_neutralized(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/lol", BILLION_LAUGHS)
    server.serve("/xxe", XXE)
    settings = settings_for(tmp_path, [{"name": "lol", "url": server.url("/lol")}, {"name": "xxe", "url": server.url("/xxe")}])
    started = time.monotonic()
    outcomes, _, states = poll(settings)
    assert time.monotonic() - started < 5
    for name in ("lol", "xxe"):
        assert outcomes[name].status == "ok"
        assert "DTD entity declarations ignored" in (states[name].warning or "")
    atom = (tmp_path / "public" / "all.atom").read_text()
    assert "lollol" not in atom and "root:" not in atom


def test_guid_rotation_does_not_duplicate(tmp_path: Path, server: FeedServer) -> None:
    items = [story_item(i) for i in range(5)]
    server.serve("/feed", rss(*items))
    settings = settings_for(tmp_path, [{"name": "a", "url": server.url("/feed")}])
    poll(settings)
    rotated = [{**item, "guid": f"rotated-{item['guid']}"} for item in items]
    server.serve("/feed", rss(*rotated))
    outcomes, counts, _ = poll(settings, now=NOW + timedelta(hours=1))
    assert outcomes["a"].new == 0 and counts == {"a": 5}
    parsed = feedparser.parse((tmp_path / "public" / "all.atom").read_bytes())
    assert len(parsed.entries) == 5
    server.serve("/feed", rss(*rotated, story_item(99)))  # later polls: the rotated ids are known
    outcomes, counts, _ = poll(settings, now=NOW + timedelta(hours=2))
    assert outcomes["a"].new == 1 and counts == {"a": 6}


def test_intermittent_errors_back_off_then_recover(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/flaky", "boom", status=500)
    settings = settings_for(tmp_path, [{"name": "flaky", "url": server.url("/flaky"), "interval": "10m"}])
    store = open_store(settings.storage, base=tmp_path)
    fetcher = Fetcher(settings.fetch)
    now, waits = NOW, []
    try:
        for _ in range(4):
            poll_due(settings, store, fetcher, now=now)
            state = store.states()["flaky"]
            assert state.next_poll is not None
            waits.append(state.next_poll - now)
            now = state.next_poll
        assert waits == sorted(waits) and waits[-1] >= 4 * waits[0]
        assert state.failures == 4 and state.failing_since == NOW
        server.serve("/flaky", rss(story_item(1)))
        poll_due(settings, store, fetcher, now=now)
        state = store.states()["flaky"]
        assert state.status == "ok" and state.failures == 0 and store.story_counts() == {"flaky": 1}
    finally:
        fetcher.close()
        store.close()


def test_no_request_inside_a_retry_after_window(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/busy", "slow down", status=429, headers={"Retry-After": "7200"})
    settings = settings_for(tmp_path, [{"name": "busy", "url": server.url("/busy"), "interval": "5m"}])
    store = open_store(settings.storage, base=tmp_path)
    fetcher = Fetcher(settings.fetch)
    try:
        poll_due(settings, store, fetcher, now=NOW)
        for minutes in range(5, 120, 5):  # every 5 minutes for two hours, forced
            poll_due(settings, store, fetcher, now=NOW + timedelta(minutes=minutes), force=True)
        assert len(server.hits_for("/busy")) == 1
        server.serve("/busy", rss(story_item(1)))
        poll_due(settings, store, fetcher, now=NOW + timedelta(hours=2, minutes=1))
        assert len(server.hits_for("/busy")) == 2 and store.story_counts() == {"busy": 1}
    finally:
        fetcher.close()
        store.close()


def test_permanent_redirect_is_followed_then_stored_once_confirmed(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/new", rss(story_item(1)))
    server.serve("/old", status=301, headers={"Location": "/new"})
    server.serve("/temp", status=302, headers={"Location": "/new"})
    settings = settings_for(tmp_path, [{"name": "moved", "url": server.url("/old")}, {"name": "temp", "url": server.url("/temp")}])
    for hour in range(3):
        _, _, states = poll(settings, now=NOW + timedelta(hours=hour))
    assert len(server.hits_for("/old")) == 2  # seen twice, then the new URL is used directly
    assert states["moved"].url == server.url("/new") and states["moved"].moved_from == server.url("/old")
    assert len(server.hits_for("/temp")) == 3 and states["temp"].url == server.url("/temp")


def test_kill_9_at_random_points_loses_and_duplicates_nothing(tmp_path: Path, server: FeedServer) -> None:
    rng = random.Random(20261125)
    sources = []
    for s in range(16):
        items = [
            {
                "title": f"Source {s} item {i}",
                "link": f"https://s{s}.example/{i}",
                "guid": f"s{s}-{i}",
                "description": f"<p>Report {i} from outlet {s}: "
                + " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "omega", "sigma"]) + str(rng.randint(0, 9999)) for _ in range(30))
                + "</p>",
                "pubDate": f"Fri, 20 Nov 2026 {i % 24:02d}:{s:02d}:00 GMT",
            }
            for i in range(40)
        ]
        sources.append({"name": f"s{s}", "url": server.serve(f"/s{s}", rss(*items), delay=rng.uniform(0.05, 0.3))})
    config = write_config(tmp_path, sources, extra="tick: 1s\nfetch: {workers: 4, per_host: 4}")
    atom = tmp_path / "public" / "all.atom"
    for run in range(6):
        verb = ["poll", "--force"] if run % 2 else ["run", "--no-serve"]  # the daemon and cron alike
        process = subprocess.Popen(
            [sys.executable, "-m", "feeds", *verb, "-q", "-c", str(config)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.3, 2.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
        with sqlite3.connect(tmp_path / "feeds.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert db.execute("SELECT COUNT(*), COUNT(DISTINCT source || '/' || guid) FROM stories").fetchone()[0] <= 640
        if atom.exists():
            parsed = feedparser.parse(atom.read_bytes())
            assert not parsed.bozo and len({e.id for e in parsed.entries}) == len(parsed.entries)
    result = subprocess.run(
        [sys.executable, "-m", "feeds", "poll", "--force", "--json", "-c", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(tmp_path / "feeds.db") as db:
        total, distinct = db.execute("SELECT COUNT(*), COUNT(DISTINCT source || '/' || guid) FROM stories").fetchone()
    assert total == distinct == 640  # nothing lost, nothing twice
    assert json.loads(result.stdout)["sources"]
    parsed = feedparser.parse(atom.read_bytes())
    assert not parsed.bozo and len(parsed.entries) == 100 and len({e.id for e in parsed.entries}) == 100
