"""Fetching sources: one requests.Session, polite and bounded.

Conditional GET with the stored validators, a User-Agent naming the program, no cookies or
referers, connect timeout plus a deadline on the whole read (a trickling server is cut off),
separate caps on wire and decompressed bytes (gzip bombs stop early with bounded memory),
redirects followed by hand (capped, loops caught, permanent ones reported) and refused when a
public source redirects into a private network. Failures come back as FetchResult, never raised.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
import zlib
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from http.cookiejar import DefaultCookiePolicy
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import requests

from feeds import USER_AGENT
from feeds.models import FetchResult, FetchSettings, SourceState

log = logging.getLogger(__name__)

ACCEPT = (
    "application/atom+xml, application/rss+xml, application/feed+json, application/rdf+xml;q=0.9, "
    "application/xml;q=0.9, application/json;q=0.8, text/xml;q=0.8, */*;q=0.1"
)
_REDIRECTS = {301, 302, 303, 307, 308}
_PERMANENT = {301, 308}
CHUNK = 64 * 1024
INFLATE_STEP = 1024 * 1024

Resolver = Callable[[str], list[str]]


def resolve_host(host: str) -> list[str]:
    """Every address a host name resolves to."""
    return sorted({info[4][0] for info in socket.getaddrinfo(host, None)})  # type: ignore[misc]


def is_private(address: str) -> bool:
    """True for loopback, private, link-local, reserved and other non-public addresses."""
    ip = ipaddress.ip_address(address.split("%", maxsplit=1)[0])
    return not ip.is_global


class CapExceededError(Exception):
    """A response was larger than allowed."""


class Fetcher:
    """Fetches sources over HTTP(S) or from local files; thread-safe."""

    def __init__(self, settings: FetchSettings | None = None, *, resolver: Resolver = resolve_host) -> None:
        self.settings = settings = settings or FetchSettings()
        self.resolver = resolver
        self.session = requests.Session()
        self.session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        self.session.trust_env = False  # no proxies or .netrc credentials picked up behind the user's back
        self.session.headers.update({"User-Agent": settings.user_agent or USER_AGENT, "Accept": ACCEPT, "Accept-Encoding": "gzip, deflate"})
        self._hosts: dict[str, threading.BoundedSemaphore] = {}
        self._hosts_lock = threading.Lock()

    def close(self) -> None:
        """Release the connection pool."""
        self.session.close()

    def _host_slot(self, url: str) -> threading.BoundedSemaphore:
        host = (urlsplit(url).hostname or "").lower()
        with self._hosts_lock:
            if host not in self._hosts:
                self._hosts[host] = threading.BoundedSemaphore(self.settings.per_host)
            return self._hosts[host]

    def fetch(self, state: SourceState) -> FetchResult:
        """Fetch one source as its state says (URL, validators); never raises."""
        started = time.monotonic()
        url = state.url
        try:
            if url.startswith("file://"):
                return self._read_file(url, started)
            with self._host_slot(url):
                return self._fetch_http(state, started)
        except Exception as exc:  # a bug or an odd transport error must not stop the loop
            log.exception("fetch-error source=%s url=%s", state.name, url)
            return FetchResult(url=url, final_url=url, status=None, error=f"fetch failed: {exc}", elapsed=time.monotonic() - started)

    def fetch_many(self, states: Iterable[SourceState]) -> Generator[tuple[SourceState, FetchResult]]:
        """Fetch several sources in parallel (bounded pool, per-host limit); yield as each completes.
        Closing the generator early cancels the fetches that have not started."""
        states = list(states)
        if not states:
            return
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.settings.workers, len(states))), thread_name_prefix="fetch")
        try:
            futures: dict[Future[FetchResult], SourceState] = {pool.submit(self.fetch, s): s for s in states}
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _read_file(self, url: str, started: float) -> FetchResult:
        path = Path(unquote(urlsplit(url).path))
        try:
            size = path.stat().st_size
            if size > self.settings.max_body_bytes:
                raise CapExceededError(f"file is {size} bytes, over the {self.settings.max_body_bytes}-byte cap")
            body = path.read_bytes()
        except FileNotFoundError:
            return FetchResult(url, url, None, error=f"file not found: {path}", elapsed=time.monotonic() - started)
        except (OSError, CapExceededError) as exc:
            return FetchResult(url, url, None, error=f"cannot read {path}: {exc}", elapsed=time.monotonic() - started)
        content_type = "application/feed+json" if path.suffix == ".json" else "application/xml"
        return FetchResult(url, url, 200, {"content-type": content_type}, body, elapsed=time.monotonic() - started)

    def _fetch_http(self, state: SourceState, started: float) -> FetchResult:
        settings = self.settings
        deadline = started + settings.connect_timeout + settings.read_timeout
        url = state.url
        headers: dict[str, str] = {}
        if state.etag:
            headers["If-None-Match"] = state.etag
        if state.last_modified:
            headers["If-Modified-Since"] = state.last_modified
        origin_public = self._is_public(url)
        seen = {url}
        permanent: str | None = None
        all_permanent = True
        for _hop in range(settings.max_redirects + 1):
            scheme = urlsplit(url).scheme.lower()
            if scheme not in ("http", "https"):
                return self._error(state.url, url, f"refused to fetch a {scheme or 'schemeless'} URL: {url}", started)
            if origin_public and not self._is_public(url):
                return self._error(state.url, url, f"refused redirect from a public address to a private one: {url}", started)
            try:
                response = self.session.get(
                    url,
                    headers=headers,
                    stream=True,
                    allow_redirects=False,
                    timeout=(settings.connect_timeout, settings.read_timeout),
                )
            except requests.RequestException as exc:
                return self._error(state.url, url, f"request failed: {_reason(exc)}", started)
            with response:
                if response.status_code in _REDIRECTS and response.headers.get("location"):
                    target = urljoin(url, response.headers["location"])
                    if response.status_code in _PERMANENT and all_permanent:
                        permanent = target
                    else:
                        all_permanent = False
                        permanent = None
                    if target in seen:
                        return self._error(state.url, target, f"redirect loop at {target}", started)
                    seen.add(target)
                    url = target
                    continue
                try:
                    body = self._read_body(response, deadline)
                except (CapExceededError, requests.RequestException, OSError, zlib.error) as exc:
                    return FetchResult(
                        state.url,
                        url,
                        None,
                        _headers(response),
                        error=f"while reading {url}: {_reason(exc)}",
                        elapsed=time.monotonic() - started,
                        permanent_redirect=permanent,
                    )
                return FetchResult(
                    url=state.url,
                    final_url=url,
                    status=response.status_code,
                    headers=_headers(response),
                    body=body,
                    permanent_redirect=permanent,
                    elapsed=time.monotonic() - started,
                )
        return self._error(state.url, url, f"more than {settings.max_redirects} redirects", started)

    def _is_public(self, url: str) -> bool:
        host = urlsplit(url).hostname
        if not host:
            return False
        try:
            return all(not is_private(a) for a in self.resolver(host))
        except (OSError, ValueError):
            return True  # unresolvable: the request itself will fail and say so

    def _read_body(self, response: requests.Response, deadline: float) -> bytes:
        settings = self.settings
        if response.status_code == 304:
            return b""
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > settings.max_wire_bytes:
            raise CapExceededError(f"Content-Length {declared} is over the {settings.max_wire_bytes}-byte cap")
        encoding = response.headers.get("content-encoding", "").strip().lower()
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 32) if encoding in ("gzip", "x-gzip", "deflate") else None
        wire = 0
        body = bytearray()
        raw = response.raw
        while True:
            if time.monotonic() > deadline:
                raise CapExceededError(f"read took longer than {settings.read_timeout:.0f}s (server too slow)")
            chunk = raw.read1(CHUNK, decode_content=False) if hasattr(raw, "read1") else raw.read(CHUNK, decode_content=False)
            if not chunk:
                break
            wire += len(chunk)
            if wire > settings.max_wire_bytes:
                raise CapExceededError(f"response is over the {settings.max_wire_bytes}-byte cap")
            if inflater is None:
                body += chunk
            else:
                # Inflate in bounded steps: a gzip bomb never holds more than the cap plus one step.
                pending = chunk
                while pending and len(body) <= settings.max_body_bytes:
                    body += inflater.decompress(pending, INFLATE_STEP)
                    pending = inflater.unconsumed_tail
            if len(body) > settings.max_body_bytes:
                raise CapExceededError(f"decompressed body is over the {settings.max_body_bytes}-byte cap")
        if inflater is not None:
            body += inflater.flush()
            if len(body) > settings.max_body_bytes:
                raise CapExceededError(f"decompressed body is over the {settings.max_body_bytes}-byte cap")
        return bytes(body)

    @staticmethod
    def _error(url: str, final: str, message: str, started: float) -> FetchResult:
        return FetchResult(url, final, None, error=message, elapsed=time.monotonic() - started)


def _headers(response: requests.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in response.headers.items()}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, requests.ConnectTimeout):
        return "connect timed out"
    if isinstance(exc, requests.ReadTimeout):
        return "read timed out"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed"
    return str(exc) or type(exc).__name__
