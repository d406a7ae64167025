"""The store suite, through the Store protocol only, on both backends: a behaviour difference
between SQLite and PostgreSQL is a failing test. The last tests are PostgreSQL's own: leases
shared by workers, migrations run once by processes starting together, and cluster assignment
serialized across real concurrent processes."""

from __future__ import annotations

import multiprocessing
import threading
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from feeds.dedupe import fingerprint
from feeds.errors import StoreError
from feeds.models import DedupeSettings, SourceState
from feeds.store import Store, open_store
from feeds.store.sql import MIGRATIONS
from tests.conftest import NOW
from tests.test_dedupe import BODY, store_batch, story


def opened(storage: str, tmp_path: Path) -> Store:
    return open_store(storage, base=tmp_path)


def state(name: str, **changes: object) -> SourceState:
    return replace(SourceState(name=name, url=f"https://{name}.example/feed", configured_url=f"https://{name}.example/feed"), **changes)  # type: ignore[arg-type]


def test_states_are_saved_and_due_is_a_query(storage: str, tmp_path: Path) -> None:
    store = opened(storage, tmp_path)
    store.save_states(
        [
            state("new"),
            state("due", status="ok", next_poll=NOW - timedelta(minutes=1)),
            state("later", status="ok", next_poll=NOW + timedelta(hours=1)),
            state("gone", status="gone"),
            state("held", status="failing", next_poll=NOW - timedelta(minutes=1), retry_after=NOW + timedelta(hours=2)),
        ]
    )
    store.save_state(state("due", status="ok", next_poll=NOW - timedelta(minutes=2), etag='"v2"'))  # replaces
    assert set(store.states()) == {"new", "due", "later", "gone", "held"}
    assert store.states()["due"].etag == '"v2"' and store.states()["held"].retry_after == NOW + timedelta(hours=2)
    assert store.configured_urls()["later"] == "https://later.example/feed"
    assert sorted(s.name for s in store.due(NOW)) == ["due", "new"]
    store.release()
    assert sorted(s.name for s in store.due(NOW, force=True)) == ["due", "later", "new"]  # never gone, never inside Retry-After
    store.release()
    store.close()


def test_meta_and_output_digests(storage: str, tmp_path: Path) -> None:
    store = opened(storage, tmp_path)
    assert store.meta("k") is None and store.output_digest("all") is None
    store.set_meta("k", "1")
    store.set_meta("k", "2")
    store.save_output("all", "abc", now=NOW)
    store.save_output("all", "def", now=NOW)
    assert store.meta("k") == "2" and store.output_digest("all") == "def"
    store.close()


def test_batches_cluster_copies_keep_edits_and_limit_outputs_to_their_sources(storage: str, tmp_path: Path) -> None:
    store = opened(storage, tmp_path)
    excerpt = story("e", f"<p>{BODY[:200]}</p>", source="blog")
    full = story("f", f"<p>WIRE -- {BODY}</p>", source="wire")
    other = story("x", "<p>" + " ".join(f"unrelated{i}" for i in range(40)) + "</p>", source="wire")
    assert store_batch(store, excerpt, full, other).counts == ((1, 0), (2, 0))
    assert store_batch(store, excerpt, full, other).counts == ((0, 0), (0, 0))  # known by guid: nothing changes
    near = store.clusters(["blog", "wire"], exact=False, limit=10)
    assert [[m.id for m in c.members] for c in near] == [["f", "e"], ["x"]] or [[m.id for m in c.members] for c in near] == [
        ["x"],
        ["f", "e"],
    ]
    merged = next(c for c in near if len(c.members) == 2)
    assert merged.lead.id == "f" and store.cluster_count() == 2
    assert len(store.clusters(["blog", "wire"], exact=True, limit=10)) == 3  # near copies stay apart in exact outputs
    only_blog = store.clusters(["blog"], exact=False, limit=10)
    assert [(c.atom_id, c.lead.id) for c in only_blog] == [(merged.atom_id, "e")]  # the lead's source is left out: e leads there
    assert store.story_counts() == {"blog": 1, "wire": 2}
    explained = store.stored_story("e")
    assert explained is not None and explained.decision["kind"] == "new"
    joined = store.stored_story("f")
    assert joined is not None and joined.decision["kind"] == "near" and joined.cluster_id == merged.id
    # An edit: same guid, new text; the first stamps stay, the updated stamp is when it was seen.
    later = NOW + timedelta(hours=1)
    edited = replace(full, first_seen=later, summary_html=f"<p>WIRE -- {BODY} Update.</p>", content_hash="v2")
    assert store_batch(store, edited).counts == ((0, 1),)
    kept = store.stored_story("f")
    assert kept is not None and kept.story.first_seen == NOW and kept.story.updated == later and kept.cluster_id == merged.id
    store.close()


def test_a_failed_transaction_saves_nothing(storage: str, tmp_path: Path) -> None:
    store = opened(storage, tmp_path)
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.save_states([state("a")])
        raise RuntimeError("the batch failed half way")
    assert store.states() == {}
    store.close()


