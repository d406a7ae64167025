"""The command line: `feeds run | poll | publish | check | status | clusters | sources`.

The composition root: builds the settings, store and fetcher, calls one function, maps the result
to an exit code (0 ok, 1 some sources failed, 2 bad config or usage). Nothing imports this module.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from feeds import __version__
from feeds.config import find_config, load_settings
from feeds.errors import ConfigError, FeedsError, StoreError
from feeds.fetch import Fetcher
from feeds.models import OutputSpec, PollOutcome, Settings, SourceState, SourceView, word
from feeds.normalize import canonical_url
from feeds.policy import initial_state
from feeds.poll import poll_due
from feeds.publish import missing_outputs, output_clusters, publish_all
from feeds.retention import purge, retain
from feeds.rules import entry_title, reports
from feeds.scheduler import config_digest, utc_now
from feeds.status import source_statuses, stamp, status_json
from feeds.store import STORE_MARKER, Store, open_store
from feeds.timeutil import ago
from feeds.untrusted import terminal_safe
from feeds.workers import Isolated

if TYPE_CHECKING:
    from starlette.routing import Route

    from feeds.manage import ConfigFile
    from feeds.server import HealthCheck

# Commands import what only they need (the web server, the scheduler, config editing, the
# progress bar) where they run: a cron `feeds poll` starts without them.

log = logging.getLogger("feeds")
OK, FAILED, USAGE = 0, 1, 2
INTERRUPTED = 130  # stopped by Ctrl-C or SIGTERM, as shells report it
REPEAT_WINDOW = 10.0
POLL_LOCK_WAIT = 300.0  # seconds a cron `feeds poll` waits for a daemon's cycle on the same store


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every verb."""
    parser = argparse.ArgumentParser(prog="feeds", description="Poll feeds, merge duplicate stories, publish merged feeds.")
    parser.add_argument("--version", action="version", version=f"feeds {__version__}")
    # The common options work before the verb (`feeds -c FILE status`) and after it; given after
    # the verb they win, and not given there they leave what came before (SUPPRESS).
    common = argparse.ArgumentParser(add_help=False)
    for target, default in ((parser, None), (common, argparse.SUPPRESS)):
        target.add_argument(
            "-c",
            "--config",
            type=Path,
            default=default,  # None: looked for (feeds.config.find_config)
            help="config file (default: $FEEDS_CONFIG, else the first of ./feeds.yaml, ./config/feeds.yaml, "
            "~/.config/feeds/feeds.yaml, /etc/feeds/feeds.yaml)",
        )
        target.add_argument(
            "-v", "--verbose", action="count", default=0 if default is None else default, help="more log output (-vv for debug)"
        )
        target.add_argument(
            "-q",
            "--quiet",
            action="store_true",
            default=False if default is None else default,
            help="print nothing on success: only errors (for cron)",
        )
        target.add_argument(
            "--log-format",
            choices=["text", "json"],
            default="text" if default is None else default,
            help="log lines as text (default) or one JSON object per line (for log collectors)",
        )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    run = verbs.add_parser("run", parents=[common], help="the daemon: poll on schedule, republish on change, serve over HTTP")
    run.add_argument("--host", help="address to serve on (default: server.host, 127.0.0.1)")
    run.add_argument("--port", type=int, help="port to serve on (default: server.port, 8080)")
    run.add_argument("--no-serve", action="store_true", help="poll and publish only; serve nothing")
    run.add_argument(
        "--role",
        choices=["all", "worker", "publisher"],
        default="all",
        help="all: poll and publish (default); worker: poll only; publisher: publish from the store only (PostgreSQL deployments)",
    )
    serve = verbs.add_parser("serve", parents=[common], help="serve the published files only (for cron setups)")
    serve.add_argument("--host", help="address to serve on (default: server.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to serve on (default: server.port, 8080)")
    poll = verbs.add_parser("poll", parents=[common], help="poll every due source once, publish, exit (for cron)")
    poll.add_argument("--force", action="store_true", help="also poll sources not yet due (never inside a Retry-After window)")
    poll.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    poll.add_argument("names", nargs="*", metavar="SOURCE", help="poll only these sources")
    verbs.add_parser("publish", parents=[common], help="re-render every output from the store")
    verbs.add_parser("check", parents=[common], help="validate the config; print every error with file:line")
    status = verbs.add_parser("status", parents=[common], help="show each source's polling state")
    status.add_argument("--json", action="store_true", help="print as JSON")
    clusters = verbs.add_parser("clusters", parents=[common], help="show stored stories grouped as they will be published")
    clusters.add_argument("--json", action="store_true", help="print as JSON")
    grouping = clusters.add_mutually_exclusive_group()
    grouping.add_argument("--copies", action="store_true", help="group copies of one text only (as outputs with dedupe: copies)")
    grouping.add_argument("--exact", action="store_true", help="group by exact keys only (as outputs with dedupe: exact)")
    clusters.add_argument("action", nargs="?", choices=["explain"], help="explain STORY_ID: why a story joined its cluster")
    clusters.add_argument("story", nargs="?", metavar="STORY_ID")
    sources = verbs.add_parser("sources", parents=[common], help="list, add, remove, import and export sources (edits the config)")
    sources_verbs = sources.add_subparsers(dest="sources_verb", required=True, metavar="ACTION")
    listing = sources_verbs.add_parser("list", parents=[common], help="the configured sources, with their state")
    listing.add_argument("--json", action="store_true", help="print as JSON")
    add = sources_verbs.add_parser("add", parents=[common], help="add a feed, or the feed a web page names (discovered)")
    add.add_argument("url", metavar="URL", help="a feed's address, a web page's address, or a local file")
    add.add_argument("--name", help="the source's name (default: from the feed's title)")
    add.add_argument("--title", help="a title to show instead of the feed's own")
    add.add_argument("--tags", default="", help="comma-separated tags, e.g. news,local")
    add.add_argument("--pick", type=int, metavar="N", help="which of several discovered feeds to add (1 is the first listed)")
    remove = sources_verbs.add_parser("remove", parents=[common], help="remove sources from the config")
    remove.add_argument("names", nargs="+", metavar="SOURCE")
    remove.add_argument("--purge", action="store_true", help="also delete their stories from the store now")
    importing = sources_verbs.add_parser("import", parents=[common], help="add every feed of an OPML subscription list")
    importing.add_argument("file", type=Path, metavar="FILE.opml")
    importing.add_argument("--tag", action="append", default=[], help="also tag every imported source (repeatable)")
    importing.add_argument("--dry-run", action="store_true", help="say what would be added; change nothing")
    exporting = sources_verbs.add_parser("export", parents=[common], help="write the sources as OPML 2.0 (tags as folders)")
    exporting.add_argument("-o", "--output", type=Path, help="write to this file (default: standard output)")
    reset = sources_verbs.add_parser("reset", parents=[common], help="forget a source's state (resumes a gone source)")
    reset.add_argument("names", nargs="+", metavar="SOURCE")
    prune = verbs.add_parser("prune", parents=[common], help="delete stories older than the retention setting now")
    prune.add_argument("--dry-run", action="store_true", help="say what would be deleted; delete nothing")
    preview = verbs.add_parser("preview", parents=[common], help="what an output would carry now, writing nothing (to tune its rules)")
    preview.add_argument("output", metavar="OUTPUT")
    preview.add_argument("--json", action="store_true", help="print as JSON")
    init = verbs.add_parser("init", parents=[common], help="write a commented starter config and sample feeds (never overwrites)")
    init.add_argument("directory", nargs="?", type=Path, default=Path("."), metavar="DIR", help="where (default: here)")
    migrate = verbs.add_parser("migrate", parents=[common], help="copy a whole store into a new, empty one (e.g. SQLite to PostgreSQL)")
    migrate.add_argument("--from", dest="source", required=True, metavar="URL", help="the store to copy, e.g. sqlite:///feeds.db")
    migrate.add_argument("--to", dest="target", required=True, metavar="URL", help="the new store, e.g. postgresql://feeds@db/feeds")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code. Output piped into a program that stops reading
    (`feeds clusters --json | head`) ends the command quietly, as other Unix tools do."""
    try:
        return _main(argv)
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return OK


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):
        parser.print_help()
        return USAGE
    args = parser.parse_args(argv)
    if args.config is None:
        args.config = find_config()
    level = (
        logging.ERROR
        if args.quiet
        else [logging.WARNING if args.verb not in ("run", "serve") else logging.INFO, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if args.log_format == "json" else SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RepeatFilter())
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("apscheduler").setLevel(max(level, logging.WARNING))
    if args.verb == "migrate":
        return _migrate(args.source, args.target)
    if args.verb == "init":
        from feeds.starter import write_starter

        try:
            written = write_starter(args.directory, now=utc_now())
        except FeedsError as exc:
            _print(f"feeds: {exc}", file=sys.stderr)
            return USAGE
        for path in written:
            _print(f"wrote {path}")
        config = written[0]
        _print(f"next: feeds -c {config} poll   (then feeds -c {config} run, and open http://127.0.0.1:8080/)")
        return OK
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            _print(problem, file=sys.stderr)
        return USAGE
    if args.verb == "check":
        if not args.quiet:
            _print(f"{args.config}: ok ({len(settings.sources)} sources, {len(settings.outputs)} outputs)")
        return OK
    if args.verb == "sources" and args.sources_verb in ("add", "remove", "import", "export", "list"):
        try:
            return _sources(args, settings)
        except FeedsError as exc:
            _print(f"feeds: {exc}", file=sys.stderr)
            return USAGE
    if args.verb == "clusters" and args.action == "explain" and not args.story:
        parser.error("clusters explain needs a STORY_ID")
    if args.verb in ("run", "serve") and not getattr(args, "no_serve", False) and (taken := _address_taken(args, settings)):
        _print(f"feeds: {taken}", file=sys.stderr)
        return USAGE
    if args.verb == "serve":  # the published files are all it needs: it never creates a store
        _serve(args, settings, health=lambda: _files_health(settings))
        return OK
    try:
        # Outputs published from a store that is now gone: refuse to start a second, empty one.
        published = (settings.publish_dir / STORE_MARKER).exists()
        store = open_store(settings.storage, base=settings.path.parent.resolve(), must_exist=published, lease=settings.lease)
    except FeedsError as exc:
        _print(f"feeds: {exc}", file=sys.stderr)
        return USAGE
    try:
        return _dispatch(args, settings, store)
    except FeedsError as exc:
        _print(f"feeds: {exc}", file=sys.stderr)
        return USAGE
    finally:
        store.close()


def _migrate(source_url: str, target_url: str) -> int:
    """`feeds migrate`: every row of one store into a new, empty one, all or nothing."""
    from feeds.store.sql import SQLStore, copy_store

    stores: list[Store] = []
    try:
        source = open_store(source_url, base=Path.cwd(), must_exist=True)
        stores.append(source)
        target = open_store(target_url, base=Path.cwd())
        stores.append(target)
        if not isinstance(source, SQLStore) or not isinstance(target, SQLStore):
            raise StoreError("migrate copies between SQL stores")
        with _progress_bar("copying", enabled=sys.stderr.isatty()) as bar:
            copied = copy_store(source, target, progress=(lambda table, rows: bar(rows, None, table)) if bar else None)
    except FeedsError as exc:
        _print(f"feeds: {exc}", file=sys.stderr)
        return FAILED
    finally:
        for store in stores:
            store.close()
    _print(
        f"copied {copied['stories']:,} stories, {copied['clusters']:,} clusters and {copied['sources']:,} sources; "
        "the source store is unchanged"
    )
    return OK


def _dispatch(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    if args.verb == "run":
        from feeds.scheduler import Daemon
        from feeds.websub import Subscriber

        fetcher = _fetcher(settings)
        runner = _runner(settings)
        announce = _announcer(settings, fetcher)
        subscriber = None
        if settings.websub.public_url and not args.no_serve:
            subscriber = Subscriber(
                settings,
                _store_opener(settings),
                fetcher,
                clock=utc_now,
                on_change=lambda s: announce(publish_all(settings, s, now=utc_now())),
                runner=runner,
            )
        subscribe = (lambda s, now: subscriber.subscribe_due(s, now=now)) if subscriber else None
        daemon = Daemon(settings, store, fetcher, announce=announce, subscribe=subscribe, runner=runner, role=args.role)
        try:
            if args.no_serve:
                daemon.run_forever()
            else:
                daemon.start()
                _serve(
                    args,
                    settings,
                    health=daemon.health,
                    routes=subscriber.routes() if subscriber else [],
                    on_stop=daemon.request_stop,  # at the first signal, not after the server has drained
                    on_hangup=daemon.on_sighup,
                    current=lambda: daemon.settings,
                )
        finally:
            daemon.stop()
            fetcher.close()
            runner.close()
        return OK
    if args.verb == "poll":
        if _unknown_sources(settings, args.names):
            return USAGE
        fetcher = _fetcher(settings)
        runner = _runner(settings)
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if stop.is_set():  # a second Ctrl-C: the user will not wait
                os._exit(128 + signum)
            stop.set()
            fetcher.abort()  # requests in flight end now; what was stored stays

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            with _progress_bar("polling", enabled=sys.stderr.isatty() and not args.json and not args.quiet) as bar:
                outcomes = poll_due(
                    settings,
                    store,
                    fetcher,
                    now=utc_now(),
                    force=args.force,
                    names=args.names,
                    progress=(lambda done, total, o: bar(done, total, f"{o.source} {word(o.status)}")) if bar else None,
                    lock_wait=POLL_LOCK_WAIT,
                    runner=runner,
                    stop=stop,
                )
            if stop.is_set():
                _print(f"feeds: stopped; {sum(o.status != 'failed' for o in outcomes)} sources polled and kept", file=sys.stderr)
                return INTERRUPTED
            written = publish_all(settings, store, now=utc_now())
            _announcer(settings, fetcher)(written)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            fetcher.close()
            runner.close()
        _print_outcomes(outcomes, written, as_json=args.json, quiet=args.quiet, statements=getattr(store, "statements", None))
        return FAILED if any(o.status in ("failed", "gone") for o in outcomes) else OK
    if args.verb == "publish":
        written = publish_all(settings, store, now=utc_now())
        fetcher = _fetcher(settings)
        try:
            _announcer(settings, fetcher)(written)
        finally:
            fetcher.close()
        if not args.quiet:
            for path in written:
                _print(f"wrote {path}")
        return OK
    if args.verb == "status":
        return _status(settings, store, as_json=args.json)
    if args.verb == "prune":
        if not settings.retention and not any(s.retention for s in settings.sources):
            _print("feeds: no retention is set (add `retention: 90d` to the config); nothing is ever deleted", file=sys.stderr)
            return USAGE
        pruned = retain(settings, store, now=utc_now(), dry_run=args.dry_run, force=True)
        assert pruned is not None
        verb = "would delete" if args.dry_run else "deleted"
        _print(f"{verb} {pruned.stories} stories in {pruned.clusters} clusters; kept {pruned.kept_for_outputs} still shown by an output")
        if not args.dry_run and pruned.stories:
            publish_all(settings, store, now=utc_now())
        return OK
    if args.verb == "preview":
        return _preview(settings, store, args.output, as_json=args.json)
    if args.verb == "clusters":
        if args.action == "explain":
            return _explain(store, args.story)
        return _clusters(settings, store, mode="exact" if args.exact else "copies" if args.copies else "event", as_json=args.json)
    if args.verb == "sources" and args.sources_verb == "reset":
        if _unknown_sources(settings, args.names):
            return USAGE
        for name in args.names:
            source = settings.source(name)
            assert source is not None
            store.save_state(initial_state(source))
            _print(f"reset {name}: it will be polled on the next cycle")
        return OK
    raise AssertionError(args.verb)


def _sources(args: argparse.Namespace, settings: Settings) -> int:
    """`feeds sources list|add|remove|import|export`: the config is the list of sources."""
    from feeds.manage import ConfigFile, slugify, write_opml

    verb = args.sources_verb
    if verb == "list":
        return _list_sources(settings, as_json=args.json)
    if verb == "export":
        text = write_opml(settings)
        if args.output is None:
            sys.stdout.write(text)
        else:
            args.output.write_text(text, encoding="utf-8")
            _print(f"wrote {len(settings.sources)} sources to {args.output}")
        return OK
    config = ConfigFile(settings.path)
    if verb == "remove":
        for name in args.names:
            config.remove(name)
        edited = config.save()
        if not args.purge:
            kept = "their stories stay until retention deletes them" if settings.retention else "their stories stay in the store"
            _print(f"removed {', '.join(args.names)} from {settings.path}; {kept} (--purge deletes them now)")
            return OK
        store = open_store(settings.storage, base=settings.path.parent.resolve(), lease=settings.lease)
        try:
            deleted = purge(store, args.names, now=utc_now())
            publish_all(edited, store, now=utc_now())
        finally:
            store.close()
        _print(f"removed {', '.join(args.names)} from {settings.path} and deleted their {deleted} stories")
        return OK
    if verb == "import":
        return _import(config, args.file, tags=[slugify(t) for t in args.tag], dry_run=args.dry_run)
    return _add(config, settings, args)


def _list_sources(settings: Settings, *, as_json: bool) -> int:
    states: dict[str, SourceState] = {}
    try:
        store = open_store(settings.storage, base=settings.path.parent.resolve(), must_exist=True, lease=settings.lease)
    except FeedsError:
        store = None  # never polled: no store yet
    if store is not None:
        try:
            states = store.states()
        finally:
            store.close()
    rows: list[dict[str, Any]] = [
        {
            "name": s.name,
            "url": s.url,
            "title": s.title,
            "tags": list(s.tags),
            "state": word(states[s.name].status) if s.name in states else "new",
        }
        for s in settings.sources
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return OK
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        tags = f"  [{', '.join(r['tags'])}]" if r["tags"] else ""
        _print(f"{r['name']:<{width}}  {r['state']:<9} {r['url']}{tags}")
    return OK


def _add(config: ConfigFile, settings: Settings, args: argparse.Namespace) -> int:
    from feeds.manage import ManageError, check_address, discover, slugify, unique_name

    address: str = args.url
    check_address(address)
    tags = [slugify(t) for t in args.tags.split(",") if t.strip()]
    if urlsplit(address).scheme.lower() in ("http", "https"):
        fetcher = Fetcher(settings.fetch, private_sources=[])
        try:
            found = discover(address, fetcher, max_entries=settings.max_entries)
        finally:
            fetcher.close()
        if len(found) > 1 and args.pick is None:
            for n, feed in enumerate(found, 1):
                _print(f"  {n}. {feed.title or '(untitled)'}  {feed.url}  ({feed.format})")
            if not sys.stdin.isatty():
                raise ManageError(f"{address}: {len(found)} feeds found; choose one with --pick N")
            answer = input(f"add which one? [1-{len(found)}] ").strip()
            if not answer.isdigit():
                raise ManageError("nothing added")
            args.pick = int(answer)
        pick = args.pick or 1
        if not 1 <= pick <= len(found):
            raise ManageError(f"--pick {pick}: there are {len(found)} feeds (1 to {len(found)})")
        chosen = found[pick - 1]
        url, feed_title = chosen.url, chosen.title
    else:
        url, feed_title = address, None
    if (canonical_url(url) or url) in config.urls():
        raise ManageError(f"{url} is already a source in {settings.path}")
    name = args.name or unique_name(slugify(args.title or feed_title or urlsplit(url).hostname or Path(url).stem), config.names())
    if name in config.names():
        raise ManageError(f"a source named {name!r} exists already; choose another with --name")
    config.add(name, url, title=args.title, tags=tags)
    config.save()
    _print(f"added {name}: {url}" + (f" ({feed_title})" if feed_title else ""))
    return OK


def _import(config: ConfigFile, path: Path, *, tags: Sequence[str], dry_run: bool) -> int:
    from feeds.manage import ManageError, check_address, read_opml, slugify, unique_name

    subscriptions = read_opml(path)
    known = config.urls()
    names = set(config.names())
    added, skipped = 0, []
    for sub in subscriptions:
        try:
            check_address(sub.url)
        except ManageError as exc:
            skipped.append(f"{sub.url} ({exc.message.split(': ', 1)[-1]})")
            continue
        key = canonical_url(sub.url) or sub.url
        if key in known:
            skipped.append(f"{sub.url} (already a source)")
            continue
        known.add(key)
        name = unique_name(slugify(sub.title or urlsplit(sub.url).hostname or "source"), names)
        names.add(name)
        config.add(name, sub.url, title=sub.title, tags=list(dict.fromkeys([*sub.tags, *tags])))
        added += 1
        _print(f"{'would add' if dry_run else 'add'} {name}: {sub.url}")
    for line in skipped:
        _print(f"skip {line}")
    if dry_run:
        _print(f"dry run: {added} sources would be added, {len(skipped)} skipped; nothing was changed")
        return OK
    if added:
        config.save()
    _print(f"imported {added} sources into {config.path}, skipped {len(skipped)}")
    return OK


def _unknown_sources(settings: Settings, names: Sequence[str]) -> bool:
    """Say which names are not configured sources; True if any."""
    unknown = [n for n in names if settings.source(n) is None]
    if unknown:
        _print(f"feeds: no source named {', '.join(unknown)} in {settings.path}", file=sys.stderr)
    return bool(unknown)


def _runner(settings: Settings) -> Isolated:
    """Worker processes for parsing: `fetch.parse_workers`, or one per core, at most 4 (each
    holds feedparser, lxml and numpy in memory)."""
    workers = settings.fetch.parse_workers or min(os.cpu_count() or 1, 4)
    return Isolated(workers=workers, timeout=settings.fetch.parse_timeout)


def _fetcher(settings: Settings) -> Fetcher:
    """The fetcher, with the sources the user allowed onto private addresses."""
    return Fetcher(settings.fetch, private_sources=[s.name for s in settings.sources if s.private])


def _store_opener(settings: Settings) -> Callable[[], Store]:
    """Opens a store connection of its own (for server threads); never creates one."""
    base = settings.path.parent.resolve()
    return lambda: open_store(settings.storage, base=base, must_exist=True, lease=settings.lease)


def _announcer(settings: Settings, fetcher: Fetcher) -> Callable[[list[str]], None]:
    """Pings the configured WebSub hub with the URLs of written outputs."""

    def announce(written: list[str]) -> None:
        if settings.websub.hub and written:
            from feeds.websub import output_urls, ping_hub

            ping_hub(fetcher, settings.websub.hub, output_urls(settings, written))

    return announce


def _address_taken(args: argparse.Namespace, settings: Settings) -> str | None:
    """Why the server could not listen where it is asked to (checked before anything else starts),
    or None."""
    host = args.host or settings.server.host
    port = settings.server.port if args.port is None else args.port
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        return f"cannot serve on {host}:{port}: {exc.strerror or exc}"
    return None


def _serve(
    args: argparse.Namespace,
    settings: Settings,
    *,
    health: HealthCheck,
    routes: list[Route] | None = None,
    on_stop: Callable[[], None] | None = None,
    on_hangup: Callable[[int, FrameType | None], None] | None = None,
    current: Callable[[], Settings] | None = None,
) -> None:
    """Serve the app until SIGINT/SIGTERM (`on_stop` is told at the first one; a second one
    drops open connections and exits at once). `current` gives the config in force (the daemon's,
    which it reloads); else `settings` stays."""
    from feeds.metrics import StoreCollector, exposition
    from feeds.server import create_app, make_server

    now_settings: Callable[[], Settings] = current or (lambda: settings)
    host = args.host or settings.server.host
    port = settings.server.port if args.port is None else args.port
    scoped_store = _store_opener(settings)

    def statuses() -> list[SourceView]:
        try:
            store = scoped_store()
        except FeedsError:
            return source_statuses(now_settings(), None, now=utc_now())  # `feeds serve` beside no store: the config alone
        try:
            return source_statuses(now_settings(), store, now=utc_now())
        finally:
            store.close()

    collector = StoreCollector(scoped_store, utc_now)
    app = create_app(now_settings, health=health, metrics=lambda: exposition(collector), statuses=statuses, websub_routes=routes)
    log.info("serving url=http://%s:%d/ publish_dir=%s", host, port, settings.publish_dir)
    server = make_server(
        app, host=host, port=port, max_connections=settings.server.max_connections, header_timeout=settings.server.header_timeout
    )
    handle_exit = server.handle_exit

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if on_stop is not None:
            on_stop()
        handle_exit(signum, frame)  # uvicorn: the first stops gracefully, a second forces the exit

    server.handle_exit = on_signal  # type: ignore[method-assign,assignment]  # uvicorn installs it for SIGINT/SIGTERM in run()
    # SIGHUP reloads the config in the daemon; `feeds serve` has nothing to reload and stops.
    previous = signal.signal(signal.SIGHUP, on_hangup or on_signal)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGHUP, previous)


def _files_health(settings: Settings) -> tuple[bool, dict[str, Any]]:
    missing = missing_outputs(settings)
    return not missing, {"publish_dir": str(settings.publish_dir), "missing_outputs": missing}


class SafeFormatter(logging.Formatter):
    """Log lines carry text from feeds and servers: no control character reaches the terminal."""

    def format(self, record: logging.LogRecord) -> str:
        return terminal_safe(super().format(record))


_FIELD = re.compile(r"(\w{1,64})=(\"[^\"]{0,2000}\"|\S{1,2000})")


class JsonFormatter(logging.Formatter):
    """`--log-format json`: one object per line, `{"time", "level", "logger", "event", ...fields,
    "message"}`; the `key=value` pairs of a line become fields (JSON escapes every control
    character, so nothing from a feed can break a line)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": message.split(" ", 1)[0] if message else "",
        }
        for key, value in _FIELD.findall(message):
            entry.setdefault(key, value.strip('"'))
        entry["message"] = message
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class RepeatFilter(logging.Filter):
    """The same message from the same place within REPEAT_WINDOW seconds is logged once, then
    counted (an accept loop out of file descriptors would write megabytes a second)."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.pathname, record.lineno, str(record.msg)[:200])
        now = time.monotonic()
        with self._lock:
            first, suppressed = self._seen.get(key, (0.0, 0))
            if now - first < REPEAT_WINDOW:
                self._seen[key] = (first, suppressed + 1)
                return False
            if len(self._seen) > 1000:
                self._seen.clear()
            self._seen[key] = (now, 0)
        if suppressed:
            record.msg = f"{record.msg} (and {suppressed} more like it in {REPEAT_WINDOW:.0f}s)"
        return True


def _print(text: str = "", *, file: Any = None) -> None:
    """Print text that may hold what feeds and servers sent, made harmless for a terminal."""
    print(terminal_safe(text), file=file or sys.stdout)


@contextlib.contextmanager
def _progress_bar(what: str, *, enabled: bool) -> Iterator[Callable[[int, int | None, str], None] | None]:
    """A progress bar on the terminal's last line (rich), or None when `enabled` is false (not a
    terminal, --json). While it shows, log lines are printed above it, never into it; it is gone
    when the work ends. Its callback takes (done, total or None when unknown, note)."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}", markup=False),
        console=Console(file=sys.stderr, soft_wrap=True, markup=False, highlight=False, emoji=False),  # log lines as they are
        transient=True,
        redirect_stdout=False,
        redirect_stderr=True,
    )
    task = bar.add_task(what, total=None, note="")
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler) and h.stream is sys.stderr]
    with bar:
        for handler in handlers:
            handler.setStream(sys.stderr)  # rich's proxy while the bar shows: lines go above it
        try:
            yield lambda done, total, note: bar.update(task, completed=done, total=total, note=terminal_safe(note))
        finally:
            for handler in handlers:
                handler.setStream(sys.__stderr__ if sys.__stderr__ is not None else sys.stderr)


