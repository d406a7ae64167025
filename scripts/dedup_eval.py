#!/usr/bin/env python3
"""Score near-duplicate clustering on a labelled set of syndicated stories.

The set (JSON lines with id, cluster, source, url, title, summary_html, published) is turned into
one RSS feed per outlet; the real pipeline (config -> poll -> parse -> normalize -> dedupe ->
SQLite) replays them in publication order, each outlet's feed growing as its stories come out.
The stored clusters are scored pairwise: precision, recall, F1, false merges, and merges across
hard negatives (gold clusters that a story set marks as look-alikes).

    python scripts/dedup_eval.py ../shared/dedup-dev/stories.jsonl [--dedupe event|copies] [--predictions out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sqlite3
import sys
import tempfile
import threading
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from feeds.config import load_settings
from feeds.fetch import Fetcher
from feeds.models import Settings
from feeds.poll import poll_due
from feeds.publish import output_clusters
from feeds.store import open_store
from feeds.timeutil import parse_rfc3339


@dataclass(frozen=True)
class Score:
    """Pairwise clustering quality."""

    precision: float
    recall: float
    f1: float
    true_pairs: int
    false_merges: list[tuple[str, str]]
    missed: list[tuple[str, str]]


def slug(name: str) -> str:
    """An outlet name as a source name."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def feed_xml(outlet: str, items: list[dict[str, str]]) -> str:
    """An RSS 2.0 feed of an outlet's items, newest first, the item id as guid."""
    parts = []
    for item in sorted(items, key=lambda i: i["published"], reverse=True):
        stamp = parse_rfc3339(item["published"])
        assert stamp is not None
        parts.append(
            "<item>"
            f"<title>{escape(item['title'])}</title><link>{escape(item['url'])}</link>"
            f'<guid isPermaLink="false">{escape(item["id"])}</guid>'
            f"<pubDate>{format_datetime(stamp, usegmt=True)}</pubDate>"
            f"<description>{escape(item['summary_html'])}</description>"
            "</item>"
        )
    return (
        f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>{escape(outlet)}</title>'
        f"<link>https://{slug(outlet)}.example/</link><description>{escape(outlet)}</description>"
        f"{''.join(parts)}</channel></rss>"
    )


