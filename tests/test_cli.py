"""The command line as a user runs it: bundled config offline, exit codes, JSON output, the daemon."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import feedparser

from tests.conftest import ROOT, FeedServer, rss, run_feeds, story_item, wait_for, write_config


def bundled_copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "config", tmp_path / "config")
    return tmp_path / "config" / "feeds.yaml"


def test_bundled_config_polls_offline_and_publishes(tmp_path: Path) -> None:
    config = bundled_copy(tmp_path)
    result = run_feeds("poll", "-c", str(config))
    assert result.returncode == 0, result.stderr
    for fmt in ("atom", "rss", "json"):
        published = (tmp_path / "public" / f"all.{fmt}").read_text()
        assert published and "file:" not in published and str(tmp_path) not in published  # no local path leaks out
    parsed = feedparser.parse((tmp_path / "public" / "all.atom").read_bytes())
    assert not parsed.bozo and len(parsed.entries) == 5  # 7 sample stories; the wire story merged 3 ways
    seawall = next(e for e in parsed.entries if "seawall" in e.title.lower())
    assert len([lk for lk in seawall.links if lk.rel == "via"]) == 2
    # The samples are dated relative to the first poll: the demo reads as news of the last days.
    now = datetime.now(UTC)
    published = sorted(datetime(*e.published_parsed[:6], tzinfo=UTC) for e in parsed.entries)
    assert now - timedelta(days=5) < published[0] and published[-1] <= now and now - published[-1] < timedelta(hours=12)
    again = run_feeds("poll", "-c", str(config))
    assert again.returncode == 0 and "no source is due" in again.stdout


def test_python_dash_m_and_version() -> None:
    result = subprocess.run([sys.executable, "-m", "feeds", "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.startswith("feeds ")


def test_exit_code_1_when_a_source_fails_and_status_shows_it(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/ok", rss(story_item(1)))
    server.serve("/down", "gone fishing", status=503, headers={"Retry-After": "3600"})
    config = write_config(tmp_path, [{"name": "ok", "url": server.url("/ok")}, {"name": "down", "url": server.url("/down")}])
    result = run_feeds("poll", "--json", "-c", str(config))
    assert result.returncode == 1
    outcomes = {o["source"]: o for o in json.loads(result.stdout)["sources"]}
    assert outcomes["ok"]["status"] == "ok" and outcomes["ok"]["new"] == 1
    assert outcomes["down"]["status"] == "failed" and "HTTP 503" in outcomes["down"]["error"]
    status = run_feeds("status", "--json", "-c", str(config))
    assert status.returncode == 1
    rows = {r["source"]: r for r in json.loads(status.stdout)}
    assert rows["ok"]["stories"] == 1 and rows["ok"]["state"] == "ok"
    assert rows["down"]["state"].startswith("retry-after until") and rows["down"]["failures"] == 1
    assert rows["down"]["retry_after"] is not None and rows["down"]["failing_since"] is not None
    # --force never overrides Retry-After
    run_feeds("poll", "--force", "-c", str(config))
    assert len(server.hits_for("/down")) == 1
    table = run_feeds("status", "-c", str(config)).stdout
    assert "retry-after until" in table and "error: HTTP 503" in table


def test_clusters_json_shape(tmp_path: Path) -> None:
    config = bundled_copy(tmp_path)
    run_feeds("poll", "-c", str(config))
    clusters = json.loads(run_feeds("clusters", "--json", "-c", str(config)).stdout)
    assert all(set(c) == {"id", "title", "reports", "stories"} for c in clusters)
    assert all(set(s) == {"source", "id", "link", "title", "published"} for c in clusters for s in c["stories"])
    ids = [s["id"] for c in clusters for s in c["stories"]]
    assert len(ids) == len(set(ids)) == 7
    copies = json.loads(run_feeds("clusters", "--json", "--copies", "-c", str(config)).stdout)
    exact = json.loads(run_feeds("clusters", "--json", "--exact", "-c", str(config)).stdout)
    assert len(exact) > len(copies) >= len(clusters)
    assert all(c["reports"] == 1 for c in copies)


def test_sources_reset_and_unknown_names(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/gone", "", status=410)
    config = write_config(tmp_path, [{"name": "old", "url": server.url("/gone")}])
    assert run_feeds("poll", "-c", str(config)).returncode == 1
    rows = json.loads(run_feeds("status", "--json", "-c", str(config)).stdout)
    assert rows[0]["status"] == "gone" and rows[0]["next_poll"] is None
    run_feeds("poll", "--force", "-c", str(config))
    assert len(server.hits_for("/gone")) == 1  # gone means gone, even with --force
    assert run_feeds("sources", "reset", "nope", "-c", str(config)).returncode == 2
    assert run_feeds("sources", "reset", "old", "-c", str(config)).returncode == 0
    server.serve("/gone", rss(story_item(1)))
    assert run_feeds("poll", "-c", str(config)).returncode == 0
    assert len(server.hits_for("/gone")) == 2
    assert run_feeds("poll", "nope", "-c", str(config)).returncode == 2
    assert run_feeds("frobnicate").returncode == 2


def test_daemon_polls_on_schedule_publishes_changes_and_stops_cleanly(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/feed", rss(story_item(1)))
    config = write_config(tmp_path, [{"name": "a", "url": server.url("/feed"), "interval": "1m", "min_interval": "1m"}], extra="tick: 1s")
    atom = tmp_path / "public" / "all.atom"
    process = subprocess.Popen([sys.executable, "-m", "feeds", "run", "-c", str(config)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: atom.exists() and b"Story 1" in atom.read_bytes())
        assert len(server.hits_for("/feed")) == 1  # not due again for a minute
        # a second process (cron) may poll the same store while the daemon runs
        server.serve("/feed", rss(story_item(1), story_item(2)))
        assert run_feeds("poll", "--force", "-c", str(config)).returncode == 0
        assert b"Story 2" in atom.read_bytes()
        # the daemon itself picks up a source made due, and republishes
        server.serve("/feed", rss(story_item(1), story_item(2), story_item(3)))
        assert run_feeds("sources", "reset", "a", "-c", str(config)).returncode == 0
        assert wait_for(lambda: b"Story 3" in atom.read_bytes())
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "daemon-started" in stderr and "daemon-stopped" in stderr
    assert not feedparser.parse(atom.read_bytes()).bozo


def test_serve_serves_the_publish_directory_alone(tmp_path: Path) -> None:
    import requests

    from tests.test_server import free_port

    config = bundled_copy(tmp_path)
    assert run_feeds("poll", "-c", str(config)).returncode == 0
    (tmp_path / "feeds.db").unlink()  # serve needs only the files
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"feeds.db{suffix}").unlink(missing_ok=True)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "feeds", "serve", "--port", str(port), "-c", str(config)], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return requests.get(f"{base}/health", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        assert wait_for(up)
        atom = requests.get(f"{base}/all.atom", timeout=5)
        assert atom.status_code == 200 and atom.content == (tmp_path / "public" / "all.atom").read_bytes()
        assert "Harbor city approves" in requests.get(f"{base}/all/", timeout=5).text
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr


def test_cron_stays_quiet_and_options_go_before_or_after_the_verb(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/ok", rss(story_item(1)))
    config = write_config(tmp_path, [{"name": "ok", "url": server.url("/ok")}])
    quiet = run_feeds("-q", "-c", str(config), "poll")  # options before the verb, as cron lines are often written
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""  # cron mails nothing
    assert run_feeds("-c", str(config), "status").returncode == 0
    assert run_feeds("status", "-c", str(config)).returncode == 0
    server.serve("/ok", b"", status=500)
    failed = run_feeds("poll", "-q", "--force", "-c", str(config))
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr.strip().splitlines() == ["ok: failed: HTTP 500"]  # only what went wrong, on stderr
    bare = run_feeds()
    assert bare.returncode == 2 and "usage: feeds" in bare.stdout and "poll" in bare.stdout


def test_a_taken_port_is_one_clear_line_before_anything_starts(tmp_path: Path, server: FeedServer) -> None:
    import socket

    server.serve("/ok", rss(story_item(1)))
    config = write_config(tmp_path, [{"name": "ok", "url": server.url("/ok")}])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_feeds("run", "--port", str(port), "-c", str(config))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"feeds: cannot serve on 127.0.0.1:{port}: Address already in use"]
    assert server.hits_for("/ok") == []  # nothing was polled


def test_the_config_is_found_without_a_path(tmp_path: Path, server: FeedServer) -> None:
    import os

    server.serve("/ok", rss(story_item(1)))
    config = write_config(tmp_path, [{"name": "ok", "url": server.url("/ok")}])  # tmp_path/feeds.yaml
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def check(cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
        environment = {k: v for k, v in os.environ.items() if k != "FEEDS_CONFIG"} | env | {"PYTHONPATH": str(ROOT)}
        return subprocess.run(
            [sys.executable, "-m", "feeds", "check"], check=False, cwd=cwd, env=environment, capture_output=True, text=True, timeout=60
        )

    assert check(tmp_path).stdout.startswith("feeds.yaml: ok")  # ./feeds.yaml
    assert check(elsewhere, FEEDS_CONFIG=str(config)).stdout.startswith(f"{config}: ok")  # wherever cron runs it
    missing = check(elsewhere)
    assert missing.returncode == 2 and "set FEEDS_CONFIG" in missing.stderr and "/etc/feeds/feeds.yaml" in missing.stderr


def test_one_word_per_state_and_times_as_people_say_them(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/a", rss(story_item(1)), etag='"v1"')
    config = write_config(tmp_path, [{"name": "a", "url": server.url("/a")}])
    run_feeds("poll", "-c", str(config))
    again = json.loads(run_feeds("poll", "--force", "--json", "-c", str(config)).stdout)  # a 304
    assert again["sources"][0]["status"] == "unchanged"
    table = run_feeds("status", "-c", str(config)).stdout
    assert " unchanged" in table and "not modified" not in table and "not_modified" not in table
    assert "just now" in table and re.search(r"in \d+ min", table)
    rows = json.loads(run_feeds("status", "--json", "-c", str(config)).stdout)
    assert rows[0]["status"] == "unchanged" and rows[0]["last_success"].endswith("Z")  # JSON keeps exact times
    listed = json.loads(run_feeds("sources", "list", "--json", "-c", str(config)).stdout)
    assert listed[0]["state"] == "unchanged"


def test_relative_times() -> None:
    from feeds.timeutil import ago

    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    said = {
        ago(now - timedelta(seconds=10), now=now),
        ago(now - timedelta(minutes=3), now=now),
        ago(now - timedelta(hours=5), now=now),
        ago(now - timedelta(days=9), now=now),
        ago(now + timedelta(minutes=4), now=now),
    }
    assert said == {"just now", "3 min ago", "5 h ago", "9 days ago", "in 4 min"}
    assert ago(now - timedelta(days=1), now=now) == "24 h ago" and ago(None, now=now) == "-"


def test_json_logs_are_one_object_per_line(tmp_path: Path, server: FeedServer) -> None:
    server.serve("/a", rss(story_item(1)))
    server.serve("/down", "", status=503)
    config = write_config(tmp_path, [{"name": "a", "url": server.url("/a")}, {"name": "down", "url": server.url("/down")}])
    result = run_feeds("--log-format", "json", "poll", "-v", "-c", str(config))
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert lines and all({"time", "level", "logger", "event", "message"} <= set(line) for line in lines)
    polled = next(line for line in lines if line["event"] == "polled")
    assert polled["source"] == "a" and polled["status"] == "ok" and polled["level"] == "info"
    failed = next(line for line in lines if line["event"] == "poll-failed")
    assert failed["source"] == "down" and failed["level"] == "warning"


def stop_while_reading(tmp_path: Path, server: FeedServer, command: list[str], sig: signal.Signals, *, twice: bool = False):  # type: ignore[no-untyped-def]
    """Run `command` against a fast source and one that sends its body a byte every 50 ms (over a
    minute), signal it once the slow read has begun; return (seconds to exit, exit code, stderr)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    server.serve("/fast", rss(story_item(1)))
    server.serve("/slow", rss(*(story_item(n) for n in range(2, 12))), trickle=0.05)
    config = write_config(
        tmp_path,
        [{"name": "fast", "url": server.url("/fast")}, {"name": "slow", "url": server.url("/slow")}],
        extra="tick: 1s",
    )
    before = len(server.hits_for("/slow")), len(server.hits_for("/fast"))  # the server may have served an earlier run
    process = subprocess.Popen([sys.executable, "-m", "feeds", *command, "-c", str(config)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: len(server.hits_for("/slow")) > before[0] and len(server.hits_for("/fast")) > before[1])

        def fast_stored() -> bool:
            rows = json.loads(run_feeds("status", "--json", "-c", str(config)).stdout or "[]")
            return any(r["source"] == "fast" and r["stories"] == 1 for r in rows)

        assert wait_for(fast_stored)  # the slow body is still being read
        started = time.monotonic()
        process.send_signal(sig)
        if twice:
            process.send_signal(sig)
        _, stderr = process.communicate(timeout=60)
        return time.monotonic() - started, process.returncode, stderr, config
    finally:
        if process.poll() is None:
            process.kill()


def test_ctrl_c_stops_a_poll_at_once_and_keeps_what_was_stored(tmp_path: Path, server: FeedServer) -> None:
    seconds, code, stderr, config = stop_while_reading(tmp_path, server, ["poll"], signal.SIGINT)
    assert seconds < 5 and code == 130, (seconds, code, stderr)  # the slow read alone would take a minute
    assert "Traceback" not in stderr and "stopped" in stderr
    rows = {r["source"]: r for r in json.loads(run_feeds("status", "--json", "-c", str(config)).stdout)}
    assert rows["fast"]["stories"] == 1 and rows["fast"]["status"] == "ok"
    assert rows["slow"]["status"] == "new" and rows["slow"]["failures"] == 0  # not counted as a failure: due again


def test_sigterm_stops_the_daemon_at_once_and_a_second_signal_does_not_wait(tmp_path: Path, server: FeedServer) -> None:
    seconds, code, stderr, _ = stop_while_reading(tmp_path / "one", server, ["run", "--no-serve"], signal.SIGTERM)
    assert seconds < 5 and code == 0 and "Traceback" not in stderr and "daemon-stopped" in stderr, (seconds, stderr)
    assert "maximum number of running instances" not in stderr  # ticks skipped while the slow one ran: not a warning each
    seconds, code, stderr, _ = stop_while_reading(tmp_path / "two", server, ["run", "--port", "0"], signal.SIGINT, twice=True)
    assert seconds < 5 and "Traceback" not in stderr, (seconds, code, stderr)


def run_in_terminal(*args: str, timeout: float = 60) -> str:
    """Run `feeds` on a pseudo-terminal, as a user at a shell does; everything it wrote."""
    main, side = pty.openpty()
    env = {**os.environ, "COLUMNS": "100", "LINES": "30", "TERM": "xterm"}
    process = subprocess.Popen([sys.executable, "-m", "feeds", *args], cwd=ROOT, stdin=side, stdout=side, stderr=side, env=env)
    os.close(side)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 1)
        if ready:
            try:
                data = os.read(main, 65536)
            except OSError:
                break
            if not data:
                break
            out += data
        elif process.poll() is not None:
            break
    process.wait(timeout=10)
    os.close(main)
    return out.decode("utf-8", "replace")


def test_on_a_terminal_the_progress_bar_owns_its_line_and_log_lines_print_above_it(tmp_path: Path, server: FeedServer) -> None:
    for n in range(6):
        server.serve(f"/s{n}", rss(story_item(n)), delay=0.3)
    server.serve("/down", "gone fishing", status=500)
    sources = [{"name": f"s{n}", "url": server.url(f"/s{n}")} for n in range(6)] + [{"name": "down", "url": server.url("/down")}]
    config = write_config(tmp_path, sources)
    screen = run_in_terminal("poll", "-c", str(config))
    lines = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line).rstrip("\r").rsplit("\r", 1)[-1] for line in screen.split("\n")]
    warning = [line for line in lines if "poll-failed source=down" in line]
    assert warning and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ WARNING feeds.poll: ", line) for line in warning), warning
    assert "polling" in screen and "/7" in screen  # the bar was there: "polling ━━━ 3/7"
    assert not any("polling" in line and "WARNING" in line for line in lines)  # never on one line
    assert any(line.startswith("down ") and "HTTP 500" in line for line in lines)  # the results table, after the bar is gone
