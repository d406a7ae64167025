"""Prometheus metrics: counters the pipeline updates, and gauges read from the store when scraped.

Uses the official client with a registry of our own, so tests and several apps in one process
do not collide. No I/O here except what a scrape asks of the store.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from feeds.errors import FeedsError
from feeds.models import FetchResult, PollOutcome
from feeds.store import Store

REGISTRY = CollectorRegistry(auto_describe=True)
POLLS = Counter("feeds_polls", "Source polls by result", ["result"], registry=REGISTRY)
FETCH_SECONDS = Histogram(
    "feeds_fetch_seconds", "Time to fetch a source", registry=REGISTRY, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
)
FETCH_BYTES = Counter("feeds_fetch_bytes", "Body bytes received from sources", registry=REGISTRY)
PUBLISHES = Counter("feeds_publishes", "Output files rewritten because their bytes changed", registry=REGISTRY)
PUBLISH_SECONDS = Histogram("feeds_publish_seconds", "Time to render and write every output", registry=REGISTRY)
OUTPUT_RESPONSES = Counter("feeds_output_responses", "Responses to output requests by status", ["status"], registry=REGISTRY)
WEBSUB_PUSHES = Counter("feeds_websub_pushes", "WebSub content deliveries by result", ["result"], registry=REGISTRY)


def record_poll(outcome: PollOutcome, result: FetchResult) -> None:
    """Count one poll and its fetch."""
    POLLS.labels(result=outcome.status).inc()
    FETCH_SECONDS.observe(result.elapsed)
    FETCH_BYTES.inc(len(result.body))


class StoreCollector(Collector):
    """Gauges computed from the store at scrape time: stories, clusters, failing sources, freshness."""

    def __init__(self, open_store: Callable[[], Store], clock: Callable[[], datetime]) -> None:
        self.open_store = open_store
        self.clock = clock
        self.lock = threading.Lock()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.lock:
            try:
                store = self.open_store()
            except FeedsError:
                return  # no store to read (`feeds serve` on the published files alone)
            try:
                states = store.states()
                counts = store.story_counts()
                clusters = store.cluster_count()
            finally:
                store.close()
        stories = GaugeMetricFamily("feeds_stories", "Stories stored, by source", labels=["source"])
        for name, count in sorted(counts.items()):
            stories.add_metric([name], count)
        yield stories
        yield GaugeMetricFamily("feeds_clusters", "Published entries (near-duplicate clusters) stored", value=clusters)
        failing = sum(1 for s in states.values() if s.status in ("failing", "gone"))
        yield GaugeMetricFamily("feeds_sources_failing", "Sources failing or gone", value=failing)
        successes = [s.last_success for s in states.values() if s.last_success]
        age = (self.clock() - max(successes)).total_seconds() if successes else float("nan")
        yield GaugeMetricFamily("feeds_last_success_age_seconds", "Seconds since the last successful poll of any source", value=age)


def exposition(extra: Collector | None = None) -> bytes:
    """The Prometheus text format of every metric (plus an extra collector's, if given)."""
    if extra is None:
        return bytes(generate_latest(REGISTRY))
    registry = CollectorRegistry()
    registry.register(extra)
    return bytes(generate_latest(REGISTRY)) + bytes(generate_latest(registry))