def run_pipeline(
    items: list[dict[str, str]],
    workdir: Path,
    *,
    extra_config: str = "",
    storage: str = "sqlite:///feeds.db",
    workers: int = 1,
    dedupe: str = "copies",
) -> dict[str, str]:
    """Replay the items through the real pipeline; return item id -> predicted cluster id.
    With several `workers` (a shared store), they take the items in time order from one queue
    and poll at once, each with a store connection of its own, as workers sharing one clock do."""
    outlets = sorted({i["source"] for i in items})
    feeds_dir = workdir / "feeds"
    feeds_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"storage: {storage}", "publish_dir: public", extra_config, "sources:"]
    for outlet in outlets:
        path = feeds_dir / f"{slug(outlet)}.xml"
        path.write_text(feed_xml(outlet, []))
        lines += [f"  - name: {slug(outlet)}", f"    url: feeds/{slug(outlet)}.xml", f"    title: {json.dumps(outlet)}"]
    config = workdir / "feeds.yaml"
    config.write_text("\n".join(lines) + "\n")
    settings = load_settings(config)
    queue = iter(sorted(items, key=lambda i: parse_rfc3339(i["published"]) or datetime.min))
    taking = threading.Lock()
    outlet_locks = {outlet: threading.Lock() for outlet in outlets}  # one outlet's feed file is written by one worker at a time
    seen: dict[str, list[dict[str, str]]] = defaultdict(list)
    failures: list[BaseException] = []

    def replay(share: int) -> None:
        store = open_store(settings.storage, base=workdir)
        fetcher = Fetcher(settings.fetch)
        try:
            while True:
                with taking:
                    item = next(queue, None)
                    if item is None:
                        return
                    outlet_locks[item["source"]].acquire()
                try:
                    seen[item["source"]].append(item)
                    (feeds_dir / f"{slug(item['source'])}.xml").write_text(feed_xml(item["source"], seen[item["source"]]))
                    now = parse_rfc3339(item["published"])
                    assert now is not None
                    poll_due(settings, store, fetcher, now=now + timedelta(minutes=1), force=True, names=[slug(item["source"])])
                finally:
                    outlet_locks[item["source"]].release()
        except BaseException as exc:
            failures.append(exc)
        finally:
            fetcher.close()
            store.close()

    threads = [threading.Thread(target=replay, args=(share,)) for share in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    if dedupe == "event":
        return _predictions(settings, workdir, dedupe, len(items))
    rows = fetch_rows(storage, workdir / "feeds.db", "SELECT g.guid, s.cluster_id FROM guids g JOIN stories s ON s.id = g.story_id")
    return {guid: str(cluster) for guid, cluster in rows}


def poll_in_order(items: list[dict[str, str]], workdir: Path, outlets: list[str], *, dedupe: str = "copies") -> dict[str, str]:
    """Every outlet's whole feed at once, polled one outlet at a time in the order given, all at
    one moment (a window long enough to hold the whole set): what `feeds poll` sees when the
    same feeds are polled in another order. Returns item id -> predicted cluster."""
    latest = max(parse_rfc3339(i["published"]) or datetime.min for i in items)
    feeds_dir = workdir / "feeds"
    feeds_dir.mkdir(parents=True, exist_ok=True)
    lines = ["storage: sqlite:///feeds.db", "publish_dir: public", "dedupe: {window: 3650d}", "sources:"]
    for outlet in outlets:
        own = [i for i in items if i["source"] == outlet]
        (feeds_dir / f"{slug(outlet)}.xml").write_text(feed_xml(outlet, own))
        lines += [f"  - name: {slug(outlet)}", f"    url: feeds/{slug(outlet)}.xml"]
    config = workdir / "feeds.yaml"
    config.write_text("\n".join(lines) + "\n")
    settings = load_settings(config)
    store = open_store(settings.storage, base=workdir)
    fetcher = Fetcher(settings.fetch)
    try:
        for outlet in outlets:
            poll_due(settings, store, fetcher, now=latest + timedelta(minutes=1), force=True, names=[slug(outlet)])
    finally:
        fetcher.close()
        store.close()
    return _predictions(settings, workdir, dedupe, len(items))


def _predictions(settings: Settings, workdir: Path, dedupe: str, count: int) -> dict[str, str]:
    """Item id (the guid) -> the entry an output with `dedupe` puts it in."""
    store = open_store(settings.storage, base=workdir)
    try:
        spec = replace(settings.outputs[0], dedupe=dedupe, limit=count)  # type: ignore[arg-type]
        clusters = output_clusters(settings, store, spec, [s.name for s in settings.sources], now=datetime.now(UTC))
    finally:
        store.close()
    by_story = {s.id: str(c.id) for c in clusters for s in c.members}
    rows = fetch_rows(settings.storage, workdir / "feeds.db", "SELECT g.guid, s.id FROM guids g JOIN stories s ON s.id = g.story_id")
    return {guid: by_story[story_id] for guid, story_id in rows}


def fetch_rows(storage: str, sqlite_path: Path, sql: str) -> list[Any]:
    """The rows of `sql` in a store: PostgreSQL when `storage` is its DSN, else the SQLite file."""
    if storage.startswith("postgresql"):
        import psycopg

        with psycopg.connect(storage) as pg:
            return pg.execute(sql).fetchall()
    with sqlite3.connect(sqlite_path) as db:
        return db.execute(sql).fetchall()


def score(items: list[dict[str, str]], predicted: dict[str, str]) -> Score:
    """Pairwise precision/recall/F1 of predicted clusters against the gold `cluster` labels."""
    gold = {i["id"]: i["cluster"] for i in items}
    pred = {i["id"]: predicted.get(i["id"], f"singleton-{i['id']}") for i in items}
    tp = fp = fn = 0
    false_merges, missed = [], []
    for a, b in itertools.combinations(sorted(gold), 2):
        same_gold, same_pred = gold[a] == gold[b], pred[a] == pred[b]
        if same_gold and same_pred:
            tp += 1
        elif same_pred:
            fp += 1
            false_merges.append((a, b))
        elif same_gold:
            fn += 1
            missed.append((a, b))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Score(precision, recall, f1, tp + fn, false_merges, missed)


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stories", type=Path)
    parser.add_argument("--predictions", type=Path, help="also write item id -> cluster as JSON (for score.py)")
    parser.add_argument(
        "--dedupe", choices=("copies", "event"), default="event", help="score events (the default of outputs) or copy clusters only"
    )
    args = parser.parse_args(argv)
    items = [json.loads(line) for line in args.stories.read_text().splitlines() if line.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        predicted = run_pipeline(items, Path(tmp), dedupe=args.dedupe)
    result = score(items, predicted)
    titles = {i["id"]: f"[{i['cluster']}] {i['title']}" for i in items}
    print(f"items={len(items)} gold_pairs={result.true_pairs}")
    print(f"precision={result.precision:.4f} recall={result.recall:.4f} f1={result.f1:.4f}")
    print(f"false_merges={len(result.false_merges)} missed={len(result.missed)}")
    for a, b in result.false_merges[:10]:
        print(f"  FALSE MERGE {titles[a]}  <>  {titles[b]}")
    for a, b in result.missed[:20]:
        print(f"  MISSED {titles[a]}  <>  {titles[b]}")
    if args.predictions:
        args.predictions.write_text(json.dumps(predicted, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
