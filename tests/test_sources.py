"""Managing sources through the CLI as a user does: init, add (with discovery), remove, list,
OPML import and export; every edit keeps the config's comments and is all or nothing."""

from __future__ import annotations

import json
from pathlib import Path

import feedparser

from tests.conftest import FeedServer, rss, run_feeds, story_item

CONFIG = """\
# my feeds: comments, order and style must survive every edit
storage: sqlite:///feeds.db
publish_dir: public

sources:
  - name: first            # the first one
    url: {url}
    tags: [news]

outputs:
  - name: all
    title: All stories
"""

PAGE = """<!doctype html><html><head><title>Site</title>
<link rel="alternate" type="application/rss+xml" title="Site news" href="/news.xml">
<link rel="alternate" type="application/atom+xml" title="Site blog" href="blog.atom">
<link rel="stylesheet" href="/style.css">
</head><body>hello</body></html>"""

ATOM = """<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom"><title>The Blog</title>
<id>urn:blog</id><updated>2026-11-20T10:00:00Z</updated></feed>"""


def config_with(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "feeds.yaml"
    path.write_text(CONFIG.format(url=url))
    return path


def test_init_writes_a_working_starter_and_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "site"
    made = run_feeds("init", str(target))
    assert made.returncode == 0 and "feeds.yaml" in made.stdout
    config = target / "feeds.yaml"
    assert "#" in config.read_text() and (target / "samples" / "wire.xml").is_file()
    assert run_feeds("check", "-c", str(config)).returncode == 0
    assert run_feeds("poll", "-c", str(config)).returncode == 0
    entries = feedparser.parse((target / "public" / "all.atom").read_bytes()).entries
    # The samples show what feeds does: the wire's story and a local paper's own take are one
    # entry (two independent reports); the local output carries only the local source's.
    assert len(entries) == 2 and any("2 independent reports" in e.content[0].value for e in entries)
    assert len(feedparser.parse((target / "public" / "local.atom").read_bytes()).entries) == 1
    before = config.read_text()
    again = run_feeds("init", str(target))
    assert again.returncode == 2 and "never overwrites" in again.stderr and config.read_text() == before


def test_add_discovers_the_feeds_a_page_names(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/page", PAGE, content_type="text/html; charset=utf-8")
    server.serve("/news.xml", rss(story_item(1), title="Site News"))
    server.serve("/blog.atom", ATOM, content_type="application/atom+xml")
    server.serve("/first.xml", rss(story_item(2), title="First"))
    config = config_with(tmp_path, server.url("/first.xml"))
    # Two feeds and no terminal to ask at: list them, add nothing.
    listed = run_feeds("sources", "add", server.url("/page"), "-c", str(config))
    assert listed.returncode == 2 and "--pick" in listed.stderr
    assert "1. Site News" in listed.stdout and "2. The Blog" in listed.stdout
    assert config.read_text() == CONFIG.format(url=server.url("/first.xml"))
    added = run_feeds("sources", "add", server.url("/page"), "--pick", "2", "--tags", "blogs,Tech", "-c", str(config))
    assert added.returncode == 0, added.stderr
    text = config.read_text()
    assert "# my feeds: comments" in text and "# the first one" in text  # comments kept
    assert f"  - name: the-blog\n    url: {server.url('/blog.atom')}\n    tags: [blogs, tech]\n" in text  # name from the title
    assert text.index("the-blog") < text.index("outputs:")  # in the list, before what follows it
    assert run_feeds("check", "-c", str(config)).returncode == 0
    again = run_feeds("sources", "add", server.url("/blog.atom"), "-c", str(config))
    assert again.returncode == 2 and "already a source" in again.stderr


def test_add_a_feed_directly_or_a_page_without_one(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/first.xml", rss(story_item(2), title="First"))
    server.serve("/direct.xml", rss(story_item(3), title="Direct Feed"))
    server.serve("/plain", "<html><head><title>No feeds here</title></head><body>x</body></html>", content_type="text/html")
    config = config_with(tmp_path, server.url("/first.xml"))
    done = run_feeds("sources", "add", server.url("/direct.xml"), "--name", "direct", "--title", "My Title", "-c", str(config))
    assert done.returncode == 0 and "added direct" in done.stdout
    assert "    title: My Title\n" in config.read_text()
    before = config.read_text()
    missing = run_feeds("sources", "add", server.url("/plain"), "-c", str(config))
    assert missing.returncode == 2 and "no feed found" in missing.stderr and len(missing.stderr.splitlines()) == 1
    assert server.hits_for("/feed")  # the common paths were tried
    bad = run_feeds("sources", "add", "ftp://example.org/feed", "-c", str(config))
    assert bad.returncode == 2 and "not an http(s) URL or a file path" in bad.stderr
    assert config.read_text() == before


def test_remove_and_list(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/first.xml", rss(story_item(2), title="First"))
    server.serve("/second.xml", rss(story_item(3), title="Second"))
    config = config_with(tmp_path, server.url("/first.xml"))
    assert run_feeds("sources", "add", server.url("/second.xml"), "-c", str(config)).returncode == 0
    run_feeds("poll", "-c", str(config))
    rows = json.loads(run_feeds("sources", "list", "--json", "-c", str(config)).stdout)
    assert [(r["name"], r["state"], r["tags"]) for r in rows] == [("first", "ok", ["news"]), ("second", "ok", [])]
    assert run_feeds("sources", "remove", "second", "-c", str(config)).returncode == 0
    assert "second" not in config.read_text() and "# the first one" in config.read_text()
    unknown = run_feeds("sources", "remove", "nope", "-c", str(config))
    assert unknown.returncode == 2 and "no source named 'nope'" in unknown.stderr
    # Removing the last source would leave an invalid config: refused, nothing written.
    before = config.read_text()
    last = run_feeds("sources", "remove", "first", "-c", str(config))
    assert last.returncode == 2 and "invalid" in last.stderr and config.read_text() == before
    assert not list(tmp_path.glob(".feeds.yaml.*"))  # no temporary file left behind


MINIFLUX = """<?xml version="1.0" encoding="UTF-8"?>
<opml version="2.0">
  <head><title>Miniflux</title><dateCreated>Sun, 06 Dec 2026 10:00:00 UTC</dateCreated></head>
  <body>
    <outline text="Tech News">
      <outline title="Ars" text="Ars" xmlUrl="https://ars.example/feed" htmlUrl="https://ars.example/" type="rss"></outline>
      <outline title="Dup" text="Dup" xmlUrl="http://www.ars.example/feed/?utm_source=opml" type="rss"></outline>
    </outline>
    <outline text="Local"><outline text="Town" xmlUrl="https://town.example/rss.xml" type="rss"></outline></outline>
    <outline text="folder without feeds"></outline>
    <outline text="Script" xmlUrl="javascript:alert(1)" type="rss"></outline>
  </body>
</opml>"""
NEWSBOAT = """<?xml version="1.0"?>
<opml version="1.0">
  <head><title>newsboat - Exported Feeds</title></head>
  <body>
    <outline type="rss" xmlUrl="https://blog.example/atom.xml" htmlUrl="https://blog.example/" title="A Blog"/>
    <outline type="rss" xmlUrl="https://town.example/rss.xml" htmlUrl="https://town.example/" title="Town again"/>
  </body>
</opml>"""


def test_import_folders_as_tags_skipping_duplicates_and_export_round_trips(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/first.xml", rss(story_item(2), title="First"))
    config = config_with(tmp_path, server.url("/first.xml"))
    opml = tmp_path / "miniflux.opml"
    opml.write_text(MINIFLUX)
    dry = run_feeds("sources", "import", str(opml), "--dry-run", "-c", str(config))
    assert dry.returncode == 0 and "2 sources would be added" in dry.stdout
    assert config.read_text() == CONFIG.format(url=server.url("/first.xml"))
    done = run_feeds("sources", "import", str(opml), "--tag", "imported", "-c", str(config))
    assert done.returncode == 0, done.stderr
    assert "skip http://www.ars.example/feed/?utm_source=opml (already a source)" in done.stdout
    assert "skip javascript:alert(1)" in done.stdout
    flat = tmp_path / "newsboat.opml"
    flat.write_text(NEWSBOAT)
    assert run_feeds("sources", "import", str(flat), "-c", str(config)).returncode == 0
    rows = {r["name"]: r for r in json.loads(run_feeds("sources", "list", "--json", "-c", str(config)).stdout)}
    assert rows["ars"]["tags"] == ["tech-news", "imported"] and rows["town"]["tags"] == ["local", "imported"]
    assert rows["a-blog"]["url"] == "https://blog.example/atom.xml" and "town-again" not in rows
    exported = tmp_path / "out.opml"
    assert run_feeds("sources", "export", "-o", str(exported), "-c", str(config)).returncode == 0
    # A fresh config importing the export gets the same sources, titles and tags.
    other = tmp_path / "other"
    other.mkdir()
    copy = config_with(other, server.url("/first.xml"))
    assert run_feeds("sources", "import", str(exported), "-c", str(copy)).returncode == 0
    again = {r["url"]: (r["title"], r["tags"]) for r in json.loads(run_feeds("sources", "list", "--json", "-c", str(copy)).stdout)}
    assert again == {r["url"]: (r["title"], r["tags"]) for r in rows.values() if r["name"] != "first"} | {
        server.url("/first.xml"): (None, ["news"])  # already there: skipped, as it was
    }


def test_bad_subscription_lists_are_one_line_and_change_nothing(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/first.xml", rss(story_item(2), title="First"))
    config = config_with(tmp_path, server.url("/first.xml"))
    before = config.read_text()
    cases = {
        "not-xml.opml": ("this is not xml at all", "not an OPML subscription list"),
        "empty.opml": ('<?xml version="1.0"?><opml version="2.0"><body></body></opml>', "no feeds in it"),
        "no-urls.opml": ('<opml version="2.0"><body><outline text="a"/><outline text="b"/></body></opml>', "no feeds in it"),
        "bomb.opml": (
            '<?xml version="1.0"?><!DOCTYPE opml [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
            '<opml version="2.0"><body><outline text="&b;" xmlUrl="https://x.example/&b;"/></body></opml>',
            "declares XML entities",
        ),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        result = run_feeds("sources", "import", str(path), "-c", str(config))
        assert result.returncode == 2, name
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, (name, result.stderr)
    missing = run_feeds("sources", "import", str(tmp_path / "nope.opml"), "-c", str(config))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    big = tmp_path / "big.opml"
    outlines = "".join(f'<outline text="f{i}" xmlUrl="https://big.example/{i}.xml"/>' for i in range(100_000))
    big.write_text(f'<opml version="2.0"><body>{outlines}</body></opml>')
    many = run_feeds("sources", "import", str(big), "--dry-run", "-c", str(config))
    assert many.returncode == 0 and "100000 sources would be added" in many.stdout
    assert config.read_text() == before
