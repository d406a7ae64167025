"""Published outputs: valid Atom 1.0 (RFC 4287), RSS 2.0 and JSON Feed 1.1, read by real consumers;
written atomically and only when their bytes change."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
from datetime import timedelta
from pathlib import Path

import feedparser
import pytest
from lxml import etree
from reader import make_reader

from feeds.errors import PublishError
from feeds.publish import write_atomic
from tests.conftest import NOW, FeedServer, rss, run_feeds, settings_for, story_item, write_config
from tests.test_poll import poll

A = "{http://www.w3.org/2005/Atom}"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


@pytest.fixture
def published(tmp_path: Path, server: FeedServer) -> Path:
    wire = {**story_item(1), "description": "<p>" + "The wire story text about the harbour council vote. " * 5 + "</p>"}
    copy = {
        **wire,
        "guid": "b-1",
        "title": "Outlet B's take",
        "link": "https://b.example/copy-of-1",
        "pubDate": "Fri, 20 Nov 2026 03:00:00 GMT",
    }
    no_link = {"title": "No link, no text", "guid": "bare"}
    server.serve("/a", rss(wire, story_item(2), title="Outlet A", link="https://a.example/"))
    server.serve("/b", rss(copy, no_link, {**story_item(3), "author": "reporter@b.example (Rita Reporter)"}, title="Outlet B"))
    settings = settings_for(
        tmp_path,
        [{"name": "a", "url": server.url("/a"), "tags": "[wire]"}, {"name": "b", "url": server.url("/b")}],
        outputs="outputs:\n  - {name: all, title: Everything}\n  - {name: wire, title: Wire only, include: {tags: [wire]}}\n",
    )
    poll(settings)
    return tmp_path / "public"


def test_atom_satisfies_rfc4287(published: Path) -> None:
    root = etree.fromstring((published / "all.atom").read_bytes())
    assert root.tag == f"{A}feed"
    for name in ("id", "title", "updated"):
        assert len(root.findall(f"{A}{name}")) == 1, name
    assert [lk.get("href") for lk in root.findall(f"{A}link") if lk.get("rel") == "self"] == ["http://feeds.test/all.atom"]
    entries = root.findall(f"{A}entry")
    assert len(entries) == 4  # 1+2 merged, 2, 3, the bare one
    ids = [e.findtext(f"{A}id") for e in entries]
    assert len(set(ids)) == len(ids)
    newest = max(e.findtext(f"{A}updated") for e in entries)
    assert root.findtext(f"{A}updated") == newest  # last updated = newest entry, not render time
    for entry in entries:
        for name in ("id", "title", "updated"):
            assert len(entry.findall(f"{A}{name}")) == 1, name
        assert entry.findall(f"{A}author/{A}name"), "every entry has an author"
        assert entry.find(f"{A}content") is not None or entry.find(f"{A}link[@rel='alternate']") is not None
        for stamp in entry.iter(f"{A}updated", f"{A}published"):
            assert RFC3339.match(stamp.text or ""), stamp.text
        source = entry.find(f"{A}source")
        assert source is not None
        for name in ("id", "title", "updated"):
            assert source.findtext(f"{A}{name}"), name
        assert source.find(f"{A}link[@rel='self']") is not None
    merged = next(e for e in entries if e.findtext(f"{A}title") == "Story 1")
    via = merged.findall(f"{A}link[@rel='via']")
    assert [(v.get("href"), v.get("title")) for v in via] == [("https://b.example/copy-of-1", "Outlet B")]
    assert "Also reported by" in (merged.findtext(f"{A}content") or "")


def test_real_consumers_read_every_format(published: Path) -> None:
    for fmt in ("atom", "rss"):
        parsed = feedparser.parse((published / f"all.{fmt}").read_bytes())
        assert not parsed.bozo, (fmt, parsed.get("bozo_exception"))
        assert len(parsed.entries) == 4
        assert len({e.id for e in parsed.entries}) == 4
    data = json.loads((published / "all.json").read_text())
    assert data["version"] == "https://jsonfeed.org/version/1.1" and data["feed_url"] == "http://feeds.test/all.json"
    assert len(data["items"]) == 4 and all(item["id"] and "content_html" in item for item in data["items"])
    merged = next(i for i in data["items"] if i["title"] == "Story 1")
    assert merged["_feeds"]["via"] == [{"source": "Outlet B", "url": "https://b.example/copy-of-1"}]
    wire = feedparser.parse((published / "wire.atom").read_bytes())
    assert sorted(e.title for e in wire.entries) == ["Story 1", "Story 2"]


def test_lemon24_reader_subscribes_over_http(published: Path, server: FeedServer, tmp_path: Path) -> None:
    server.serve("/all.atom", (published / "all.atom").read_bytes(), content_type="application/atom+xml", etag='"x"')
    subscriber = make_reader(str(tmp_path / "reader.sqlite"))
    subscriber.add_feed(server.url("/all.atom"))
    subscriber.update_feeds()
    titles = sorted(e.title for e in subscriber.get_entries())
    assert titles == ["No link, no text", "Story 1", "Story 2", "Story 3"]
    subscriber.update_feed(server.url("/all.atom"))
    hits = server.hits_for("/all.atom")
    assert len(hits) == 2 and hits[1].headers.get("if-none-match") == '"x"'  # the second fetch is conditional
    subscriber.close()


def test_outputs_rewritten_only_when_bytes_change(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/a", rss(story_item(1)))
    settings = settings_for(tmp_path, [{"name": "a", "url": server.url("/a")}])
    poll(settings)
    path = tmp_path / "public" / "all.atom"
    os.utime(path, (1_000_000, 1_000_000))
    poll(settings, now=NOW + timedelta(hours=1))
    assert path.stat().st_mtime == 1_000_000
    server.serve("/a", rss(story_item(1), story_item(2)))
    poll(settings, now=NOW + timedelta(hours=2))
    assert path.stat().st_mtime != 1_000_000
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_write_atomic_and_errors_that_name_the_path(tmp_path: Path) -> None:
    target = tmp_path / "out.atom"
    assert write_atomic(target, b"one") and not write_atomic(target, b"one") and target.read_bytes() == b"one"
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    blocked = tmp_path / "blocked.atom"
    blocked.mkdir()  # a directory where the output file should be: even root cannot replace it
    with pytest.raises(PublishError, match=str(blocked)):
        write_atomic(blocked, b"x")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_stale_temp_files_of_killed_writers_are_removed(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/a", rss(story_item(1)))
    settings = settings_for(tmp_path, [{"name": "a", "url": server.url("/a")}])
    public = tmp_path / "public"
    public.mkdir()
    stale, fresh = public / ".all.atom.old.tmp", public / ".all.atom.new.tmp"
    for path in (stale, fresh):
        path.write_bytes(b"<feed")
    old = NOW.timestamp() - 3600
    os.utime(stale, (old, old))
    os.utime(fresh, (NOW.timestamp(), NOW.timestamp()))
    poll(settings)
    assert not stale.exists() and fresh.exists()


def test_unusable_publish_dir_and_database_get_one_line_errors(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/a", rss(story_item(1)))
    (tmp_path / "afile").write_text("not a directory")
    config = write_config(tmp_path, [{"name": "a", "url": server.url("/a")}], extra="publish_dir: afile/public")
    config.write_text(config.read_text().replace("publish_dir: public\n", ""))
    result = run_feeds("poll", "-c", str(config))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"feeds: {tmp_path / 'afile' / 'public'}: cannot create the publish directory")
    config.write_text(config.read_text().replace("storage: sqlite:///feeds.db", "storage: sqlite:///no/such/dir/feeds.db"))
    result = run_feeds("poll", "-c", str(config))
    assert result.returncode == 2 and f"{tmp_path / 'no/such/dir/feeds.db'}: cannot open the database" in result.stderr


def test_failing_sources_surface_in_outputs_that_opt_in(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/ok", rss(story_item(1)))
    server.serve("/down", "boom", status=500)
    settings = settings_for(
        tmp_path,
        [{"name": "ok", "url": server.url("/ok")}, {"name": "down", "url": server.url("/down"), "title": "Down Town"}],
        outputs="outputs:\n  - {name: all, title: All}\n  - {name: watched, title: Watched, report_failures: 1h}\n",
    )
    poll(settings)
    poll(settings, now=NOW + timedelta(minutes=30))
    assert "failing" not in (tmp_path / "public" / "watched.atom").read_text()  # not failing long enough yet
    poll(settings, now=NOW + timedelta(hours=2))
    watched = feedparser.parse((tmp_path / "public" / "watched.atom").read_bytes())
    alert = watched.entries[0]
    assert alert.title == "Source Down Town has been failing since 2026-11-25 12:00 UTC"
    assert "HTTP 500" in alert.content[0].value and alert.id == f"urn:feeds:failing:down:{int(NOW.timestamp())}"
    assert not watched.bozo and "Story 1" in [e.title for e in watched.entries]
    assert "failing" not in (tmp_path / "public" / "all.atom").read_text()  # only outputs that opt in
    server.serve("/down", rss(story_item(2)))
    poll(settings, now=NOW + timedelta(hours=3))
    assert "failing" not in (tmp_path / "public" / "watched.atom").read_text()  # recovered: the entry goes


def test_readers_show_the_outlet_of_every_entry_in_every_format(tmp_path: Path, server: FeedServer) -> None:
    bylined = {**story_item(1), "author": "ines@wire.example (Ines Calder)"}
    bylined_rss = (
        rss(bylined, title="Meridian Wire")
        .replace("<author>ines@wire.example (Ines Calder)</author>", "<dc:creator>Ines Calder</dc:creator>")
        .replace('<rss version="2.0">', '<rss version="2.0" xmlns:dc="http://purl.org/dc/elements/1.1/">')
    )
    server.serve("/wire", bylined_rss)
    server.serve("/blog", rss(story_item(2), title="Town Blog"))
    settings = settings_for(tmp_path, [{"name": "wire", "url": server.url("/wire")}, {"name": "blog", "url": server.url("/blog")}])
    poll(settings)
    public = tmp_path / "public"
    expected = {"Story 1": "Ines Calder, Meridian Wire", "Story 2": "Town Blog"}
    for fmt in ("atom", "rss"):  # feedparser reads Atom author/name and RSS dc:creator
        entries = feedparser.parse((public / f"all.{fmt}").read_bytes()).entries
        assert {e.title: e.author for e in entries} == expected, fmt
    items = json.loads((public / "all.json").read_text())["items"]
    assert {i["title"]: i["authors"][0]["name"] for i in items} == expected
    for fmt, media in (("rss", "application/rss+xml"), ("atom", "application/atom+xml")):  # lemon24's reader
        server.serve(f"/out.{fmt}", (public / f"all.{fmt}").read_bytes(), content_type=media)
        subscriber = make_reader(str(tmp_path / f"reader-{fmt}.sqlite"))
        subscriber.add_feed(server.url(f"/out.{fmt}"))
        subscriber.update_feeds()
        assert {e.title: e.authors_str for e in subscriber.get_entries()} == expected, fmt
        subscriber.close()


def newsboat(tmp_path: Path, urls: list[str]) -> list[tuple[str, str, str]]:
    """Subscribe newsboat (the terminal reader) to `urls`, reload once, and read what it stored:
    (feed URL, title, author) per article."""
    home = tmp_path / f"newsboat-{len(list(tmp_path.glob('newsboat-*')))}"
    home.mkdir()
    (home / "urls").write_text("\n".join(urls) + "\n")
    (home / "config").write_text("")
    result = subprocess.run(
        ["newsboat", "-u", str(home / "urls"), "-c", str(home / "cache.db"), "-C", str(home / "config"), "-x", "reload"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(home)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(home / "cache.db") as db:
        return sorted(db.execute("SELECT feedurl, title, author FROM rss_item"))


@pytest.mark.skipif(shutil.which("newsboat") is None, reason="needs Debian's newsboat (.ci/run installs it)")
def test_newsboat_shows_the_outlet_and_keeps_one_copy_of_a_story_in_two_outputs(tmp_path: Path, server: FeedServer) -> None:
    bylined = {**story_item(1), "author": "ines@wire.example (Ines Calder)"}
    server.serve("/wire", rss(bylined, title="Meridian Wire"))
    server.serve("/blog", rss(story_item(2), title="Town Blog"))
    settings = settings_for(
        tmp_path,
        [{"name": "wire", "url": server.url("/wire"), "tags": "[news]"}, {"name": "blog", "url": server.url("/blog")}],
        outputs="outputs:\n  - {name: all, title: All}\n  - {name: news, title: News, include: {tags: [news]}}\n",
    )
    poll(settings)
    public = tmp_path / "public"
    for name in ("all.rss", "all.atom", "news.rss"):
        server.serve(f"/out/{name}", (public / name).read_bytes(), content_type="application/xml")
    for fmt in ("rss", "atom"):
        stored = newsboat(tmp_path, [server.url(f"/out/all.{fmt}")])
        assert [(title, author) for _, title, author in stored] == [("Story 1", "Ines Calder, Meridian Wire"), ("Story 2", "Town Blog")]
    # Entry ids are the same in every output (one story, one id): newsboat keeps one article per
    # id, so a story in two subscribed outputs is listed once, under one of them (README: Outputs).
    both = newsboat(tmp_path, [server.url("/out/all.rss"), server.url("/out/news.rss")])
    assert sorted(title for _, title, _ in both) == ["Story 1", "Story 2"]
