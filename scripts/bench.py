#!/usr/bin/env python3
"""Benchmarks for feeds. Figures are measured here, never asserted in tests.

python scripts/bench.py dedupe [--sizes 10000,100000,1000000] [--probes 300] [--rate 5000] [--batch 1]
    Cost per story against SQLite stores already holding N stories, in milliseconds (medians):
    clustering (fingerprint, index lookup, verification on shingle sets, decision) and
    persisting (story row, exact keys, band rows, commit). The stores grew at a steady --rate of
    stories per day, so the dedupe window holds what a deployment's would (band rows older than
    the window are pruned, as feeds does after each poll); --rate 0 puts every stored story in
    the window, the worst case. --batch commits that many stories at once, as a poll that brings
    several new entries does. Target: largest/smallest ratio < 2, well under a millisecond.

python scripts/bench.py publish [--sizes 10000,100000,1000000]
    Time to select the newest 100 entries of an output (what every publish does) from stores of
    N stories in N/2 clusters across 50 sources, for an output of every source and one of 5.

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
    """A new story of ~120 random words from a 20k vocabulary: distinct from every other."""
    text = " ".join(rng.choice(WORDS) for _ in range(120))
    return Story(
        source=f"src{n % 50}",
        guid=f"g{n}",
        id=stable_hash("bench", str(n), size=12),
        title=f"Story {n}",
        link=f"https://src{n % 50}.example/{n}",
        canonical_url=f"https://src{n % 50}.example/{n}",
        first_seen=NOW,
        summary_html=f"<p>{text}</p>",
    )


def fill(store: SQLiteStore, count: int, rng: random.Random, *, rate: float, window: timedelta) -> int:
    """Bulk-load `count` stories first seen at `rate` per day up to NOW (all within the last hour
    if rate is 0), with realistic index rows: 2 exact keys and ~118 shingles each, and 64 band
    rows for those inside the window (older ones are pruned). Returns how many are in the window."""
    db = store._db
    cache_size = db.execute("PRAGMA cache_size").fetchone()[0]
    db.execute("PRAGMA cache_size=-1000000")  # for loading only: a huge cache slows every commit
    db.execute("BEGIN")
    db.execute("INSERT INTO clusters (id, kind, atom_id, lead, created) VALUES (1, 'near', 'urn:x', 'x', 0)")
    spacing = 86400 / rate if rate else 3600 / count
    horizon = NOW.timestamp() - window.total_seconds()
    in_window = 0
    for start in range(0, count, 20_000):
        stories, keys, bands = [], [], []
        for n in range(start, min(count, start + 20_000)):
            sid = f"fill{n:012d}"
            seen = NOW.timestamp() - spacing * (count - n)
            shingles = array("I", sorted(rng.getrandbits(32) for _ in range(118))).tobytes()
            stories.append((n + 1, sid, "s", sid, "t", seen, "h", 1, 1, 120, shingles))
            keys += [(f"u:{rng.getrandbits(64):x}", sid), (f"b:{rng.getrandbits(64):x}", sid)]
            if seen >= horizon:
                in_window += 1
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
    return in_window


COLUMNS = ("stories", "in window", "fill s", "db MB", "fingerprint", "lookup+decide", "clustering", "persist", "total")
WIDTHS = (10, 11, 8, 7, 13, 15, 12, 9, 8)


def bench_dedupe(sizes: list[int], probes: int, *, rate: float, batch: int) -> None:
    """Print the per-story costs at each store size, and the largest/smallest ratios."""
    settings = DedupeSettings()
    grown = f"grown at {rate:.0f} stories/day" if rate else "every story in the dedupe window (worst case)"
    print(f"stores {grown}; {batch} stories per transaction; medians of {probes}; ms per story")
    print("".join(f"{h:>{w}}" for h, w in zip(COLUMNS, WIDTHS, strict=True)))
    results: dict[int, tuple[float, float]] = {}
    for size in sizes:
        rng = random.Random(size)
        with tempfile.TemporaryDirectory() as tmp:
            store = SQLiteStore(Path(tmp) / "bench.db")
            started = time.perf_counter()
            in_window = fill(store, size, rng, rate=rate, window=settings.window)
            filled = time.perf_counter() - started
            phases: list[tuple[float, float, float]] = []
            for start in range(0, probes, batch):
                timing = [0.0, 0.0, 0.0]
                store._db.execute("BEGIN IMMEDIATE")
                tx = _Transaction(store._db)
                for n in range(start, start + batch):
                    story = synthetic_story(rng, 10_000_000 + n)
                    t0 = time.perf_counter()
                    fp = fingerprint(story, settings)
                    t1 = time.perf_counter()
                    decision = assign(fp, story, tx.candidates(fp, since=NOW - settings.window), settings)
                    t2 = time.perf_counter()
                    tx.add_story(story, fp, decision)
                    timing = [timing[0] + t1 - t0, timing[1] + t2 - t1, timing[2] + time.perf_counter() - t2]
                t3 = time.perf_counter()
                store._db.execute("COMMIT")
                timing[2] += time.perf_counter() - t3
                phases.append((timing[0] * 1000 / batch, timing[1] * 1000 / batch, timing[2] * 1000 / batch))
            size_mb = sum(p.stat().st_size for p in Path(tmp).iterdir()) / 1e6
            store.close()
        f, lookup, persist = (statistics.median(p[i] for p in phases) for i in range(3))
        results[size] = (f + lookup, f + lookup + persist)
        row = (
            size,
            in_window,
            f"{filled:.1f}",
            f"{size_mb:.0f}",
            f"{f:.3f}",
            f"{lookup:.3f}",
            f"{f + lookup:.3f}",
            f"{persist:.3f}",
            f"{f + lookup + persist:.3f}",
        )
        print("".join(f"{c!s:>{w}}" for c, w in zip(row, WIDTHS, strict=True)), flush=True)
    small, large = results[min(sizes)], results[max(sizes)]
    print(f"ratio largest/smallest: clustering {large[0] / small[0]:.2f}, with persisting {large[1] / small[1]:.2f}")


def bench_publish(sizes: list[int]) -> None:
    """Print how long selecting an output's newest 100 clusters takes at each store size."""
    print(f"{'stories':>10}{'every source ms':>17}{'5 of 50 sources ms':>20}")
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            store = SQLiteStore(Path(tmp) / "bench.db")
            db = store._db
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO clusters (id, kind, atom_id, lead, created, first_time) VALUES (?, 'near', ?, ?, 0, ?)",
                ((c + 1, f"urn:{c}", f"s{c * 2}", float(c)) for c in range(size // 2)),
            )
            db.executemany(
                "INSERT INTO stories (seq, id, source, guid, title, published, first_seen, content_hash, cluster_id, exact_cluster_id) "
                "VALUES (?, ?, ?, ?, 't', ?, ?, 'h', ?, ?)",
                ((n + 1, f"s{n}", f"src{n % 50}", f"g{n}", float(n // 2), float(n // 2), n // 2 + 1, n // 2 + 1) for n in range(size)),
            )
            db.execute("COMMIT")
            every = [f"src{i}" for i in range(50)]
            timings = []
            for sources in (every, every[:5]):
                samples = []
                for _ in range(20):
                    t0 = time.perf_counter()
                    clusters = store.clusters(sources, exact=False, limit=100)
                    samples.append((time.perf_counter() - t0) * 1000)
                assert len(clusters) == 100
                timings.append(statistics.median(samples))
            store.close()
        print(f"{size:>10}{timings[0]:>17.2f}{timings[1]:>20.2f}", flush=True)


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
    dedupe.add_argument("--rate", type=float, default=5000, help="stories per day the stores grew by (0: all in the window)")
    dedupe.add_argument("--batch", type=int, default=1, help="stories per transaction")
    publish = verbs.add_parser("publish")
    publish.add_argument("--sizes", default="10000,100000,1000000")
    verbs.add_parser("hostile")
    args = parser.parse_args()
    if args.verb == "dedupe":
        bench_dedupe([int(s) for s in args.sizes.split(",")], args.probes, rate=args.rate, batch=args.batch)
    elif args.verb == "publish":
        bench_publish([int(s) for s in args.sizes.split(",")])
    else:
        bench_hostile()
    return 0


if __name__ == "__main__":
    sys.exit(main())
