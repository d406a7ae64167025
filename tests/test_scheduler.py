"""The daemon's tick: never raises, reports failures in health, retries a failed publish."""

from __future__ import annotations

import shutil
from pathlib import Path

from feeds.fetch import Fetcher
from feeds.scheduler import Daemon
from feeds.store import open_store
from tests.conftest import NOW, FeedServer, rss, settings_for, story_item


def test_failed_publish_makes_the_daemon_unhealthy_and_is_retried(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/feed", rss(story_item(1)))
    settings = settings_for(tmp_path, [{"name": "a", "url": server.url("/feed")}])
    store = open_store(settings.storage, base=tmp_path)
    fetcher = Fetcher(settings.fetch)
    clock = [NOW]
    daemon = Daemon(settings, store, fetcher, clock=lambda: clock[0])
    public = tmp_path / "public"
    public.write_text("a file where the publish directory should be")
    try:
        daemon._scheduler.start(paused=True)  # running, so health judges the ticks
        daemon.tick()
        healthy, payload = daemon.health()
        assert not healthy and "cannot create the publish directory" in (payload["error"] or "")
        assert store.story_counts() == {"a": 1}  # the story is stored even though publishing failed
        public.unlink()
        daemon.tick()  # nothing new to poll, but the pending publish is retried
        assert b"Story 1" in (public / "all.atom").read_bytes()
        healthy, payload = daemon.health()
        assert healthy and payload["error"] is None and payload["sources"]["a"]["status"] == "ok"
    finally:
        daemon._scheduler.shutdown(wait=False)
        fetcher.close()
        store.close()
        shutil.rmtree(public, ignore_errors=True)


def test_missing_or_damaged_outputs_are_written_again_and_health_says_so(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/feed", rss(story_item(1)))
    settings = settings_for(tmp_path, [{"name": "a", "url": server.url("/feed")}])
    store = open_store(settings.storage, base=tmp_path)
    fetcher = Fetcher(settings.fetch)
    daemon = Daemon(settings, store, fetcher, clock=lambda: NOW)
    public = tmp_path / "public"
    try:
        daemon._scheduler.start(paused=True)
        daemon.tick()
        atom = public / "all.atom"
        good = atom.read_bytes()
        healthy, payload = daemon.health()
        assert healthy and payload["repaired"] is None
        atom.write_bytes(good[: len(good) // 2])  # truncated behind the daemon's back
        daemon.tick()  # nothing new to poll: the damage alone makes it publish
        assert atom.read_bytes() == good
        healthy, payload = daemon.health()
        assert healthy and payload["repaired"]["outputs"] == ["all"]
        shutil.rmtree(public)  # the whole directory gone
        daemon.tick()
        assert atom.read_bytes() == good and (public / "all.json").is_file()
        before = atom.stat().st_mtime_ns
        daemon.tick()  # intact files: nothing is written
        assert atom.stat().st_mtime_ns == before
    finally:
        daemon._scheduler.shutdown(wait=False)
        fetcher.close()
        store.close()
