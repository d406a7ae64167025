#!/usr/bin/env python3
"""Benchmarks for feeds. Figures are measured here, never asserted in tests.

python scripts/bench.py dedupe [--sizes 10000,100000,1000000] [--probes 300]
    Cost per story of clustering (fingerprint + index lookup + verification + insert, one
    transaction each) against SQLite stores already holding N stories inside the dedupe
    window (the worst case: nothing pruned). Target: largest/smallest ratio < 2, well under
    a millisecond of store work per story.

python scripts/bench.py hostile
    Peak memory (RSS) of polling the largest hostile sources: a 200 MB gzip bomb, a huge body,
    billion laughs. Each runs in a fresh process so the peaks do not mix.
"""

from __future__ import annotations

import argparse
import gzip
import random
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from feeds.dedupe import assign, fingerprint  # noqa: E402
from feeds.models import DedupeSettings, Story  # noqa: E402
from feeds.normalize import stable_hash  # noqa: E402
from feeds.store.sqlite import SQLiteStore, _Transaction  # noqa: E402

NOW = datetime(2026, 11, 25, tzinfo=UTC)
WORDS = [f"w{i}" for i in range(20_000)]


def synthetic_story(rng: random.Random, n: int) -> Story:
    """A story of ~120 random words from a 20k vocabulary: distinct from every other."""
    text = " ".join(rng.choice(WORDS) for _ in range(120))
    return Story(
        source=f"src{n % 50}",
        guid=f"g{n}",
        id=stable_hash("bench", str(n), size=12),
        title=f"Story {n}",
        link=f"https://src{n % 50}.example/{n}",
        canonical_url=f"https://src{n % 50}.example/{n}",
        first_seen=NOW - timedelta(seconds=n % 86400),
        summary_html=f"<p>{text}</p>",
    )


def fill(store: SQLiteStore, count: int, rng: random.Random, *, span: timedelta) -> None:
    """Bulk-load `count` stories first seen over `span` before NOW, with realistic index rows
    (2 exact keys, 64 band keys, ~118 shingles each)."""
    db = store._db
    cache_size = db.execute("PRAGMA cache_size").fetchone()[0]
    db.execute("PRAGMA cache_size=-1000000")  # for loading only: a huge cache slows every commit
    db.execute("BEGIN")
    db.execute("INSERT INTO clusters (id, kind, atom_id, lead, created) VALUES (1, 'near', 'urn:x', 'x', 0)")
    batch = 20_000
    for start in range(0, count, batch):
        stories, keys, bands = [], [], []
        for n in range(start, min(count, start + batch)):
            sid = f"fill{n:012d}"
            seen = NOW.timestamp() - span.total_seconds() * n / count
            shingles = array("I", sorted(rng.getrandbits(32) for _ in range(118))).tobytes()
            stories.append((n + 1, sid, "s", sid, "t", seen, "h", 1, 1, 120, shingles))
            keys += [(f"u:{rng.getrandbits(64):x}", sid), (f"b:{rng.getrandbits(64):x}", sid)]
            bands += [(rng.getrandbits(63), seen, n + 1) for _ in range(64)]
        db.executemany(
            "INSERT INTO stories (seq, id, source, guid, title, first_seen, content_hash, cluster_id, "
            "exact_cluster_id, words, shingles) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            stories,
        )
        db.executemany("INSERT INTO story_keys VALUES (?, ?)", keys)
        db.executemany("INSERT OR IGNORE INTO story_bands VALUES (?, ?, ?)", bands)
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # as auto-checkpointing would have done along the way
    db.execute(f"PRAGMA cache_size={cache_size}")


