"""Event clustering: outlets' own rewrites of one event merge, follow-ups and look-alikes do not,
and the result does not depend on the order in which sources are polled."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from pathlib import Path

import feedparser
import pytest

from feeds.dedupe import body_paragraphs
from feeds.events import compare, event_facts, group, numbers
from feeds.models import Story
from scripts.dedup_eval import poll_in_order, run_pipeline, score
from tests.conftest import DATA, NOW, FeedServer, rss, run_feeds, settings_for
from tests.test_poll import poll

REWRITES = DATA / "dedup-dev" / "rewrites" / "stories.jsonl"
COPIES = DATA / "dedup-dev" / "stories.jsonl"


def load(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def partition(predicted: dict[str, str]) -> set[frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for item, cluster in predicted.items():
        groups.setdefault(cluster, set()).add(item)
    return {frozenset(g) for g in groups.values()}


def test_rewrites_set_with_event_merging(tmp_path: Path) -> None:
    items = load(REWRITES)
    copies = score(items, run_pipeline(items, tmp_path / "copies", dedupe="copies"))
    events = score(items, run_pipeline(items, tmp_path / "events", dedupe="event"))
    # Copies alone find the pairs that share a text (recall 0.451). Events: measured precision
    # 1.0 and recall 0.967 (targets: >= 0.99 and >= 0.95, and no hard negative merged).
    assert copies.precision == 1.0 and 0.44 <= copies.recall <= 0.46
    assert events.false_merges == [] and events.precision == 1.0
    assert events.recall >= 0.96


def test_syndication_set_is_unchanged_with_event_merging(tmp_path: Path) -> None:
    items = load(COPIES)
    result = score(items, run_pipeline(items, tmp_path, dedupe="event"))
    assert result.false_merges == [] and result.precision == 1.0 and result.recall == 1.0


@pytest.mark.parametrize("path", [COPIES, REWRITES], ids=["syndication", "rewrites"])
def test_the_same_feeds_polled_in_any_order_give_the_same_entries(tmp_path: Path, path: Path) -> None:
    items = load(path)
    outlets = sorted({i["source"] for i in items})
    seen: list[set[frozenset[str]]] = []
    for seed in range(3):
        order = random.Random(seed).sample(outlets, len(outlets))
        predicted = poll_in_order(items, tmp_path / f"run{seed}", order, dedupe="event")
        assert set(predicted) == {i["id"] for i in items}  # every item is in an entry
        seen.append(partition(predicted))
    assert seen[0] == seen[1] == seen[2]


def facts(title: str, body: str, days_ago: int = 0) -> tuple[object, object]:
    story = Story(
        source="s",
        guid=title,
        id=title,
        title=title,
        link=None,
        canonical_url=None,
        first_seen=NOW,
        published=NOW - timedelta(days=days_ago),
        summary_html=body,
    )
    return event_facts(story.title, body_paragraphs(story), story.published), story.when


def test_one_fact_in_another_form_agrees() -> None:
    assert numbers("$14 million, 14 million dollars") == ["$1.4e+07"]
    assert numbers("at 2:30 p.m. on Feb. 17, up 40 percent") == ["t14:30", "d02-17", "%40"]
    # The weekday two days before publication is the date another outlet writes out.
    day = NOW - timedelta(days=2)
    weekday, when = facts(
        "Council approves $14 million pool repair", f"<p>The Harbor Council voted 13-2 on {day:%A} for the Hartley Memorial Pool.</p>"
    )
    dated, other = facts(
        "Hartley Memorial Pool saved",
        f"<p>Councillors in Harbor voted 13-2 on {day:%b}. {day.day} to spend 14 million dollars on the Hartley Memorial Pool.</p>",
    )
    link = compare(weekday, when, dated, other)  # type: ignore[arg-type]
    assert link.same and not link.conflicts
    assert {"$1.4e+07", "s13-2", ":hartley", ":memorial"} <= set(link.agreed)
    assert any(f.startswith("d") for f in link.agreed)


def test_a_new_number_in_the_lead_counts_against() -> None:
    first, when = facts(
        "Fire forces 600 Stockton homes to evacuate",
        "<p>About 600 homes near the Delta Ag Supply warehouse on Arch Road were evacuated, Capt. Luis Barrera said.</p>",
    )
    later, later_when = facts(
        "Stockton fire contained; 1,400 homes told to stay indoors no more",
        "<p>The order for 1,400 homes was lifted at 2:30 p.m. near the Delta Ag Supply warehouse on Arch Road, Capt. Luis Barrera said.</p>",
    )
    link = compare(first, when, later, later_when)  # type: ignore[arg-type]
    assert set(link.conflicts) >= {"n1400", "t14:30"} and not link.same


def test_an_event_never_holds_two_texts_of_one_outlet() -> None:
    # The wire's story (1) and its update (2), and a rewrite (3) published after the update that
    # matches the story more strongly: it joins the story, and the wire's two texts stay two
    # entries, whatever the order of the links.
    outlets = {1: frozenset({"wire"}), 2: frozenset({"wire"}), 3: frozenset({"local"})}
    firsts = {1: NOW, 2: NOW + timedelta(hours=5), 3: NOW + timedelta(hours=6)}
    links = [(3, 2, 12.0, 1.0), (1, 3, 20.0, 6.0), (1, 2, 30.0, 5.0)]
    for order in (links, list(reversed(links))):
        assert group([1, 2, 3], outlets, firsts, order) == {1: 1, 2: 2, 3: 1}


def test_a_report_published_before_an_update_belongs_to_the_first_story() -> None:
    # The rewrite (3) came out before the wire's update (2) and matches both, the update more
    # strongly (it repeats everything): it still reports the first story (1).
    outlets = {1: frozenset({"wire"}), 2: frozenset({"wire"}), 3: frozenset({"local"})}
    firsts = {1: NOW, 2: NOW + timedelta(hours=20), 3: NOW + timedelta(hours=7)}
    assert group([1, 2, 3], outlets, firsts, [(3, 2, 21.0, 13.0), (1, 3, 13.0, 7.0), (1, 2, 23.0, 20.0)]) == {1: 1, 2: 2, 3: 1}


def test_a_story_that_matches_two_events_alike_joins_neither() -> None:
    # A teaser (3) published after the update matches the story and its update equally well:
    # which one it reports cannot be told, so it stays an entry of its own.
    outlets = {1: frozenset({"wire"}), 2: frozenset({"wire"}), 3: frozenset({"teaser"})}
    firsts = {1: NOW, 2: NOW + timedelta(hours=5), 3: NOW + timedelta(hours=6)}
    assert group([1, 2, 3], outlets, firsts, [(1, 3, 14.0, 6.0), (2, 3, 14.0, 1.0), (1, 2, 19.0, 5.0)]) == {1: 1, 2: 2, 3: 3}


def test_an_output_with_event_dedupe_publishes_one_entry_crediting_both_outlets(tmp_path: Path, server: FeedServer) -> None:
    wire = {
        "title": "Fire at fertilizer warehouse forces evacuation of 600 homes in Stockton",
        "link": "https://wire.example/1",
        "guid": "w1",
        "pubDate": "Tue, 15 Sep 2026 16:40:00 GMT",
        "description": (
            "<p>About 600 homes in south Stockton, California, were ordered evacuated on Tuesday after a fire broke out at "
            "the Delta Ag Supply warehouse on Arch Road. More than 80 firefighters were at the scene, fire Capt. Luis "
            "Barrera said. Residents of another 1,400 homes were told to stay indoors.</p>"
        ),
    }
    local = {
        "title": "'You could taste it': south Stockton families flee warehouse smoke",
        "link": "https://local.example/2",
        "guid": "l1",
        "pubDate": "Tue, 15 Sep 2026 18:50:00 GMT",
        "description": (
            "<p>Maribel Ochoa was packing lunches when a neighbor pounded on her door on Tuesday. By then the sky over Arch "
            "Road had turned black.</p><p>Her family was among the residents of roughly 600 homes near the Delta Ag Supply "
            "warehouse who were ordered out, and 1,400 more households were told to stay inside. Capt. Luis Barrera said "
            "firefighters kept water away from the chlorine drums.</p>"
        ),
    }
    server.serve("/wire", rss(wire, title="Wire"))
    server.serve("/local", rss(local, title="Local"))
    settings = settings_for(
        tmp_path,
        [{"name": "wire", "url": server.url("/wire")}, {"name": "local", "url": server.url("/local")}],
        outputs="outputs:\n  - {name: events, title: Events, dedupe: event}\n  - {name: copies, title: Copies, dedupe: near}\n",
    )
    poll(settings)
    events = feedparser.parse((tmp_path / "public" / "events.atom").read_bytes())
    copies = feedparser.parse((tmp_path / "public" / "copies.atom").read_bytes())
    assert len(copies.entries) == 2  # `near`, the old name of `copies`, still works
    assert len(events.entries) == 1
    entry = events.entries[0]
    assert entry.title == wire["title"]  # the full wire text, earliest, leads
    assert entry.id in {e.id for e in copies.entries}  # the oldest cluster's id: it never changes as the event grows
    assert "Local" in entry.content[0].value  # the rewrite's outlet is credited
    assert "2 independent reports: Wire; Local" in entry.content[0].value
    # The evidence, as `feeds clusters explain` shows it for the rewrite.
    listed = json.loads(run_feeds("clusters", "--json", "-c", str(settings.path)).stdout)
    rewrite = next(s["id"] for c in listed for s in c["stories"] if s["source"] == "local")
    explained = run_feeds("clusters", "explain", rewrite, "-c", str(settings.path)).stdout
    assert "linked, score" in explained and "(wire, cluster" in explained
    assert "agreed:" in explained and "luis" in explained and "n1400" in explained
