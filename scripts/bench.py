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

python scripts/bench.py due [--sizes 1000,100000]
    Loading a config of N sources (the load, and the whole `feeds check` command), and a daemon
    tick's due selection among them. Targets at 100,000: `feeds check` < 5 s, due selection < 50 ms.

python scripts/bench.py hostile
    Peak memory (RSS) of polling the largest hostile sources: a 200 MB gzip bomb, a huge body,
    billion laughs. Each runs in a fresh process so the peaks do not mix.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import html
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from feeds.dedupe import fingerprint, plan, probe  # noqa: E402
from feeds.models import DedupeSettings, Story  # noqa: E402
from feeds.normalize import stable_hash  # noqa: E402
from feeds.store.sqlite import SQLiteStore  # noqa: E402
from scripts.dedup_eval import fetch_rows  # noqa: E402

NOW = datetime(2026, 11, 25, tzinfo=UTC)
WORDS = [f"w{i}" for i in range(20_000)]
NAMES = [f"Name{i}" for i in range(2_000)]


def synthetic_story(rng: random.Random, n: int) -> Story:
    """A new story of ~120 random words from a 20k vocabulary, with names and numbers among them
    (what event facts are read from): distinct from every other."""
    words = [rng.choice(WORDS) for _ in range(120)]
    for place in range(0, 120, 12):  # ten facts: capitalized names from a pool of 2,000, and amounts
        words[place] = rng.choice(NAMES) if place % 24 else f"${rng.randint(1, 999)} million"
    text = " ".join(words)
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
    rows for those inside the window (older ones are pruned), and 45 event-key rows (pairs of its
    10 facts). Returns how many are in the window."""
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
                bands += [(rng.getrandbits(63), seen, n + 1) for _ in range(64 + 45)]
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
                stories = [synthetic_story(rng, 10_000_000 + n) for n in range(start, start + batch)]
                t0 = time.perf_counter()
                polls = [(stories, [fingerprint(story, settings) for story in stories])]
                t1 = time.perf_counter()
                with store.transaction() as tx:
                    decided = plan(polls, tx.lookup(probe(polls, since=NOW - settings.window)), settings, {})
                    t2 = time.perf_counter()
                    tx.save(decided)
                t3 = time.perf_counter()
                phases.append(((t1 - t0) * 1000 / batch, (t2 - t1) * 1000 / batch, (t3 - t2) * 1000 / batch))
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


# -- cycle: a whole poll cycle against a local corpus, beside lemon24's reader -------------------

# A news-sized vocabulary (4,000 words): unrelated stories share few word triples, as real ones do.
_ENDINGS = "a e i o u an en in on ar er or al el il ol us as is os um am em im om ux ax ex ix ox ald eld ild old und and end ind ond ust"
LOREM = [a + b + c for a in ["ba", "ko", "mi", "ru", "se", "ta", "vo", "li", "de", "na"] for b in "rlnstmkdpv" for c in _ENDINGS.split()]


class Corpus:
    """Deterministic feeds: `sources` feeds of `entries` entries, RSS 2.0 and Atom alternating,
    HTML summaries with entities and relative links; every 5th story is a wire story that three
    outlets carry (new headline, boilerplate, a dateline), so dedupe does real work."""

    def __init__(self, sources: int, entries: int, *, seed: int = 20261207) -> None:
        self.sources, self.entries = sources, entries
        self.rng = random.Random(seed)
        self.version = [0] * sources  # bumped when a source changes
        self.wire: dict[int, str] = {}

    def text(self, key: int) -> str:
        rng = random.Random(key)
        return " ".join(rng.choice(LOREM) + (str(rng.randint(0, 99)) if rng.random() < 0.2 else "") for _ in range(90))

    def story(self, source: int, n: int) -> tuple[str, str, str]:
        """(id, title, html) of entry n of a source."""
        if n % 5 == 0:  # a wire story: group g carried by sources g, g+1, g+2
            group = (source // 3) * 1000 + n
            body = self.text(group)
            return (
                f"s{source}-{n}",
                f"Outlet {source} headline {n}: {body[:40]}",
                f"<p>HARBOUR CITY &mdash; {body}</p><p>Read more at Outlet {source}.</p>",
            )
        body = self.text(source * 100_000 + n)
        return (
            f"s{source}-{n}",
            f"Local story {n} of outlet {source}",
            f'<p>{body} &amp; more.</p><p><a href="/more/{n}">More</a> <img src="img/{n}.jpg"></p>',
        )

    def expected_groups(self) -> int:
        """How many multi-outlet clusters the corpus holds (wire stories of complete triples)."""
        return (self.sources // 3) * len([n for n in range(self.entries) if n % 5 == 0])

    def body(self, source: int) -> bytes:
        first = self.version[source]
        numbers = range(first, first + self.entries)
        stamp = lambda n: datetime(2026, 11, 20, tzinfo=UTC) + timedelta(minutes=10 * n + source % 7)  # noqa: E731
        if source % 2:
            items = "".join(
                f"<entry><id>urn:{i}</id><title>{html.escape(t)}</title><link href='https://o{source}.example/{i}'/>"
                f"<updated>{stamp(n).strftime('%Y-%m-%dT%H:%M:%SZ')}</updated><summary type='html'>{html.escape(h)}</summary></entry>"
                for n in numbers
                for i, t, h in [self.story(source, n)]
            )
            return (
                f"<?xml version='1.0' encoding='utf-8'?><feed xmlns='http://www.w3.org/2005/Atom'><title>Outlet {source}</title>"
                f"<id>urn:outlet:{source}</id><updated>2026-11-20T00:00:00Z</updated><link href='https://o{source}.example/'/>{items}</feed>"
            ).encode()
        items = "".join(
            f"<item><guid isPermaLink='false'>{i}</guid><title>{html.escape(t)}</title><link>https://o{source}.example/{i}</link>"
            f"<pubDate>{stamp(n).strftime('%a, %d %b %Y %H:%M:%S GMT')}</pubDate><description>{html.escape(h)}</description></item>"
            for n in numbers
            for i, t, h in [self.story(source, n)]
        )
        return (
            f"<?xml version='1.0' encoding='utf-8'?><rss version='2.0'><channel><title>Outlet {source}</title>"
            f"<link>https://o{source}.example/</link><description>d</description>{items}</channel></rss>"
        ).encode()


class CorpusServer:
    """Serves a Corpus on several loopback addresses (so per-host limits behave as on the
    internet) with ETag, Last-Modified, 304 and keep-alive; `validators=False` makes every
    answer a full 200 (the hash-skip case); `latency` models a network."""

    def __init__(self, corpus: Corpus, *, hosts: int, latency: float) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.corpus, self.latency, self.validators = corpus, latency, True
        self.cache: dict[int, tuple[bytes, str]] = {}
        self.hits = 0  # requests answered (a client that skipped sources would show here)
        self.lock = threading.Lock()
        bench = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if bench.latency:
                    time.sleep(bench.latency)
                with bench.lock:
                    bench.hits += 1
                source = int(self.path.strip("/").split(".")[0][1:])
                body, etag = bench.get(source)
                if bench.validators and self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                if bench.validators:
                    self.send_header("ETag", etag)
                    self.send_header("Last-Modified", "Fri, 20 Nov 2026 00:00:00 GMT")
                self.end_headers()
                self.wfile.write(body)

        self.servers = [ThreadingHTTPServer((f"127.0.0.{2 + h}", 0), Handler) for h in range(hosts)]
        for server in self.servers:
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def get(self, source: int) -> tuple[bytes, str]:
        cached = self.cache.get(source)
        if cached is None or cached[1] != f'"{source}-{self.corpus.version[source]}"':
            cached = (self.corpus.body(source), f'"{source}-{self.corpus.version[source]}"')
            self.cache[source] = cached
        return cached

    def url(self, source: int) -> str:
        server = self.servers[source % len(self.servers)]
        host, port = server.server_address[:2]
        return f"http://{host}:{port}/s{source}.xml"

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


def tree_rss_mb(pid: int) -> float:
    """Memory of a process and all its descendants (the forkserver's workers included), as the
    sum of their proportional set sizes: pages that forked workers share are counted once, not
    once per process as a sum of RSS would."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            rollup = Path(f"/proc/{current}/smaps_rollup").read_text()
            total += next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
            for task in os.listdir(f"/proc/{current}/task"):
                pending.extend(int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split())
        except (OSError, StopIteration, ValueError):
            continue
    return total / 1024


def run_measured(
    command: list[str], *, cwd: Path, copies: int = 1, env: dict[str, str] | None = None
) -> tuple[float, float, str, list[str]]:
    """(wall seconds, peak memory (PSS) of the process trees in MB, stderr, each copy's stdout) of
    `copies` of one command run side by side (worker processes sharing a store)."""
    started = time.perf_counter()
    environment = {**os.environ, **(env or {})}
    with contextlib.ExitStack() as files:
        outputs = [files.enter_context(tempfile.TemporaryFile(mode="w+")) for _ in range(copies)]
        processes = [subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.PIPE, text=True, env=environment) for out in outputs]
        peak = 0.0
        while any(p.poll() is None for p in processes):
            peak = max(peak, sum(tree_rss_mb(p.pid) for p in processes if p.poll() is None))
            time.sleep(0.05)
        stderr = "".join(p.communicate()[1] for p in processes)
        stdouts = []
        for out in outputs:
            out.seek(0)
            stdouts.append(out.read())
    return time.perf_counter() - started, peak, stderr, stdouts


