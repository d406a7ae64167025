"""WebSub (W3C Recommendation) both ways.

Publisher: outputs advertise the configured hub (render), and the hub is pinged with the URLs of
the outputs whose bytes changed. Subscriber: a source with `websub: true` whose feed advertises a
hub is subscribed with a per-source secret; the hub's verification of intent is answered (the
challenge echoed, 404 for topics we did not ask for); the lease is renewed before it ends; pushed
content is accepted only with a valid X-Hub-Signature (sha256 or stronger) and goes through the
same pipeline as a poll. Polling continues at a relaxed interval as a safety net (policy).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import requests
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from feeds import policy
from feeds.fetch import Fetcher, configured_private
from feeds.metrics import WEBSUB_PUSHES
from feeds.models import FetchResult, Settings, Source, SourceState
from feeds.poll import process_result
from feeds.store import Store
from feeds.untrusted import MAX_HEADER, digits, strip_userinfo
from feeds.workers import Runner

log = logging.getLogger(__name__)
SIGNATURES = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}
VERIFY_WITHIN = timedelta(hours=1)  # a hub verifies a subscription request within this long, or not at all
MAX_LEASE = timedelta(days=30)  # the longest lease a hub may grant us


def output_urls(settings: Settings, written: Sequence[str]) -> list[str]:
    """The public URLs of written output files."""
    return [settings.base_url + Path(path).name for path in written]


def ping_hub(fetcher: Fetcher, hub: str, urls: Sequence[str]) -> bool:
    """Tell the hub these topics changed (hub.mode=publish); never raises. The hub is the user's
    own setting, so it may be on a private address when its URL says so on its face."""
    if not urls:
        return True
    try:
        status = fetcher.post(hub, [("hub.mode", "publish"), *(("hub.url", u) for u in urls)], allow_private=configured_private(hub))
    except requests.RequestException as exc:
        log.warning("websub-ping-failed hub=%s error=%s", strip_userinfo(hub), exc)
        return False
    if status >= 300:
        log.warning("websub-ping-refused hub=%s status=%d", strip_userinfo(hub), status)
        return False
    log.info("websub-pinged hub=%s urls=%d", hub, len(urls))
    return True


def signature_valid(secret: str, body: bytes, header: str | None) -> bool:
    """True when X-Hub-Signature is `method=hex` with a method of sha256 or stronger, and matches."""
    if not header or "=" not in header:
        return False
    method, _, given = header.partition("=")
    digest = SIGNATURES.get(method.strip().lower())
    if digest is None:
        return False  # sha1 (or anything unknown) is not accepted
    expected = hmac.new(secret.encode(), body, digest).hexdigest()
    return hmac.compare_digest(expected, given.strip().lower())


class Subscriber:
    """Subscribes WebSub sources and receives what their hubs push."""

    def __init__(
        self,
        settings: Settings,
        open_store: Callable[[], Store],
        fetcher: Fetcher,
        *,
        clock: Callable[[], datetime],
        on_change: Callable[[Store], None],
        runner: Runner | None = None,
    ) -> None:
        self.settings = settings
        self.open_store = open_store
        self.fetcher = fetcher
        self.clock = clock
        self.on_change = on_change
        self.runner = runner

    def callback(self, source: Source) -> str:
        """Where the hub reaches us for this source."""
        return f"{self.settings.websub.public_url}websub/{source.name}"

    def subscribe_due(self, store: Store, *, now: datetime) -> int:
        """Ask hubs to (re)subscribe every WebSub source that needs it; return how many were asked."""
        if not self.settings.websub.public_url:
            return 0
        states = store.states()
        asked = 0
        for source in self.settings.sources:
            state = states.get(source.name)
            if state is not None and policy.needs_subscription(state, source, now=now):
                self._request(store, source, state, now=now)
                asked += 1
        return asked

    def _request(self, store: Store, source: Source, state: SourceState, *, now: datetime) -> None:
        secret = state.websub_secret or secrets.token_hex(32)
        topic = state.topic or strip_userinfo(state.url)  # the hub is a third party: no credentials
        data = [
            ("hub.mode", "subscribe"),
            ("hub.topic", topic),
            ("hub.callback", self.callback(source)),
            ("hub.secret", secret),
            ("hub.lease_seconds", str(int(self.settings.websub.lease.total_seconds()))),
        ]
        try:
            # A hub the feed advertises is reached only where the feed itself may reach.
            status = self.fetcher.post(state.hub or "", data, allow_private=self.fetcher.private_allowed(state))
            log.info("websub-subscribe source=%s hub=%s status=%d", source.name, strip_userinfo(state.hub or ""), status)
        except requests.RequestException as exc:
            log.warning("websub-subscribe-failed source=%s hub=%s error=%s", source.name, strip_userinfo(state.hub or ""), exc)
        store.save_state(replace(state, websub_secret=secret, websub_requested=now, topic=topic))

    def verify(self, name: str, params: dict[str, str]) -> tuple[int, str]:
        """Answer a hub's verification of intent: the challenge for what we asked, else 404."""
        source = self.settings.source(name)
        mode, topic, challenge = params.get("hub.mode"), params.get("hub.topic"), params.get("hub.challenge", "")
        if source is None:
            return 404, "unknown subscription\n"
        store = self.open_store()
        try:
            state = store.states().get(name)
            if state is None or topic != (state.topic or strip_userinfo(state.url)):
                return 404, "unknown topic\n"
            now = self.clock()
            if mode == "subscribe" and source.websub and state.websub_requested is not None:
                # Only an answer to a request of ours, and soon after it: no forged or replayed
                # verification sets a lease, and no hub sets one longer than MAX_LEASE.
                if not now - VERIFY_WITHIN <= state.websub_requested <= now:
                    return 404, "no pending subscription request\n"
                asked = self.settings.websub.lease
                given = digits(params.get("hub.lease_seconds"))
                lease = min(timedelta(seconds=given) if given else asked, MAX_LEASE)
                store.save_state(replace(state, websub_expires=now + lease))
                log.info("websub-verified source=%s lease=%ss", name, int(lease.total_seconds()))
                return 200, challenge
            if mode == "unsubscribe" and not source.websub:
                store.save_state(replace(state, websub_expires=None, websub_requested=None))
                return 200, challenge
            if mode == "denied":
                log.warning("websub-denied source=%s reason=%s", name, params.get("hub.reason"))
                store.save_state(replace(state, websub_expires=None))
                return 200, ""
            return 404, "not requested\n"
        finally:
            store.close()

    def accepts(self, name: str) -> bool:
        """True when `name` is a source subscribed by WebSub (checked before reading a push)."""
        source = self.settings.source(name)
        return source is not None and source.websub

    def deliver(self, name: str, body: bytes, headers: dict[str, str]) -> int:
        """Take pushed content: run it through the pipeline if its signature is valid."""
        source = self.settings.source(name)
        if source is None or not source.websub:
            return 404
        if len(body) > self.settings.fetch.max_body_bytes:
            WEBSUB_PUSHES.labels(result="too_large").inc()
            return 413
        store = self.open_store()
        try:
            state = store.states().get(name)
            if state is None or not state.websub_secret or not signature_valid(state.websub_secret, body, headers.get("x-hub-signature")):
                # The spec: acknowledge, but ignore content whose signature does not match.
                log.warning("websub-rejected source=%s reason=bad-signature", name)
                WEBSUB_PUSHES.labels(result="rejected").inc()
                return 202
            topic = state.topic or state.url
            result = FetchResult(
                url=topic, final_url=topic, status=200, headers={"content-type": headers.get("content-type", "")}, body=body
            )
            outcome = process_result(
                self.settings, store, source, policy.reconcile(state, source), result, now=self.clock(), runner=self.runner
            )
            WEBSUB_PUSHES.labels(result=outcome.status).inc()
            if outcome.new or outcome.updated:
                self.on_change(store)
            return 202
        finally:
            store.close()

    def routes(self) -> list[Route]:
        """The callback endpoint, for the web app."""

        async def callback(request: Request) -> Response:
            name = request.path_params["source"]
            if request.method == "GET":
                status, text = await run_in_threadpool(self.verify, name, dict(request.query_params))
                return PlainTextResponse(text, status_code=status)
            # Unauthenticated until the signature is checked: refuse before reading, read with a cap.
            if not self.accepts(name):
                return Response(status_code=404)
            cap = self.settings.fetch.max_body_bytes
            declared = request.headers.get("content-length")
            if declared is not None and (digits(declared) is None or (digits(declared) or 0) > cap):
                WEBSUB_PUSHES.labels(result="too_large").inc()
                return Response(status_code=413)
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > cap:
                    WEBSUB_PUSHES.labels(result="too_large").inc()
                    return Response(status_code=413)
            headers = {k.lower(): v[:MAX_HEADER] for k, v in request.headers.items()}
            return Response(status_code=await run_in_threadpool(self.deliver, name, bytes(body), headers))

        return [Route("/websub/{source}", callback, methods=["GET", "POST"])]