def _print_outcomes(
    outcomes: list[PollOutcome], written: list[str], *, as_json: bool, quiet: bool = False, statements: int | None = None
) -> None:
    if as_json:
        counted = {"statements": statements} if statements is not None else {}  # PostgreSQL: sent to the database
        print(json.dumps({"sources": [_outcome_json(o) for o in outcomes], "written": written, **counted}, indent=2))
        return
    if quiet:  # cron mails what is printed: only what went wrong, on stderr
        for o in sorted(outcomes, key=lambda o: o.source):
            if o.status in ("failed", "gone"):
                _print(f"{o.source}: {o.status}: {o.error}", file=sys.stderr)
        return
    if not outcomes:
        _print("no source is due (use --force to poll anyway)")
    for o in sorted(outcomes, key=lambda o: o.source):
        detail = o.error or (f"{o.new} new, {o.updated} updated" + (f" (warning: {o.warning})" if o.warning else ""))
        _print(f"{o.source:<20} {word(o.status):<13} {detail}")
    for path in written:
        _print(f"wrote {path}")


def _outcome_json(o: PollOutcome) -> dict[str, Any]:
    return {"source": o.source, "status": word(o.status), "new": o.new, "updated": o.updated, "error": o.error, "warning": o.warning}


def _status(settings: Settings, store: Store, *, as_json: bool) -> int:
    now = utc_now()
    seen = store.meta("daemon_seen")
    running = store.meta("daemon_config")
    recent = seen is not None and now.timestamp() - float(seen) <= 3 * settings.tick.total_seconds() + 60
    if recent and running and running != config_digest(settings.path):
        _print(
            f"feeds: warning: the running daemon uses an older config than {settings.path}: it reloads on its next "
            "tick, unless the file has errors (`feeds check` names them); SIGHUP asks it to reload now",
            file=sys.stderr,
        )
    statuses = source_statuses(settings, store, now=now)
    if as_json:
        print(json.dumps([status_json(s) for s in statuses], indent=2))
    else:
        _print(f"{'SOURCE':<20} {'STORIES':>7} {'LAST SUCCESS':<14} {'NEXT POLL':<14} {'INTERVAL':<18} STATE")
        for row in statuses:
            state = row.state
            interval = f"{row.interval} ({state.interval_reason})"
            next_poll = ago(state.next_poll, now=now) if state.next_poll and state.next_poll > now else "due"
            _print(
                f"{row.name:<20} {row.stories:>7} {ago(state.last_success, now=now):<14} {next_poll:<14} {interval:<18} {row.description}"
            )
            if state.error:
                _print(f"{'':<20} error: {state.error}")
    return FAILED if any(row.failing for row in statuses) else OK


