"""The pages a reader opens in a browser, over real sockets and without JavaScript: the river in
pages of excerpts with filters and title search, a merged story's own page (its timeline), the
sources page, the site title; and what the feeds say about a merged story's other outlets."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import feedparser
import pytest
import requests
from lxml import html as lxml_html

from feeds.pages import PAGE_SIZE
from tests.conftest import NOW, FeedServer, rss, settings_for, story_item
from tests.test_poll import poll
from tests.test_server import RunningServer

WIRE_TEXT = (
    "The harbour commission approved a new ferry terminal on Tuesday after a long public hearing, "
    "with construction to begin in the spring and the first sailings planned for the following summer season."
)


PAPER_LINK = "https://amp.paper.example/amp/ferry?utm_source=rss&amp;id=7"  # an AMP address with tracking (XML-escaped)


def tagged(n: int, tag: str) -> dict[str, str]:
    item = story_item(n, day=20 + n % 5)
    item["category"] = tag
    return item


def wire(title: str, link: str, *, day: str = "Sat, 21 Nov 2026 09:00:00 GMT", text: str = WIRE_TEXT) -> dict[str, str]:
    return {"title": title, "link": link, "guid": link, "description": f"<p>{text}</p>", "pubDate": day}


@pytest.fixture
def site(tmp_path: Path, server: FeedServer) -> Iterator[RunningServer]:
    server.serve("/a", rss(*(tagged(n, "transport" if n % 3 == 0 else "politics") for n in range(1, 24)), title="Outlet A"))
    server.serve("/wire", rss(wire("Ferry terminal approved", "https://wire.example/ferry"), title="The Wire"))
    server.serve("/paper", rss(wire("Harbour backs ferry plan", PAPER_LINK, day="Sat, 21 Nov 2026 11:30:00 GMT"), title="The Paper"))
    server.serve("/down", "gone fishing", status=500)
    settings = settings_for(
        tmp_path,
        [
            {"name": "a", "url": server.url("/a")},
            {"name": "wire", "url": server.url("/wire"), "priority": 5},
            {"name": "paper", "url": server.url("/paper")},
            {"name": "down", "url": server.url("/down")},
        ],
        extra="title: Harbour News Desk",
    )
    poll(settings)
    running = RunningServer(settings)
    yield running
    running.stop()


def get(site: RunningServer, path: str) -> lxml_html.HtmlElement:
    response = requests.get(site.url(path), timeout=5)
    assert response.status_code == 200, path
    return lxml_html.fromstring(response.text)


def titles(page: lxml_html.HtmlElement) -> list[str]:
    return [h.text_content() for h in page.cssselect("article.story h2")]


def test_the_river_pages_excerpts_without_javascript(site: RunningServer) -> None:
    first = get(site, "/all/")
    assert len(first.cssselect("article.story")) == PAGE_SIZE  # 24 stories: a first page, then more
    older = first.cssselect("nav.pages a.older")[0].get("href")
    second = get(site, f"/all/{older.removeprefix('./')}")
    assert len(second.cssselect("article.story")) == 24 - PAGE_SIZE
    assert set(titles(first)).isdisjoint(titles(second))
    assert second.cssselect("nav.pages a.newer") and not second.cssselect("nav.pages a.older")
    story = next(a for a in first.cssselect("article.story") if "Story 23" in a.text_content())
    assert "Story number 23 reports that the town of Exampleton" in story.cssselect("p.excerpt")[0].text_content()
    assert story.cssselect("p.more a")[0].get("href") == f"story/{story.get('data-seq')}"
    assert story.cssselect("p.meta time")[0].get("title").endswith("UTC")  # exact on hover


def test_the_river_filters_by_outlet_and_tag_and_searches_titles(site: RunningServer) -> None:
    page = get(site, "/all/")
    form = page.cssselect("form.filters")[0]
    assert form.get("method") == "get"
    outlets = {o.get("value"): o.text_content() for o in form.cssselect("select[name=source] option")}
    assert outlets["wire"] == "The Wire" and outlets["paper"] == "The Paper" and "a" in outlets
    assert {"transport", "politics"} <= {o.get("value") for o in form.cssselect("select[name=tag] option")}
    assert titles(get(site, "/all/?q=story+17")) == ["Story 17"]
    assert titles(get(site, "/all/?q=FERRY")) == ["Ferry terminal approved"]
    assert titles(get(site, "/all/?source=paper")) == ["Ferry terminal approved"]  # a story any of its outlets carried
    transport = titles(get(site, "/all/?tag=transport"))
    assert sorted(transport) == sorted(f"Story {n}" for n in range(3, 24, 3))
    nothing = get(site, "/all/?q=zebra")
    assert nothing.cssselect("p.empty")[0].text_content() == "No story matches."
    assert "page=" not in json.dumps([a.get("href") for a in get(site, "/all/?tag=transport").cssselect("nav.pages a")])
    for odd in ("?page=-1", "?page=99999999999", "?page=%C2%B2", "?q=" + "x" * 5000, "?source=%00", "?tag=<script>"):
        assert requests.get(site.url("/all/" + odd), timeout=5).status_code == 200, odd


def test_a_merged_story_has_its_own_page_with_a_timeline(site: RunningServer, server: FeedServer) -> None:
    river = get(site, "/all/")
    merged = next(a for a in river.cssselect("article.story") if "Ferry" in a.text_content())
    assert "2 outlets" in merged.cssselect("p.meta")[0].text_content()
    also = merged.cssselect("p.also")[0]  # on the river too: the other outlet's own headline, time and clean link
    assert also.text_content().startswith("Also reported by: Harbour backs ferry plan (The Paper, ")
    assert also.cssselect("a")[0].get("href") == "https://paper.example/ferry?id=7" and also.cssselect("time")
    page = get(site, f"/all/{merged.cssselect('p.more a')[0].get('href')}")
    assert page.cssselect("h1")[0].text_content() == "Ferry terminal approved"
    assert "harbour commission approved a new ferry terminal" in page.cssselect("article .body")[0].text_content()
    assert "Also reported by" not in page.cssselect("article .body")[0].text_content()  # the timeline says it
    steps = [li.text_content() for li in page.cssselect("ol.timeline li")]
    assert len(steps) == 2
    assert "The Wire published: Ferry terminal approved" in steps[0] and "lead" in steps[0]
    assert "The Paper carried a copy: Harbour backs ferry plan" in steps[1]
    links = [a.get("href") for a in page.cssselect("ol.timeline a")]
    assert links == ["https://wire.example/ferry", "https://paper.example/ferry?id=7"]  # clean: no utm_*, no AMP
    assert page.cssselect("p.crumbs a")[0].text_content() == "Harbour News Desk"
    # The paper rewrites its text a day later: the timeline says when.
    changed = wire(
        "Harbour backs ferry plan", PAPER_LINK, day="Sat, 21 Nov 2026 11:30:00 GMT", text=f"{WIRE_TEXT} Updated with the vote count."
    )
    server.serve("/paper", rss(changed, title="The Paper"))
    poll(site.settings, now=NOW + timedelta(days=1))
    page = get(site, f"/all/{merged.cssselect('p.more a')[0].get('href')}")
    steps = [li.text_content() for li in page.cssselect("ol.timeline li")]
    assert len(steps) == 3 and "The Paper changed its text" in steps[2]
    assert requests.get(site.url("/all/story/999999"), timeout=5).status_code == 404
    assert requests.get(site.url("/all/story/%C2%B2"), timeout=5).status_code == 404


def test_feeds_name_each_other_outlet_with_headline_time_clean_link_and_the_story_page(site: RunningServer) -> None:
    parsed = feedparser.parse(requests.get(site.url("/all.atom"), timeout=5).content)
    entry = next(e for e in parsed.entries if e.title == "Ferry terminal approved")
    content = entry.content[0].value
    assert "Also reported by:" in content
    assert '<a href="https://paper.example/ferry?id=7">Harbour backs ferry plan</a> (The Paper, 21 Nov 2026 11:30 UTC)' in content
    story = re.search(r'<a href="(http://feeds\.test/all/story/\d+)">How 2 outlets reported this story</a>', content)
    assert story is not None  # absolute: it opens from any reader
    assert [link.href for link in entry.links if link.rel == "via"] == ["https://paper.example/ferry?id=7"]
    document = requests.get(site.url("/all.json"), timeout=5).json()
    item = next(i for i in document["items"] if i["title"] == "Ferry terminal approved")
    assert item["summary"].startswith("The harbour commission approved") and "<" not in item["summary"]  # plain text
    assert [o["outlet"] for o in item["_feeds"]["outlets"]] == ["The Wire", "The Paper"]


def test_sources_page_lists_failing_first_and_the_index_counts_them(site: RunningServer) -> None:
    index = get(site, "/")
    assert index.cssselect("h1")[0].text_content() == "Harbour News Desk"
    assert index.cssselect("title")[0].text_content() == "Harbour News Desk"
    line = index.cssselect("p.sources-line")[0]
    assert "1 of 4 failing" in line.text_content() and line.cssselect("a")[0].get("href") == "sources"
    page = get(site, "/sources")
    rows = page.cssselect("table.sources tbody tr")
    assert rows[0].cssselect("th code")[0].text_content() == "down"
    assert rows[0].get("class") == "failing" and "HTTP 500" in rows[0].text_content()
    ok = next(r for r in rows if r.cssselect("th code")[0].text_content() == "a")
    cells = [c.text_content() for c in ok.cssselect("td")]
    assert cells[0] == "ok" and cells[-1] == "23" and "every 2h30m (adaptive)" in cells[2]  # next poll and why
    assert "Harbour News Desk" in page.cssselect("title")[0].text_content()
