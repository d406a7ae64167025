"""Output rules as a user writes them: patterns, age, per-source limits, independent reports and
title templates, checked through the published feeds; bad rules are config errors with file:line."""

from __future__ import annotations

import json
from pathlib import Path

import feedparser

from tests.conftest import NOW, FeedServer, rss, run_feeds, settings_for, write_config
from tests.test_poll import poll

SEAWALL = (
    "<p>The Harbor City council voted 7-2 on Tuesday to build a $48 million seawall along the northern waterfront, "
    "where winter storms flooded more than 200 homes in each of the last three years, Mayor Elena Ruiz said.</p>"
)
REWRITE = (
    "<p>Residents of Harbor City packed the chamber on Tuesday as the council voted 7-2 for the $48 million seawall. "
    "Mayor Elena Ruiz said more than 200 homes have flooded in each of the last three winters.</p>"
)


def item(n: int, title: str, body: str, *, day: int = 25, host: str = "wire.example") -> dict[str, str]:
    return {
        "title": title,
        "link": f"https://{host}/{n}",
        "guid": f"{host}-{n}",
        "description": body.replace("<", "&lt;").replace(">", "&gt;"),
        "pubDate": f"{['Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun'][(day + 6) % 7]}, {day} Nov 2026 09:00:00 GMT",
    }


def titles(path: Path) -> list[str]:
    return [e.title for e in feedparser.parse(path.read_bytes()).entries]


def test_rules_shape_each_output(tmp_path: Path, server: FeedServer) -> None:
    wire_items = [
        item(1, "Harbor City approves seawall", SEAWALL),
        item(2, "SPONSORED: the best boats of the year", "<p>Buy a boat from our partners today, with a discount.</p>"),
        item(3, "Library extends weekend hours", "<p>The library will open until 8 p.m. on Saturdays from next month.</p>"),
        item(4, "Old news from last week", "<p>Something happened a week and a half ago in the city.</p>", day=14),
    ]
    server.serve("/wire", rss(*wire_items, title="Wire"))
    server.serve("/local", rss(item(9, "Waterfront neighbours cheer seawall vote", REWRITE, host="local.example"), title="Local"))
    outputs = """\
outputs:
  - name: all
    title: All
  - name: clean
    title: Clean
    exclude: {title: ["(?i)sponsored"]}
    max_age: 7d
  - name: seawall
    title: Seawall
    include: {content: ["seawall"]}
    dedupe: copies
  - name: one-each
    title: One per source
    per_source_limit: 1
  - name: top
    title: Top stories
    min_sources: 2
    title_template: "[{source}] {title} ({reports} reports)"
"""
    settings = settings_for(
        tmp_path,
        [
            {"name": "wire", "url": server.url("/wire"), "title": "Wire", "priority": 10},
            {"name": "local", "url": server.url("/local"), "title": "Local"},
        ],
        outputs=outputs,
    )
    poll(settings, now=NOW)
    public = tmp_path / "public"
    assert len(titles(public / "all.atom")) == 4  # the rewrite is part of the seawall entry
    assert "SPONSORED: the best boats of the year" in titles(public / "all.atom")
    # no sponsored entry, nothing older than a week
    assert sorted(titles(public / "clean.atom")) == ["Harbor City approves seawall", "Library extends weekend hours"]
    assert sorted(titles(public / "seawall.atom")) == ["Harbor City approves seawall", "Waterfront neighbours cheer seawall vote"]
    assert len(titles(public / "one-each.atom")) == 1  # the newest entry, led by the wire
    assert titles(public / "top.atom") == ["[Wire] Harbor City approves seawall (2 reports)"]
    assert titles(public / "top.rss") == titles(public / "top.atom")
    top_json = json.loads((public / "top.json").read_text())
    assert [i["title"] for i in top_json["items"]] == ["[Wire] Harbor City approves seawall (2 reports)"]


def test_preview_shows_an_output_and_writes_nothing(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/wire", rss(item(1, "Harbor City approves seawall", SEAWALL), title="Wire"))
    config = write_config(
        tmp_path,
        [{"name": "wire", "url": server.url("/wire")}],
        outputs='outputs:\n  - {name: all, title: All, title_template: "{source}: {title}"}\n',
    )
    run_feeds("poll", "-c", str(config))
    public = tmp_path / "public"
    before = {p.name: p.stat().st_mtime_ns for p in public.iterdir()}
    rows = json.loads(run_feeds("preview", "all", "--json", "-c", str(config)).stdout)
    assert [(r["title"], r["outlets"], r["reports"]) for r in rows] == [("wire: Harbor City approves seawall", 1, 1)]
    table = run_feeds("preview", "all", "-c", str(config)).stdout
    assert "wire: Harbor City approves seawall" in table and "nothing was written" in table
    assert {p.name: p.stat().st_mtime_ns for p in public.iterdir()} == before
    missing = run_feeds("preview", "nope", "-c", str(config))
    assert missing.returncode == 2 and "no output named 'nope'" in missing.stderr


def test_bad_rules_are_config_errors_with_their_line(tmp_path: Path) -> None:
    feed = tmp_path / "feed.xml"
    feed.write_text(rss())
    config = tmp_path / "feeds.yaml"
    config.write_text(
        "sources:\n"
        "  - {name: a, url: feed.xml}\n"
        "outputs:\n"
        "  - name: x\n"
        "    title: X\n"
        '    exclude: {title: ["(unclosed"], colour: [red]}\n'
        '    title_template: "{title} by {writer}"\n'
        "  - name: y\n"
        "    title: Y\n"
        "    dedupe: copies\n"
        "    min_sources: 2\n"
        "    limit: 5\n"
        "    per_source_limit: 10\n"
    )
    result = run_feeds("check", "-c", str(config))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert any(line.startswith(f"{config}:6: outputs[0].exclude.title[0]: not a valid regular expression") for line in lines)
    assert any(line.startswith(f"{config}:6: outputs[0].exclude.colour: unknown key") for line in lines)
    assert f"{config}:7: outputs[0].title_template: unknown field {{writer}}" in result.stderr
    assert f"{config}:11: outputs[1].min_sources: counts independent reports, which needs dedupe: event" in result.stderr
    assert f"{config}:13: outputs[1].per_source_limit: 10 is above the output's limit 5" in result.stderr