def query(storage: str, work: Path, sql: str) -> Any:
    """The first column of the first row of `sql` in the benchmark's store (SQLite or PostgreSQL)."""
    rows = fetch_rows(storage, work / "feeds.db", sql)
    return rows[0][0] if rows else None


def store_bytes(storage: str, work: Path) -> float:
    """The size of the benchmark's store on disk."""
    if storage.startswith("postgresql"):
        tables = "('meta','sources','clusters','stories','guids','story_keys','story_bands','outputs')"
        sql = (
            f"SELECT SUM(pg_total_relation_size(c.oid)) FROM pg_class c "
            f"WHERE c.relname IN {tables} AND c.relnamespace = current_schema()::regnamespace"
        )
        return float(query(storage, work, sql) or 0)
    return float((work / "feeds.db").stat().st_size)


class Schema:
    """A fresh PostgreSQL schema for one benchmark run (dropped after): `url` reaches it."""

    def __init__(self, base: str) -> None:
        import psycopg

        self.base, self.name = base, f"bench_{os.getpid()}_{int(time.time() * 1000)}"
        with psycopg.connect(base, autocommit=True) as db:
            db.execute(f"CREATE SCHEMA {self.name}")
        self.url = f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{self.name}"

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(self.base, autocommit=True) as db:
            db.execute(f"DROP SCHEMA {self.name} CASCADE")


