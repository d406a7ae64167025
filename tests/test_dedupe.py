"""Deduplication: exact keys, near-duplicates on the labelled dev set, lead election, persistence."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import feedparser

from feeds.dedupe import COMMON_KEY, assign, better_lead, fingerprint, matching_text, plan, probe, similarity
from feeds.models import Candidate, DedupeSettings, LeadInfo, Plan, Story
from feeds.store import Store
from feeds.store.sqlite import SQLiteStore
from scripts.dedup_eval import run_pipeline, score
from tests.conftest import DATA, NOW, FeedServer, rss, run_feeds, settings_for
from tests.test_poll import poll

SETTINGS = DedupeSettings()
BODY = (
    "The Ashford Bay city council voted 7-2 on Tuesday to build a $48 million seawall along the northern waterfront, "
    "where winter storms flooded more than 200 homes in each of the last three years. Construction is set to begin "
    "next spring and to take about four years, with most of the money from a state resilience grant."
)


def story(sid: str, body: str, *, source: str = "a", title: str = "t", url: str | None = None) -> Story:
    return Story(source=source, guid=sid, id=sid, title=title, link=url, canonical_url=url, first_seen=NOW, summary_html=body)


def candidate(s: Story, cluster: int = 1) -> Candidate:
    fp = fingerprint(s, SETTINGS)
    return Candidate(s.id, s.source, s.title, cluster, cluster, fp.keys, fp.shingles, fp.words)


def test_dev_set_precision_recall_and_no_hard_negative_merge(tmp_path: Path) -> None:
    items = [json.loads(line) for line in (DATA / "dedup-dev" / "stories.jsonl").read_text().splitlines()]
    result = score(items, run_pipeline(items, tmp_path))
    # Measured: precision 1.0, recall 1.0 (targets: >= 0.99 and >= 0.95). Keep what we reached.
    assert result.false_merges == []
    assert result.precision == 1.0
    assert result.recall == 1.0


def test_dev_set_through_three_workers_sharing_postgresql_scores_the_same(tmp_path: Path, postgresql: str) -> None:
    items = [json.loads(line) for line in (DATA / "dedup-dev" / "stories.jsonl").read_text().splitlines()]
    result = score(items, run_pipeline(items, tmp_path, storage=postgresql, workers=3, dedupe="event"))
    # Three workers take the stories in time order and store them at once, so the order of
    # ingest differs from the order of publication by a few stories: a story that matches only a
    # later copy (A ~ B ~ C, A !~ C) sometimes arrives before the copy that links them, and the
    # two land in two copy clusters; the linking copy names both, so their events (what outputs
    # publish by default) are one (test_a_copy_linking_two_clusters_merges_their_events...).
    # Measured: 1.0/1.0 when the machine is idle; under heavy CPU load, now and then one replayed
    # item (1 of 127) is stored by a later forced poll of its outlet, weeks of replay time later,
    # outside its copies' dedupe window, and recall is 0.96 to 0.99. Never a false merge.
    assert result.false_merges == [] and result.precision == 1.0
    assert result.recall >= 0.95


def test_matching_text_drops_boilerplate_bylines_and_datelines() -> None:
    html = (
        "<p><em>By Jane Roe, Wire Service</em></p><p>OSLO, Norway (AP) — The fjord ferry resumed service.</p>"
        "<p>Get the latest updates as we post them — right on your browser.</p><p>Last Updated: 07/27/2016</p>"
    )
    assert matching_text(story("x", html)) == "the fjord ferry resumed service"
    plain = "Last Updated: 08/16/2026\n\nThe library opened.\n\nRead the full story at Harbour Times."
    assert matching_text(story("y", plain)) == "the library opened"


def test_truncated_copy_with_new_headline_joins_by_containment() -> None:
    full = story("full", f"<p>{BODY}</p><p>Residents filled the council chamber for the vote on Tuesday night.</p>")
    lead_only = story("lead", "<p>ASHFORD BAY, Maine -- " + BODY.split(". ", maxsplit=1)[0] + ".</p>", source="b", title="Seawall OK'd")
    decision = assign(fingerprint(lead_only, SETTINGS), lead_only, [candidate(full)], SETTINGS)
    assert decision.kind == "near" and decision.cluster_id == 1 and decision.containment >= 0.8
    assert "containment" in decision.reason


def test_short_texts_merge_only_on_exact_keys() -> None:
    short = story("s1", "<p>Council meets Tuesday.</p>")
    other = story("s2", "<p>Council meets Tuesday.</p>", source="b")
    assert fingerprint(short, SETTINGS).shingles == ()
    decision = assign(fingerprint(other, SETTINGS), other, [candidate(short)], SETTINGS)
    assert decision.kind == "new" and "too short" in decision.reason
    same_url = replace(other, canonical_url="https://x.example/a", link="https://x.example/a")
    first = replace(short, canonical_url="https://x.example/a", link="https://x.example/a")
    assert assign(fingerprint(same_url, SETTINGS), same_url, [candidate(first)], SETTINGS).kind == "exact"


def test_band_collision_without_similar_text_never_merges() -> None:
    new = story("n", f"<p>{BODY}</p>")
    unrelated = story("u", "<p>" + " ".join(f"word{i}" for i in range(60)) + "</p>")
    forged = replace(candidate(unrelated), keys=())  # as if it had come back from a colliding band
    decision = assign(fingerprint(new, SETTINGS), new, [forged], SETTINGS)
    assert decision.kind == "new" and decision.jaccard == 0.0


def test_other_scripts_neither_crash_nor_merge_by_accident() -> None:
    texts = {
        "zh": "<p>市议会周二以七票对两票通过了在北部海滨修建海堤的计划，过去三年冬季风暴每年淹没两百多所房屋。</p>",
        "zh2": "<p>市议会周二否决了提高垃圾收费的提案，并将计划退回财政委员会重新审议，预计四月提交新方案。</p>",
        "ar": "<p>صوت مجلس المدينة يوم الثلاثاء على بناء جدار بحري بقيمة ثمانية وأربعين مليون دولار على طول الواجهة البحرية الشمالية حيث غمرت العواصف الشتوية أكثر من مئتي منزل</p>",
        "ru": "<p>Городской совет во вторник проголосовал за строительство морской дамбы стоимостью сорок восемь миллионов долларов вдоль северной набережной где зимние штормы затопили более двухсот домов</p>",
        "ru2": "<p>Городской совет во вторник отклонил предложение о повышении платы за вывоз мусора и вернул план в финансовый комитет который представит новый вариант в апреле этого года</p>",
    }
    stories = {k: story(k, v, source=k) for k, v in texts.items()}
    fps = {k: fingerprint(s, SETTINGS) for k, s in stories.items()}
    for key, s in stories.items():
        others = [candidate(o, i) for i, o in enumerate(stories.values()) if o.id != key]
        assert assign(fps[key], s, others, SETTINGS).kind == "new", key
    copy = story("ru-copy", texts["ru"] + "<p>Подписывайтесь на нашу рассылку</p>", source="other")
    assert assign(fingerprint(copy, SETTINGS), copy, [candidate(stories["ru"], 9)], SETTINGS).cluster_id == 9


def test_lead_rule_priority_then_full_text_then_earliest() -> None:
    wire, blog = LeadInfo("w", "wire", 100, NOW), LeadInfo("b", "blog", 300, NOW - timedelta(hours=2))
    assert better_lead(blog, wire, {"wire": 5})  # priority beats everything
    assert not better_lead(wire, blog, {"wire": 5})
    excerpt, full = LeadInfo("e", "x", 30, NOW - timedelta(hours=1)), LeadInfo("f", "y", 120, NOW)
    assert better_lead(excerpt, full, {}) and not better_lead(full, excerpt, {})
    later, earlier = LeadInfo("l", "x", 100, NOW), LeadInfo("r", "y", 95, NOW - timedelta(hours=1))
    assert better_lead(later, earlier, {}) and not better_lead(earlier, later, {})
    assert not better_lead(later, LeadInfo("s", "y", 100, NOW - timedelta(minutes=2)), {})  # not clearly better


def test_atom_id_survives_lead_change_and_edits_stay_in_cluster(tmp_path: Path, server: FeedServer) -> None:
    excerpt = {
        "title": "Seawall approved",
        "link": "https://b.example/1",
        "guid": "b1",
        "description": f"<p>{BODY.split('. ', maxsplit=1)[0]}.</p>",
        "pubDate": "Tue, 24 Nov 2026 15:00:00 GMT",
    }
    full = {
        "title": "Council backs seawall",
        "link": "https://a.example/1",
        "guid": "a1",
        "description": f"<p>{BODY}</p>",
        "pubDate": "Tue, 24 Nov 2026 14:00:00 GMT",
    }
    server.serve("/b", rss(excerpt, title="B"))
    server.serve("/a", rss(title="A"))
    settings = settings_for(tmp_path, [{"name": "a", "url": server.url("/a")}, {"name": "b", "url": server.url("/b")}])
    poll(settings)
    clusters = json.loads(run_feeds("clusters", "--json", "-c", str(settings.path)).stdout)
    assert [c["title"] for c in clusters] == ["Seawall approved"]
    atom_id = clusters[0]["id"]
    server.serve("/a", rss(full, title="A"))
    poll(settings, now=NOW + timedelta(hours=1))
    clusters = json.loads(run_feeds("clusters", "--json", "-c", str(settings.path)).stdout)
    assert len(clusters) == 1 and clusters[0]["id"] == atom_id
    assert clusters[0]["title"] == "Council backs seawall"  # full text, earlier: clearly better
    assert [s["source"] for s in clusters[0]["stories"]] == ["a", "b"]
    server.serve(
        "/b",
        rss(
            {
                **excerpt,
                "title": "Seawall approved (updated)",
                "description": "<p>Now a different text entirely about other things happening in town today.</p>",
            },
            title="B",
        ),
    )
    poll(settings, now=NOW + timedelta(hours=2))
    clusters = json.loads(run_feeds("clusters", "--json", "-c", str(settings.path)).stdout)
    assert len(clusters) == 1 and clusters[0]["id"] == atom_id and len(clusters[0]["stories"]) == 2
    explained = run_feeds("clusters", "explain", clusters[0]["stories"][0]["id"], "-c", str(settings.path)).stdout
    assert "joined cluster" in explained and "containment" in explained


def store_batch(db: Store, *stories: Story, priorities: dict[str, int] | None = None) -> Plan:
    """Look up, plan and save stories as one batch (one poll per source), as a cycle does."""
    by_source: dict[str, list[Story]] = {}
    for s in stories:
        by_source.setdefault(s.source, []).append(s)
    polls = [(group, [fingerprint(s, SETTINGS) for s in group]) for group in by_source.values()]
    with db.transaction() as tx:
        decided = plan(polls, tx.lookup(probe(polls, since=NOW - SETTINGS.window)), SETTINGS, priorities or {})
        tx.save(decided)
    return decided


def test_index_is_persisted_and_window_limits_near_matches(tmp_path: Path) -> None:
    db = SQLiteStore(tmp_path / "feeds.db")
    store_batch(db, story("o", f"<p>{BODY}</p>"))
    db.close()
    reopened = SQLiteStore(tmp_path / "feeds.db")
    copy = story("c", f"<p>WIRE -- {BODY} Officials said the first phase starts in March.</p>", source="b")
    fp = fingerprint(copy, SETTINGS)
    with reopened.transaction() as tx:
        found = tx.lookup(probe([([copy], [fp])], since=NOW - SETTINGS.window))
        assert list(found.candidates) == ["o"]
        assert similarity(fp.shingles, found.candidates["o"].shingles)[0] > 0.8
        assert not tx.lookup(probe([([copy], [fp])], since=NOW + timedelta(days=1))).candidates  # outside the window
    reopened.close()


def test_copies_inside_one_batch_merge_and_the_best_copy_leads(tmp_path: Path) -> None:
    db = SQLiteStore(tmp_path / "feeds.db")
    excerpt = story("e", f"<p>{BODY[:200]}</p>", source="blog")
    full = story("f", f"<p>WIRE -- {BODY}</p>", source="wire")
    other = story("x", "<p>" + " ".join(f"unrelated{i}" for i in range(40)) + "</p>", source="wire")
    decided = store_batch(db, excerpt, full, other)
    assert decided.counts == ((1, 0), (2, 0))
    assert {c.kind for c in decided.clusters} == {"near", "exact"} and len(decided.clusters) == 5  # excerpt, full (exact), other
    clusters = db.clusters(["blog", "wire"], exact=False, limit=10)
    merged = next(c for c in clusters if len(c.members) == 2)
    assert merged.lead.id == "f" and {m.id for m in merged.members} == {"e", "f"}  # full text beats the excerpt
    assert merged.atom_id.startswith("urn:feeds:") and len(clusters) == 2
    # The same batch again changes nothing: every story is known by its guid.
    assert store_batch(db, excerpt, full, other).counts == ((0, 0), (0, 0))
    assert db.clusters(["blog", "wire"], exact=False, limit=10) == clusters
    db.close()


def test_an_edit_keeps_the_story_and_its_first_stamps(tmp_path: Path) -> None:
    db = SQLiteStore(tmp_path / "feeds.db")
    original = replace(story("o", f"<p>{BODY}</p>"), published=NOW - timedelta(hours=3), content_hash="v1")
    store_batch(db, original)
    later = NOW + timedelta(hours=1)
    edited = replace(original, first_seen=later, published=None, summary_html=f"<p>{BODY} Update.</p>", content_hash="v2")
    decided = store_batch(db, edited)
    assert decided.counts == ((0, 1),) and not decided.stories
    stored = db.stored_story("o")
    assert stored is not None
    assert stored.story.first_seen == NOW and stored.story.published == NOW - timedelta(hours=3)  # kept
    assert stored.story.updated == later and "Update." in (stored.story.summary_html or "")  # stamped when seen
    db.close()


def test_output_with_exact_dedupe_keeps_near_duplicates_apart(tmp_path: Path, server: FeedServer) -> None:
    full = {"title": "Council backs seawall", "link": "https://a.example/1", "guid": "a1", "description": f"<p>{BODY}</p>"}
    copy = {
        "title": "Seawall approved",
        "link": "https://b.example/1",
        "guid": "b1",
        "description": f"<p>OSLO -- {BODY} Critics said the wall would block the view.</p>",
    }
    server.serve("/a", rss(full, title="A"))
    server.serve("/b", rss(copy, title="B"))
    settings = settings_for(
        tmp_path,
        [{"name": "a", "url": server.url("/a")}, {"name": "b", "url": server.url("/b")}],
        outputs="outputs:\n  - {name: merged, title: Merged}\n  - {name: raw, title: Raw, dedupe: exact}\n",
    )
    poll(settings)
    merged = feedparser.parse((tmp_path / "public" / "merged.atom").read_bytes())
    raw = feedparser.parse((tmp_path / "public" / "raw.atom").read_bytes())
    assert len(merged.entries) == 1 and len(raw.entries) == 2


def test_a_sources_own_articles_never_merge_with_each_other() -> None:
    template = "<p>Traffic report for {day}: the northbound bypass is slow between exits 4 and 9, the bridge is clear, and buses on routes 2, 7 and 12 run about five minutes late this morning.</p>"
    monday = story("mon", template.format(day="Monday"), source="city", url="https://city.example/traffic/monday")
    tuesday = story("tue", template.format(day="Tuesday"), source="city", url="https://city.example/traffic/tuesday")
    assert similarity(fingerprint(monday, SETTINGS).shingles, fingerprint(tuesday, SETTINGS).shingles)[0] > 0.8
    assert assign(fingerprint(tuesday, SETTINGS), tuesday, [candidate(monday)], SETTINGS).kind == "new"
    blurb = "<p>A weekly conversation about city hall, the budget and the people who run the place.</p>"
    ep1 = story("ep1", blurb, source="pod", title="Episode 1", url="https://pod.example/1")
    ep2 = story("ep2", blurb, source="pod", title="Episode 2", url="https://pod.example/2")
    assert assign(fingerprint(ep2, SETTINGS), ep2, [candidate(ep1)], SETTINGS).kind == "new"
    # the same article of one source under a tracking variant of its URL is still one story
    tracked = replace(ep1, id="ep1b", guid="ep1b", link="https://pod.example/1?utm_source=x", canonical_url="https://pod.example/1")
    decision = assign(fingerprint(tracked, SETTINGS), tracked, [candidate(ep1)], SETTINGS)
    assert decision.kind == "exact" and decision.replaces == "ep1"
    # across outlets the same text still merges
    other = replace(ep2, source="radio", link=None, canonical_url=None)
    assert assign(fingerprint(other, SETTINGS), other, [candidate(ep1)], SETTINGS).kind == "exact"


CHAIN_TEXT = (
    "harbour ferry crews spent the long grey morning loading crates of apples onto the old wooden deck "
    "while gulls circled above the pier and the tide crept slowly over the weedy stones near the quiet "
    "breakwater where children usually fished for crabs during warm summer evenings after school finished "
    "for the day and tired parents waited patiently beside rusty bicycles"
)
CHAIN = CHAIN_TEXT.split()


def test_a_copy_linking_two_clusters_merges_their_events_whatever_the_order(tmp_path: Path, server: FeedServer) -> None:
    # A ~ B ~ C but A !~ C (the middle of a long wire text, its start, its end), arriving A, C, B:
    # A and C are in two copy clusters when B comes; B joins one and names the other.
    texts = {"a": " ".join(CHAIN[:40]), "b": " ".join(CHAIN[:60]), "c": " ".join(CHAIN[20:60])}
    sources = [{"name": name, "url": server.url(f"/{name}")} for name in texts]
    settings = settings_for(
        tmp_path, sources, outputs="outputs:\n  - {name: all, title: All}\n  - {name: copies, title: C, dedupe: copies}"
    )
    for name in texts:
        server.serve(f"/{name}", rss(title=name))
    for hour, name in enumerate(("a", "c", "b")):
        item = {"title": f"Ferry {name}", "link": f"https://{name}.example/ferry", "guid": name, "description": texts[name]}
        item["pubDate"] = f"Wed, 25 Nov 2026 0{hour}:00:00 GMT"
        server.serve(f"/{name}", rss(item, title=name))
        poll(settings, now=NOW + timedelta(hours=hour))
    events = feedparser.parse((tmp_path / "public" / "all.atom").read_bytes())
    assert len(events.entries) == 1 and len([lk for lk in events.entries[0].links if lk.rel == "via"]) == 2  # one story, three outlets
    copies = feedparser.parse((tmp_path / "public" / "copies.atom").read_bytes())
    assert len(copies.entries) == 2  # copy clusters never merge: an output with dedupe: copies shows the chain twice


def test_a_key_too_many_stories_share_finds_none(tmp_path: Path) -> None:
    # Stories of a templated feed share bands and fact pairs; past COMMON_KEY stories, a key
    # shared by all of them is dropped, so a new story is not compared with every one (the
    # 1,000-source benchmark's first cycle went from 352 s to 95 s).
    db = SQLiteStore(tmp_path / "feeds.db")
    store_batch(db, story("o", f"<p>{BODY}</p>"), story("o2", f"<p>{BODY}</p>", source="b"))
    copy = story("c", f"<p>WIRE -- {BODY} Officials said the first phase starts in March.</p>", source="c")
    fp = fingerprint(copy, SETTINGS)
    asked = probe([([copy], [fp])], since=NOW - SETTINGS.window)
    assert asked.common == COMMON_KEY
    with db.transaction() as tx:
        assert sorted(tx.lookup(asked).candidates) == ["o", "o2"]
        assert not tx.lookup(replace(asked, common=1)).by_band  # every band is shared by two stories: too common
        assert sorted(tx.lookup(replace(asked, common=2)).candidates) == ["o", "o2"]
    db.close()