def test_band_rows_outside_the_window_are_pruned(storage: str, tmp_path: Path) -> None:
    store = opened(storage, tmp_path)
    old = story("old", f"<p>{BODY}</p>")
    store_batch(store, old)
    fp = fingerprint(old, DedupeSettings())
    assert store.prune_index(before=NOW - timedelta(days=1)) == 0
    # its 64 copy bands and its event keys (one per pair of the facts of its headline and lead)
    assert len(fp.event_keys) > 0
    assert store.prune_index(before=NOW + timedelta(seconds=1)) == 64 + len(fp.event_keys)
    assert store.story_counts() == {"a": 1}  # stories stay
    store.close()


def test_backend_errors_leave_as_store_errors(storage: str, tmp_path: Path) -> None:
    store = opened(storage, tmp_path)
    store.close()
    with pytest.raises(StoreError):
        store.story_counts()


# -- PostgreSQL: workers sharing one database ---------------------------------------------------


def test_a_populated_version_7_database_gets_its_hosts_on_upgrade(postgresql: str) -> None:
    import psycopg

    from feeds.store import state_to_json
    from feeds.store.sql import statements

    with psycopg.connect(postgresql, autocommit=True) as db:
        for number in range(1, 8):
            for statement in statements(number, "postgresql"):
                db.execute(statement)
        db.execute("CREATE TABLE feeds_schema (version INTEGER NOT NULL)")
        db.execute("INSERT INTO feeds_schema VALUES (7)")
        for name, url in (("a", "https://user:pw@News.Example:8443/feed?x=1"), ("f", "file:///srv/feed.xml")):
            db.execute("INSERT INTO sources (name, status, state) VALUES (%s, 'ok', %s)", (name, state_to_json(state(name, url=url))))
    store = open_store(postgresql, base=Path())
    assert store.schema_version == 8
    assert dict(store._read("SELECT name, host FROM sources ORDER BY name", ())) == {"a": "news.example", "f": None}
    assert {s.name for s in store.states().values()} == {"a", "f"}  # nothing lost
    store.close()


def test_a_host_is_polled_by_one_worker_at_a_time(postgresql: str) -> None:
    first, second = open_store(postgresql, base=Path()), open_store(postgresql, base=Path())
    on = {
        host: [state(f"{host}{i}", url=f"https://{host}.example/{i}", next_poll=NOW - timedelta(hours=hours)) for i in range(3)]
        for host, hours in (("a", 3), ("b", 2), ("c", 1))
    }
    first.save_states([s for states in on.values() for s in states])
    mine = {s.name for s in first.due(NOW, hosts=1)}
    assert mine == {"a0", "a1", "a2"}  # one whole host: the one due first
    theirs = {s.name for s in second.due(NOW, limit=2, hosts=2)}
    assert len(theirs) == 2 and not theirs & mine  # other hosts only
    taken = {n[0] for n in theirs}
    first.save_state(replace(on["a"][0], last_poll=NOW, next_poll=NOW + timedelta(hours=1)))  # polled: its claim ends
    again = {s.name for s in first.due(NOW, hosts=3)}
    assert not {n[0] for n in again} & taken  # never a host the other worker is polling, even while first holds none of it
    assert {s.name for s in second.due(NOW, hosts=3)} == {f"{h}{i}" for h in taken for i in range(3)} - theirs  # its own host: yes
    second.release()
    assert {s.name[0] for s in first.due(NOW, hosts=3)} <= taken  # released: the host is free for anyone
    first.close()
    second.close()


def test_workers_claim_disjoint_sources_and_leases_end(postgresql: str) -> None:
    first, second = open_store(postgresql, base=Path()), open_store(postgresql, base=Path())
    first.save_states([state(f"s{i}") for i in range(5)])
    mine = {s.name for s in first.due(NOW, limit=3)}
    theirs = {s.name for s in second.due(NOW)}
    assert len(mine) == 3 and theirs == {f"s{i}" for i in range(5)} - mine  # SKIP LOCKED and leases: no source twice
    assert first.due(NOW) == [] and second.due(NOW) == []
    first.release()  # a clean shutdown gives its sources back at once
    assert {s.name for s in second.due(NOW)} == mine
    # A worker killed with kill -9 never releases: its claims end with the lease.
    assert first.due(NOW + timedelta(minutes=5)) == []
    assert {s.name for s in first.due(NOW + timedelta(minutes=11))} == {f"s{i}" for i in range(5)}
    # A forced cycle polls each source once, whichever worker polled it since the cycle began.
    first.release()
    assert "s0" in {s.name for s in second.due(NOW + timedelta(minutes=12), force=True)}  # second's cycle begins
    assert first.due(NOW + timedelta(minutes=12), force=True) == []  # first's too (second holds everything)
    second.save_states([state("s0", status="ok", last_poll=NOW, next_poll=NOW + timedelta(hours=1))])  # polled: claim ends
    assert "s0" not in {s.name for s in first.due(NOW + timedelta(minutes=12), force=True)}  # polled in its cycle
    first.release()
    assert "s0" not in {s.name for s in second.due(NOW + timedelta(minutes=12), force=True)}
    second.release()
    assert "s0" in {s.name for s in second.due(NOW + timedelta(minutes=12), force=True)}  # a new cycle
    second.release()
    # A worker reading the config late never resets a source another worker has polled.
    second.add_states([state("s0"), state("s9")])
    assert first.states()["s0"].status == "ok" and "s9" in first.states()
    first.close()
    second.close()