def bench_dedupe(sizes: list[int], probes: int, *, span: timedelta) -> None:
    settings = DedupeSettings()
    in_window = (
        "all in the window"
        if span <= settings.window
        else f"spread over {span.days} days, index pruned to the {settings.window.days}-day window"
    )
    print(f"stories {in_window}; one transaction per story; medians of {probes}; milliseconds")
    header = ("stories", "fill s", "db MB", "fingerprint", "lookup+decide", "clustering", "persist", "total")
    print("".join(f"{h:>{w}}" for h, w in zip(header, (10, 8, 7, 13, 15, 12, 9, 8), strict=True)))
    results: dict[int, tuple[float, float]] = {}
    for size in sizes:
        rng = random.Random(size)
        with tempfile.TemporaryDirectory() as tmp:
            store = SQLiteStore(Path(tmp) / "bench.db")
            started = time.perf_counter()
            fill(store, size, rng, span=span)
            store.prune_index(before=NOW - settings.window)
            filled = time.perf_counter() - started
            phases: list[tuple[float, float, float]] = []
            for n in range(probes):
                story = synthetic_story(rng, 10_000_000 + n)
                t0 = time.perf_counter()
                fp = fingerprint(story, settings)
                t1 = time.perf_counter()
                store._db.execute("BEGIN IMMEDIATE")
                tx = _Transaction(store._db)
                decision = assign(fp, story, tx.candidates(fp, since=NOW - settings.window), settings)
                t2 = time.perf_counter()
                tx.add_story(story, fp, decision)
                store._db.execute("COMMIT")
                t3 = time.perf_counter()
                phases.append(((t1 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000))
            size_mb = sum(p.stat().st_size for p in Path(tmp).iterdir()) / 1e6
            store.close()
        f, lookup, persist = (statistics.median(p[i] for p in phases) for i in range(3))
        results[size] = (f + lookup, f + lookup + persist)
        row = (
            f"{size}",
            f"{filled:.1f}",
            f"{size_mb:.0f}",
            f"{f:.3f}",
            f"{lookup:.3f}",
            f"{f + lookup:.3f}",
            f"{persist:.3f}",
            f"{f + lookup + persist:.3f}",
        )
        print("".join(f"{c:>{w}}" for c, w in zip(row, (10, 8, 7, 13, 15, 12, 9, 8), strict=True)), flush=True)
    small, large = results[min(sizes)], results[max(sizes)]
    print(f"ratio largest/smallest: clustering {large[0] / small[0]:.2f}, total with persisting {large[1] / small[1]:.2f}")


HOSTILE_CHILD = r"""
import json, sys, time
from feeds.fetch import Fetcher
from feeds.models import SourceState
from feeds.parse import parse_feed
url = sys.argv[1]
def hwm():  # peak RSS of this address space (ru_maxrss would include the parent's, across exec)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
before = hwm()
started = time.perf_counter()
result = Fetcher().fetch(SourceState(name="h", url=url, configured_url=url))
outcome = result.error or "fetched"
if result.status == 200:
    try:
        outcome = "parsed: " + str(parse_feed("h", result.body, result.headers, url=url).warning)
    except Exception as exc:
        outcome = f"parse error: {exc}"
peak = hwm()
print(json.dumps({"seconds": round(time.perf_counter() - started, 3), "rss_start_mb": round(before / 1024, 1),
                  "rss_peak_mb": round(peak / 1024, 1), "outcome": outcome[:110]}))
"""


def bench_hostile() -> None:
    from tests.conftest import FeedServer
    from tests.test_hostile import BILLION_LAUGHS

    server = FeedServer()  # in this process; the fetching child measures only its own memory
    server.serve("/gzip-bomb", gzip.compress(b"\0" * 200_000_000, 9), headers={"Content-Encoding": "gzip"})
    server.serve("/huge-declared", b"<rss>" + b"x" * 100_000_000)
    server.serve("/huge-undeclared", b"<rss>" + b"x" * 100_000_000, headers={"Content-Length": "", "Connection": "close"})
    server.serve("/billion-laughs", BILLION_LAUGHS)
    try:
        for case in ("gzip-bomb", "huge-declared", "huge-undeclared", "billion-laughs"):
            out = subprocess.run(
                [sys.executable, "-c", HOSTILE_CHILD, server.url(f"/{case}")], cwd=ROOT, capture_output=True, text=True, check=True
            )
            print(case, out.stdout.strip())
    finally:
        server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)
    dedupe = verbs.add_parser("dedupe")
    dedupe.add_argument("--sizes", default="10000,100000,1000000")
    dedupe.add_argument("--probes", type=int, default=300)
    dedupe.add_argument("--span-days", type=float, default=365, help="first-seen spread of the stored stories (<= 3: worst case)")
    verbs.add_parser("hostile")
    args = parser.parse_args()
    if args.verb == "dedupe":
        bench_dedupe([int(s) for s in args.sizes.split(",")], args.probes, span=timedelta(days=args.span_days))
    else:
        bench_hostile()
    return 0


if __name__ == "__main__":
    sys.exit(main())
