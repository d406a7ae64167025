"""WebSub against a local hub speaking the real protocol over sockets (the real hubs are on the
internet): subscription with verification of intent, signed pushes, publish pings, renewal."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest
import requests

from feeds import policy
from feeds.models import Source, SourceState
from feeds.websub import signature_valid
from tests.conftest import NOW, ROOT, FeedServer, rss, run_feeds, story_item, wait_for, write_config
from tests.test_server import free_port


class LocalHub:
    """A minimal WebSub hub: verifies subscribers' intent, signs deliveries, records pings."""

    def __init__(self) -> None:
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.published: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                form = {k: v for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                mode = form.get("hub.mode", [""])[0]
                if mode == "publish":
                    hub.published.extend(form.get("hub.url", []))
                    self.send_response(204)
                elif mode == "subscribe":
                    request = {k: v[0] for k, v in form.items()}
                    threading.Thread(target=hub.verify_intent, args=(request,), daemon=True).start()
                    self.send_response(202)
                else:
                    self.send_response(400)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def verify_intent(self, request: dict[str, str]) -> None:
        challenge = secrets.token_hex(8)
        query = {
            "hub.mode": "subscribe",
            "hub.topic": request["hub.topic"],
            "hub.challenge": challenge,
            "hub.lease_seconds": request["hub.lease_seconds"],
        }
        response = requests.get(request["hub.callback"] + "?" + urlencode(query), timeout=10)
        if response.status_code == 200 and response.text == challenge:
            self.subscriptions[request["hub.topic"]] = request

    def deliver(self, topic: str, body: bytes, *, method: str = "sha256", secret: str | None = None) -> int:
        subscription = self.subscriptions[topic]
        key = (secret or subscription["hub.secret"]).encode()
        signature = hmac.new(key, body, getattr(hashlib, method)).hexdigest()
        response = requests.post(
            subscription["hub.callback"],
            data=body,
            timeout=10,
            headers={"Content-Type": "application/rss+xml", "X-Hub-Signature": f"{method}={signature}", "Link": f'<{topic}>; rel="self"'},
        )
        return response.status_code

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_subscribe_verify_push_and_publish_ping(tmp_path: Path, server: FeedServer) -> None:
    hub = LocalHub()
    topic = server.url("/feed")
    links = f'<link xmlns="http://www.w3.org/2005/Atom" rel="hub" href="{hub.url}"/><link xmlns="http://www.w3.org/2005/Atom" rel="self" href="{topic}"/>'
    server.serve("/feed", rss(story_item(1), title="Pushy", extra=links))
    port = free_port()
    config = write_config(
        tmp_path,
        [{"name": "pushy", "url": topic, "interval": "1h", "websub": "true"}],
        extra=f"tick: 1s\nserver: {{port: {port}}}\nwebsub: {{hub: '{hub.url}', public_url: 'http://127.0.0.1:{port}/', lease: 2d}}",
    )
    process = subprocess.Popen([sys.executable, "-m", "feeds", "run", "-c", str(config)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    atom = tmp_path / "public" / "all.atom"
    try:
        assert wait_for(lambda: topic in hub.subscriptions), "the hub never verified our subscription"
        subscription = hub.subscriptions[topic]
        assert subscription["hub.callback"] == f"http://127.0.0.1:{port}/websub/pushy"
        assert subscription["hub.lease_seconds"] == str(2 * 86400) and len(subscription["hub.secret"]) >= 32
        # verification for a topic we never asked for is refused
        wrong = requests.get(
            subscription["hub.callback"],
            params={"hub.mode": "subscribe", "hub.topic": "http://other.example/", "hub.challenge": "x"},
            timeout=5,
        )
        assert wrong.status_code == 404
        unknown = requests.get(
            f"http://127.0.0.1:{port}/websub/nobody", params={"hub.mode": "subscribe", "hub.topic": topic, "hub.challenge": "x"}, timeout=5
        )
        assert unknown.status_code == 404
        # signed content goes through the pipeline, without a poll
        assert hub.deliver(topic, rss(story_item(1), story_item(2), title="Pushy", extra=links).encode()) == 202
        assert wait_for(lambda: atom.exists() and b"Story 2" in atom.read_bytes())
        assert len(server.hits_for("/feed")) == 1
        # bad signatures, and sha1, are acknowledged but ignored
        assert hub.deliver(topic, rss(story_item(3), title="Pushy").encode(), secret="wrong" * 8) == 202
        assert hub.deliver(topic, rss(story_item(4), title="Pushy").encode(), method="sha1") == 202
        time.sleep(2)
        assert b"Story 3" not in atom.read_bytes() and b"Story 4" not in atom.read_bytes()
        # the publisher side: outputs advertise the hub, and the hub was pinged when they changed
        assert f'<link rel="hub" href="{hub.url}"/>' in atom.read_text()
        assert wait_for(lambda: "http://feeds.test/all.atom" in hub.published)
        status = {r["source"]: r for r in json.loads(run_feeds("status", "--json", "-c", str(config)).stdout)}
        assert status["pushy"]["interval_reason"] == "websub"  # polling relaxed while pushed
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        hub.close()
    assert process.returncode == 0, stderr


def test_signature_checks() -> None:
    body = b"<rss/>"
    good = hmac.new(b"k" * 32, body, hashlib.sha256).hexdigest()
    assert signature_valid("k" * 32, body, f"sha256={good}")
    assert signature_valid("k" * 32, body, f"sha512={hmac.new(b'k' * 32, body, hashlib.sha512).hexdigest()}")
    assert not signature_valid("k" * 32, body + b" ", f"sha256={good}")
    assert not signature_valid("k" * 32, body, f"sha1={hmac.new(b'k' * 32, body, hashlib.sha1).hexdigest()}")
    assert not signature_valid("k" * 32, body, None) and not signature_valid("k" * 32, body, "garbage")


@pytest.mark.parametrize(
    ("expires_in", "requested_ago", "due"),
    [
        (None, None, True),
        (timedelta(days=4), timedelta(days=1), False),
        (timedelta(hours=20), timedelta(days=4), True),
        (None, timedelta(minutes=2), False),
    ],
)
def test_subscriptions_are_renewed_before_the_lease_ends(expires_in: timedelta | None, requested_ago: timedelta | None, due: bool) -> None:
    source = Source("s", "https://s.example/feed", websub=True)
    state = replace(
        SourceState(name="s", url=source.url, configured_url=source.url, status="ok", hub="https://hub.example/"),
        websub_expires=NOW + expires_in if expires_in else None,
        websub_requested=NOW - requested_ago if requested_ago else None,
    )
    assert policy.needs_subscription(state, source, now=NOW) is due
    assert not policy.needs_subscription(state, replace(source, websub=False), now=NOW)