def _clusters(settings: Settings, store: Store, *, mode: Literal["event", "copies", "exact"], as_json: bool) -> int:
    everything = max(sum(store.story_counts().values()), 1)
    spec = OutputSpec(name="clusters", title="clusters", dedupe=mode, limit=everything)
    result: list[dict[str, Any]] = [
        {
            "id": cluster.atom_id,
            "title": cluster.lead.title,
            "reports": max(len(cluster.reports), 1),
            "stories": [
                {"source": s.source, "id": s.id, "link": s.link, "title": s.title, "published": stamp(s.when)} for s in cluster.members
            ],
        }
        for cluster in output_clusters(settings, store, spec, [s.name for s in settings.sources], now=utc_now())
    ]
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        for c in result:
            reports = f", {c['reports']} independent reports" if c["reports"] > 1 else ""
            _print(f"{c['title']}  [{c['id']}{reports}]")
            for s in c["stories"]:
                _print(f"    {s['source']:<18} {s['id']}  {s['title']}")
    return OK


def _preview(settings: Settings, store: Store, name: str, *, as_json: bool) -> int:
    output = next((o for o in settings.outputs if o.name == name), None)
    if output is None:
        _print(f"feeds: no output named {name!r} (outputs: {', '.join(o.name for o in settings.outputs)})", file=sys.stderr)
        return USAGE
    names = [s.name for s in settings.sources if output.includes(s)]
    titles = {s.name: s.title or s.name for s in settings.sources}
    rows: list[dict[str, Any]] = [
        {
            "time": stamp(min(m.when for m in c.members)),
            "outlet": titles.get(c.lead.source, c.lead.source),
            "title": entry_title(c, output, titles.get(c.lead.source, c.lead.source)),
            "outlets": len({m.source for m in c.members}),
            "reports": reports(c),
            "id": c.atom_id,
        }
        for c in output_clusters(settings, store, output, names, now=utc_now())
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return OK
    for r in rows:
        _print(f"{str(r['time'])[:16].replace('T', ' ')}  {r['outlet'][:20]:<20} {r['outlets']:>2} outlets  {r['title']}")
    _print(f"{len(rows)} entries (limit {output.limit}); nothing was written")
    return OK


def _explain(store: Store, story_id: str) -> int:
    from feeds.events import MIN_SCORE

    stored = store.stored_story(story_id)
    if stored is None:
        _print(f"feeds: no story {story_id!r} (ids are listed by `feeds clusters`)", file=sys.stderr)
        return USAGE
    d = stored.decision
    story = stored.story
    _print(f"{story.id} ({story.source}): {story.title}")
    matched = store.stored_story(d["matched"]) if d.get("matched") else None
    other = f"{matched.story.id} ({matched.story.source}): {matched.story.title}" if matched else d.get("matched")
    if d.get("kind") in ("exact", "near"):
        _print(f"joined cluster {stored.cluster_id} by {d['kind']} match with {other}")
    else:
        _print(f"started cluster {stored.cluster_id}" + (f"; nearest: {other}" if other else ""))
    _print(f"reason: {d.get('reason')}")
    _print(f"jaccard={d.get('jaccard', 0):.3f} containment={d.get('containment', 0):.3f}")
    links = store.event_links([story.id])
    if links:
        _print("same-event evidence (outputs with `dedupe: event` merge linked clusters, strongest first,")
        _print(f"  never two texts of one outlet; a link needs a score of {MIN_SCORE:g}):")
    for a, b, link in sorted(links, key=lambda x: -x[2].score):
        linked = store.stored_story(b if a == story.id else a)
        name = f"{linked.story.id} ({linked.story.source}, cluster {linked.cluster_id}): {linked.story.title}" if linked else b
        verdict = "linked" if link.same else "not linked"
        _print(f"  {verdict}, score {link.score:.1f}, {link.hours:.1f} h apart: {name}")
        _print(f"    agreed: {', '.join(f.lstrip(':') for f in link.agreed) or '-'}")
        _print(f"    conflicts: {', '.join(link.conflicts) or '-'}")
    return OK