READER_CHILD = r"""
import sys
from reader import make_reader
db, urls, workers = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
reader = make_reader(db)
known = {f.url for f in reader.get_feeds()}
for url in urls:
    if url not in known:
        reader.add_feed(url)
reader.update_feeds(scheduled=False, workers=workers)  # every feed, as `feeds poll --force` does
reader.close()
"""


def bench_cycle(
    sources: int,
    entries: int,
    *,
    hosts: int,
    latency_ms: float,
    repeat: int,
    with_reader: bool,
    storage: str | None = None,
    workers: int = 1,
) -> None:
    """Poll cycles of feeds (and of lemon24's reader) against one local corpus; print a table."""
    corpus = Corpus(sources, entries)
    server = CorpusServer(corpus, hosts=hosts, latency=latency_ms / 1000)
    rows: dict[str, dict[str, list[float]]] = {}
    sizes: dict[str, float] = {}
    statements: float | None = None
    try:
        for attempt in range(repeat):
            work = Path(tempfile.mkdtemp(prefix="feeds-bench-"))
            schema = Schema(storage) if storage else None
            url = schema.url if schema else "sqlite:///feeds.db"
            config = work / "feeds.yaml"
            lines = [f"storage: '{url}'", "publish_dir: public", "fetch: {workers: 8, per_host: 2}", "sources:"]
            lines += [f"  - {{name: s{i}, url: '{server.url(i)}'}}" for i in range(sources)]
            config.write_text("\n".join(lines) + "\n")
            urls = ",".join(server.url(i) for i in range(sources))
            corpus.version = [0] * sources
            server.validators = True
            plans = [
                ("first full cycle", None),
                ("no-change cycle (304)", None),
                ("unchanged bodies, no validators", "novalidators"),
                ("10% of sources changed", "change"),
            ]
            for label, setup in plans:
                if setup == "novalidators":
                    server.validators = False
                elif setup == "change":
                    server.validators = True
                    for i in range(0, sources, 10):
                        corpus.version[i] += 1
                server.hits = 0
                seconds, peak, stderr, stdouts = run_measured(
                    [sys.executable, "-m", "feeds", "poll", "--force", "--json", "-c", str(config)], cwd=ROOT, copies=workers
                )
                if "Traceback" in stderr:
                    raise SystemExit(f"feeds failed during {label!r}:\n{stderr[-3000:]}")
                if server.hits != sources:
                    raise SystemExit(f"feeds made {server.hits} requests for {sources} sources during {label!r}")
                row = rows.setdefault(label, {})
                row.setdefault("feeds_s", []).append(seconds)
                row.setdefault("feeds_mb", []).append(peak)
                if with_reader:
                    server.hits = 0
                    r_seconds, r_peak, r_err, _ = run_measured(
                        [sys.executable, "-c", READER_CHILD, str(work / "reader.db"), urls, "8"], cwd=ROOT
                    )
                    if "Traceback" in r_err:
                        raise SystemExit(f"reader failed during {label!r}:\n{r_err[-3000:]}")
                    if server.hits != sources:
                        raise SystemExit(f"reader made {server.hits} requests for {sources} sources during {label!r}")
                    row.setdefault("reader_s", []).append(r_seconds)
                    row.setdefault("reader_mb", []).append(r_peak)
                if attempt == 0 and label == "first full cycle":
                    if workers > 1:  # each worker published what it had seen when its cycle ended
                        subprocess.run([sys.executable, "-m", "feeds", "publish", "-q", "-c", str(config)], cwd=ROOT, check=True)
                    verify(work, corpus, url)
                    stored = query(url, work, "SELECT COUNT(*) FROM stories")
                    sizes["feeds"] = store_bytes(url, work) / max(stored, 1) / 1024
                    sent = [json.loads(out).get("statements") for out in stdouts if out.strip()]
                    if sent and all(n is not None for n in sent):  # PostgreSQL counts what each worker sent
                        statements = sum(sent) / max(stored, 1)
                    if with_reader:
                        sizes["reader"] = (work / "reader.db").stat().st_size / max(stored, 1) / 1024
            shutil.rmtree(work, ignore_errors=True)
            if schema is not None:
                schema.drop()
    finally:
        server.close()
    where = "PostgreSQL" if storage else "SQLite"
    print(
        f"\n{sources} sources x {entries} entries, {hosts} loopback hosts, latency {latency_ms:g} ms, "
        f"{where}, {workers} worker process{'es' if workers > 1 else ''}, median of {repeat}"
    )
    print(
        f"{'cycle':<34} {'feeds s':>8} {'feeds/s':>8} {'entries/s':>10} {'peak MB':>8}"
        + (f" {'reader s':>9} {'reader/s':>9} {'peak MB':>8} {'ratio':>6}" if with_reader else "")
    )
    for label, row in rows.items():
        seconds = statistics.median(row["feeds_s"])
        peak = statistics.median(row["feeds_mb"])
        line = f"{label:<34} {seconds:>8.2f} {sources / seconds:>8.1f} {sources * entries / seconds:>10.0f} {peak:>8.0f}"
        if with_reader:
            r_seconds = statistics.median(row["reader_s"])
            line += (
                f" {r_seconds:>9.2f} {sources / r_seconds:>9.1f} {statistics.median(row['reader_mb']):>8.0f} {r_seconds / seconds:>5.2f}x"
            )
        print(line)
    print("store size per story: " + ", ".join(f"{name} {kb:.1f} KB" for name, kb in sizes.items()))
    if statements is not None:
        print(f"statements sent to the database per stored story (first cycle, all workers): {statements:.2f}")