def test_a_lost_database_connection_is_replaced(postgresql: str) -> None:
    import psycopg

    store = open_store(postgresql, base=Path())
    store.save_states([state("a")])
    with psycopg.connect(postgresql, autocommit=True) as admin:  # as a database restart does to every connection
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (f"feeds {store.worker}"[:63],),  # type: ignore[attr-defined]
        ).fetchall()
    assert killed
    assert set(store.states()) == {"a"}  # the pool noticed and connected again: nothing to restart
    store.save_states([state("b")])
    assert set(store.states()) == {"a", "b"}
    store.close()


def test_processes_starting_together_migrate_once(postgresql: str) -> None:
    versions: list[int] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            store = open_store(postgresql, base=Path())
            versions.append(store.schema_version)  # type: ignore[attr-defined]
            store.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and versions == [len(MIGRATIONS)] * 8


def _ingest_copies(url: str, source: str, start: threading.Barrier | None, count: int) -> None:
    store = open_store(url, base=Path())
    for n in range(count):
        if start is not None:
            start.wait(timeout=60)  # a partner that died breaks the barrier instead of hanging the test
        body = "<p>" + " ".join(f"story{n}word{i}" for i in range(60)) + "</p>"  # a text of its own for each n
        store_batch(store, story(f"{source}-{n}", body if source == "a" else body.replace("<p>", "<p>WIRE -- "), source=source))
    store.close()


def test_copies_ingested_by_two_processes_at_once_make_one_cluster(postgresql: str) -> None:
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    workers = [context.Process(target=_ingest_copies, args=(postgresql, source, start, 10)) for source in ("a", "b")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    store = open_store(postgresql, base=Path())
    clusters = store.clusters(["a", "b"], exact=False, limit=100)
    assert len(clusters) == 10 and all(len(c.members) == 2 for c in clusters)  # one cluster per story, never two
    assert store.story_counts() == {"a": 10, "b": 10}
    store.close()


def test_deleted_stories_take_their_index_and_are_not_news_again(storage: str, tmp_path: Path) -> None:
    store = opened(storage, tmp_path)
    excerpt = story("e", f"<p>{BODY[:200]}</p>", source="blog")
    full = story("f", f"<p>WIRE -- {BODY}</p>", source="wire")
    store_batch(store, excerpt, full)
    assert [s for s, *_ in store.expiring(before=NOW + timedelta(days=1))] == ["e", "f"]
    assert store.expiring(before=NOW - timedelta(days=1)) == []
    assert store.source_stories("wire") == ["f"]
    assert store.delete_stories(["f"], now=NOW) == 1  # the lead goes: the excerpt leads what is left
    (cluster,) = store.clusters(["blog", "wire"], exact=False, limit=10)
    assert cluster.lead.id == "e" and [m.id for m in cluster.members] == ["e"]
    assert store.event_links(["e", "f"]) == [] or all("f" not in (a, b) for a, b, _ in store.event_links(["e"]))
    assert store_batch(store, full).counts == ((0, 0),)  # its guid is remembered: not stored again
    store.delete_stories(["e"], now=NOW)
    assert store.clusters(["blog", "wire"], exact=False, limit=10) == [] and store.story_counts() == {}
    store.shrink()
    store.close()


def test_archive_pages_hold_each_cluster_once(storage: str, tmp_path: Path) -> None:
    store = opened(storage, tmp_path)
    older = story("o", "<p>" + " ".join(f"older{i}" for i in range(40)) + "</p>", source="wire")
    newer = story("n", "<p>" + " ".join(f"newer{i}" for i in range(40)) + "</p>", source="wire")
    store_batch(store, replace(older, published=NOW - timedelta(days=2)), replace(newer, published=NOW - timedelta(days=1)))
    pending = store.unarchived(["wire"], exact=False, output="all", before=NOW, limit=10)
    assert [c.lead.id for c in pending] == ["o", "n"]  # oldest first
    assert store.unarchived(["wire"], exact=False, output="all", before=NOW - timedelta(days=1), limit=10)[0].lead.id == "o"
    store.add_archive_page("all", 1, [pending[0].id], now=NOW)
    assert store.archive_pages("all") == [1] and store.archive_pages("other") == []
    assert [c.lead.id for c in store.unarchived(["wire"], exact=False, output="all", before=NOW, limit=10)] == ["n"]
    assert len(store.unarchived(["wire"], exact=False, output="other", before=NOW, limit=10)) == 2
    store.close()