def verify(work: Path, corpus: Corpus, storage: str) -> None:
    """What was measured is what the corpus holds: every story stored, the syndication clustered."""
    stored = query(storage, work, "SELECT COUNT(*) FROM stories")
    groups = query(
        storage, work, "SELECT COUNT(*) FROM (SELECT cluster_id FROM stories GROUP BY cluster_id HAVING COUNT(DISTINCT source) > 1) g"
    )
    expected = corpus.sources * corpus.entries
    problems = []
    if stored != expected:
        problems.append(f"stored {stored} stories, the corpus has {expected}")
    if groups != corpus.expected_groups():
        problems.append(f"{groups} multi-outlet clusters, the corpus has {corpus.expected_groups()}")
    entries = len(json.loads((work / "public" / "all.json").read_bytes())["items"])
    if entries != min(100, expected - 2 * corpus.expected_groups()):
        problems.append(f"all.json has {entries} entries")
    if problems:
        raise SystemExit("verification failed: " + "; ".join(problems))
    print(f"verified: {stored} stories, {groups} multi-outlet clusters, {entries} entries published")


def bench_due(sizes: list[int]) -> None:
    """Loading a config of N sources (in block style, each with a name, URL and two tags): the
    load alone, and the whole `feeds check` command as cron's `feeds poll` pays it; then a daemon
    tick's due selection with 1% of them due."""
    from feeds.config import load_settings
    from feeds.models import SourceState
    from feeds.poll import due_sources

    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "feeds.yaml"
            config.write_text(
                "storage: sqlite:///feeds.db\nsources:\n"
                + "".join(
                    f"  - name: source-{i}\n    url: https://host{i % 500}.example/feed/{i}.xml\n    tags: [news, t{i % 7}]\n"
                    for i in range(size)
                )
            )
            loads, checks = [], []
            for _ in range(3):
                started = time.perf_counter()
                settings = load_settings(config)
                loads.append(time.perf_counter() - started)
                started = time.perf_counter()
                subprocess.run([sys.executable, "-m", "feeds", "check", "-q", "-c", str(config)], cwd=ROOT, check=True)
                checks.append(time.perf_counter() - started)
            print(
                f"config of {size} sources: load {statistics.median(loads):.2f} s, "
                f"`feeds check` {statistics.median(checks):.2f} s (medians of 3)"
            )
            store = SQLiteStore(Path(tmp) / "feeds.db")
            states = [
                SourceState(
                    name=s.name, url=s.url, configured_url=s.url, status="ok", next_poll=NOW + timedelta(minutes=-1 if i % 100 == 0 else 30)
                )
                for i, s in enumerate(settings.sources)
            ]
            store.save_states(states)
            due_sources(settings, store, now=NOW)  # the first tick syncs the config
            timings = []
            for _ in range(7):
                started = time.perf_counter()
                due = due_sources(settings, store, now=NOW)
                timings.append((time.perf_counter() - started) * 1000)
            store.close()
            print(f"due selection, {size} sources ({len(due)} due): {statistics.median(timings):.1f} ms (median of 7)")


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
    cycle = verbs.add_parser("cycle")
    cycle.add_argument("--sources", type=int, default=1000)
    cycle.add_argument("--entries", type=int, default=50)
    cycle.add_argument("--hosts", type=int, default=8, help="loopback addresses serving the corpus (127.0.0.2, ...)")
    cycle.add_argument("--latency-ms", type=float, default=0.0)
    cycle.add_argument("--repeat", type=int, default=3)
    cycle.add_argument("--no-reader", action="store_true", help="skip lemon24's reader (pip install -e '.[bench]')")
    cycle.add_argument("--storage", help="a PostgreSQL DSN to store in (a fresh schema per run) instead of SQLite")
    cycle.add_argument("--workers", type=int, default=1, help="`feeds poll` processes sharing the store (PostgreSQL)")
    due = verbs.add_parser("due")
    due.add_argument("--sizes", default="1000,100000")
    args = parser.parse_args()
    if args.verb == "dedupe":
        bench_dedupe([int(s) for s in args.sizes.split(",")], args.probes, rate=args.rate, batch=args.batch)
    elif args.verb == "publish":
        bench_publish([int(s) for s in args.sizes.split(",")])
    elif args.verb == "cycle":
        bench_cycle(
            args.sources,
            args.entries,
            hosts=args.hosts,
            latency_ms=args.latency_ms,
            repeat=args.repeat,
            with_reader=not args.no_reader,
            storage=args.storage,
            workers=args.workers,
        )
    elif args.verb == "due":
        bench_due([int(s) for s in args.sizes.split(",")])
    else:
        bench_hostile()
    return 0


if __name__ == "__main__":
    sys.exit(main())
