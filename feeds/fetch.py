"""Fetching sources: one requests.Session, polite and bounded.

Conditional GET with the stored validators, a User-Agent naming the program, no cookies or
referers, separate caps on wire and decompressed bytes (gzip bombs stop early with bounded
memory), redirects followed by hand (capped, loops caught, permanent ones reported). Failures come
back as FetchResult, never raised.

Two guards hold for every request the program makes (sources, redirects, WebSub hubs):
- One deadline for the whole exchange: connecting, headers, every redirect and the body. A
  watchdog shuts the sockets down when it passes, so a server trickling its headers one byte at a
  time cannot hold a cycle.
- The address we check is the address we connect to: the connection resolves the host once,
  refuses private addresses unless the exchange allows them, and connects to the address it
  checked (no second lookup for DNS rebinding to win, and the host is the one urllib3 parsed, so
  no URL trick parses one way for the guard and another for the connection). Sources the user
  configured on a private address (an IP literal, localhost, a single-label or .local/.internal
  name, or `private: true`) may reach private addresses; everything else, redirects and
  advertised hubs of public sources included, may not.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
import time
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from http.cookiejar import DefaultCookiePolicy
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

from feeds import USER_AGENT
from feeds.models import FetchResult, FetchSettings, SourceState
from feeds.untrusted import MAX_HEADER, host_of, strip_userinfo, web_url

log = logging.getLogger(__name__)

ACCEPT = (
    "application/atom+xml, application/rss+xml, application/feed+json, application/rdf+xml;q=0.9, "
    "application/xml;q=0.9, application/json;q=0.8, text/xml;q=0.8, */*;q=0.1"
)
_REDIRECTS = {301, 302, 303, 307, 308}
_PERMANENT = {301, 308}
_LOCAL_SUFFIXES = (".local", ".localhost", ".internal", ".lan", ".home.arpa")
CHUNK = 64 * 1024
INFLATE_STEP = 1024 * 1024

Resolver = Callable[[str], list[str]]
Classifier = Callable[[str], bool]


def resolve_host(host: str) -> list[str]:
    """Every address a host name resolves to, in the resolver's order."""
    return list(dict.fromkeys(str(info[4][0]) for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)))


def is_private(address: str) -> bool:
    """True for loopback, private, link-local, reserved and other non-public addresses
    (an IPv4-mapped IPv6 address is judged by its IPv4 address)."""
    ip = ipaddress.ip_address(address.split("%", maxsplit=1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def configured_private(url: str) -> bool:
    """True when a configured URL names a private host on its face: an IP literal that is not
    public, localhost, a single-label name or a local suffix. Decided without DNS, so the owner
    of a public name cannot make it count as private by pointing it at 127.0.0.1."""
    try:
        host = (urllib3.util.parse_url(url).host or "").strip("[]").lower().rstrip(".")
    except ValueError:
        return False
    if not host:
        return False
    try:
        return is_private(host)
    except ValueError:
        pass
    return host == "localhost" or "." not in host or host.endswith(_LOCAL_SUFFIXES)


class CapExceededError(Exception):
    """A response was larger than allowed."""


class AddressRefusedError(NewConnectionError):
    """The host resolves only to addresses this exchange may not reach."""


class Exchange:
    """One request and its redirects: which addresses it may reach and the deadline it must meet."""

    def __init__(self, *, allow_private: bool, resolver: Resolver, classify: Classifier, seconds: float | None) -> None:
        self.allow_private = allow_private
        self.resolver = resolver
        self.classify = classify
        self.expired = False
        self.aborted = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire) if seconds is not None else None
        if self._timer is not None:
            self._timer.daemon = True

    def connect(self, host: str, port: int, timeout: Any, options: Any) -> socket.socket:
        """Resolve `host` once, keep the addresses this exchange may reach, connect to one of them."""
        addresses = self.resolver(host.strip("[]"))
        allowed = [a for a in addresses if self.allow_private or not self.classify(a)]
        if not allowed:
            raise ValueError(f"{host} resolves to a private address ({', '.join(addresses[:3]) or 'none'})")
        error: OSError | None = None
        for address in allowed:
            try:
                sock = urllib3.util.connection.create_connection((address, port), timeout, socket_options=options)
            except OSError as exc:
                error = exc
                continue
            self.watch(sock)
            return sock
        assert error is not None
        raise error

    def watch(self, sock: socket.socket | None) -> None:
        """Shut this socket down when the deadline passes (a duplicate descriptor, so TLS
        wrapping and connection reuse do not hide it)."""
        if sock is None or self._timer is None:
            return
        try:
            duplicate = socket.fromfd(sock.fileno(), sock.family, sock.type)
        except OSError:
            return
        with self._lock:
            self._sockets.append(duplicate)
            if self.expired:
                _shutdown(duplicate)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)

    def abort(self) -> None:
        """Shut this exchange's sockets down now (feeds is stopping)."""
        self.aborted = True
        self._expire()

    def __enter__(self) -> Exchange:
        _current.exchange = self
        if self._timer is not None:
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        _current.exchange = None
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


_current = threading.local()


def _exchange() -> Exchange:
    """The exchange of this thread; outside one, public addresses only and no deadline."""
    current: Exchange | None = getattr(_current, "exchange", None)
    return current or Exchange(allow_private=False, resolver=resolve_host, classify=is_private, seconds=None)


class _GuardedConnection(HTTPConnection):
    """An urllib3 connection that connects only where the current exchange allows."""

    def _new_conn(self) -> socket.socket:
        try:
            return _exchange().connect(self._dns_host, self.port, self.timeout, self.socket_options)
        except ValueError as exc:
            raise AddressRefusedError(self, f"refused: {exc}") from exc
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        except TimeoutError as exc:
            raise ConnectTimeoutError(self, f"connection to {self.host} timed out") from exc
        except OSError as exc:
            raise NewConnectionError(self, f"failed to connect: {exc}") from exc

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        _exchange().watch(self.sock)  # a reused keep-alive connection is watched too
        return super().getresponse(*args, **kwargs)


class _GuardedHTTPSConnection(_GuardedConnection, HTTPSConnection):
    """The TLS variant: certificates and SNI still use the host name, not the address."""


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class GuardedAdapter(HTTPAdapter):
    """A requests transport adapter whose connections go through the address guard."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}
        self.poolmanager.key_fn_by_scheme = dict(self.poolmanager.key_fn_by_scheme)


class Fetcher:
    """Fetches sources over HTTP(S) or from local files; thread-safe."""

    def __init__(
        self,
        settings: FetchSettings | None = None,
        *,
        resolver: Resolver = resolve_host,
        classify: Classifier = is_private,
        private_sources: Iterable[str] = (),
    ) -> None:
        self.settings = settings = settings or FetchSettings()
        self.resolver = resolver
        self.classify = classify
        self.private_sources = frozenset(private_sources)
        self.session = requests.Session()
        self.session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        self.session.trust_env = False  # no proxies or .netrc credentials picked up behind the user's back
        self.session.headers.update({"User-Agent": settings.user_agent or USER_AGENT, "Accept": ACCEPT, "Accept-Encoding": "gzip, deflate"})
        adapter = GuardedAdapter(pool_maxsize=max(settings.workers, 4))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._hosts: dict[str, threading.BoundedSemaphore] = {}
        self._hosts_lock = threading.Lock()
        self._live: set[Exchange] = set()
        self._aborted = False

    def abort(self) -> None:
        """Cut every request in flight and fail every later one at once: how a stop (Ctrl-C,
        SIGTERM) takes effect in about a second instead of after the read timeout. What was
        already fetched and stored stays."""
        with self._hosts_lock:
            self._aborted = True
            live = list(self._live)
        for exchange in live:
            exchange.abort()

    def close(self) -> None:
        """Release the connection pool."""
        self.session.close()

    def private_allowed(self, state: SourceState) -> bool:
        """True when the user configured this source on a private address (never because of
        where it redirected to or what its name resolves to)."""
        return state.name in self.private_sources or configured_private(state.configured_url)

    @contextmanager
    def exchange(self, *, allow_private: bool) -> Iterator[Exchange]:
        """One guarded exchange under the total deadline (connect + read timeouts)."""
        seconds = self.settings.connect_timeout + self.settings.read_timeout
        with Exchange(allow_private=allow_private, resolver=self.resolver, classify=self.classify, seconds=seconds) as exchange:
            with self._hosts_lock:
                self._live.add(exchange)
                aborted = self._aborted
            if aborted:
                exchange.abort()
            try:
                yield exchange
            finally:
                with self._hosts_lock:
                    self._live.discard(exchange)

    def post(self, url: str, data: list[tuple[str, str]], *, allow_private: bool) -> int:
        """POST a form (WebSub) through the same guards; no redirects followed. Returns the status;
        raises requests.RequestException when no response came."""
        settings = self.settings
        with self.exchange(allow_private=allow_private) as exchange:
            try:
                response = self.session.post(
                    url, data=data, allow_redirects=False, timeout=(settings.connect_timeout, settings.read_timeout)
                )
            except requests.RequestException as exc:
                raise requests.RequestException(_reason(exc, exchange, settings)) from exc
            response.close()
            return response.status_code

    def _host_slot(self, url: str) -> threading.BoundedSemaphore:
        host = host_of(url) or ""
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
            with self._host_slot(url), self.exchange(allow_private=self.private_allowed(state)) as exchange:
                return self._fetch_http(state, started, exchange)
        except Exception as exc:  # a bug or an odd transport error must not stop the loop
            log.exception("fetch-error source=%s url=%s", state.name, strip_userinfo(url))
            return FetchResult(url=url, final_url=url, status=None, error=f"fetch failed: {exc}", elapsed=time.monotonic() - started)

    def fetch_many(self, states: Iterable[SourceState]) -> Generator[tuple[SourceState, FetchResult]]:
        """Fetch several sources in parallel (bounded pool, per-host limit); yield as each completes.
        Fetches run at most a window ahead of the consumer (back-pressure: bodies do not pile up
        while parsing lags). Closing the generator early cancels the fetches not yet started."""
        states = list(states)
        if not states:
            return
        workers = max(1, min(self.settings.workers, len(states)))
        window = 4 * workers
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch")
        pending = iter(states)
        running: dict[Future[FetchResult], SourceState] = {}
        try:
            while True:
                for state in pending:
                    running[pool.submit(self.fetch, state)] = state
                    if len(running) >= window:
                        break
                if not running:
                    return
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    yield running.pop(future), future.result()
        finally:
            for future in running:
                future.cancel()
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

    def _fetch_http(self, state: SourceState, started: float, exchange: Exchange) -> FetchResult:
        settings = self.settings
        deadline = started + settings.connect_timeout + settings.read_timeout
        url = state.url
        headers: dict[str, str] = {}
        if state.etag:
            headers["If-None-Match"] = state.etag
        if state.last_modified:
            headers["If-Modified-Since"] = state.last_modified
        seen = {url}
        permanent: str | None = None
        all_permanent = True
        for _hop in range(settings.max_redirects + 1):
            scheme = urlsplit(url).scheme.lower()
            if scheme not in ("http", "https"):
                return self._error(state.url, url, f"refused to fetch a {scheme or 'schemeless'} URL: {strip_userinfo(url)}", started)
            try:
                response = self.session.get(
                    url,
                    headers=headers,
                    stream=True,
                    allow_redirects=False,
                    timeout=(settings.connect_timeout, settings.read_timeout),
                )
            except requests.RequestException as exc:
                return self._error(state.url, url, f"request failed: {_reason(exc, exchange, settings)}", started)
            with response:
                location = response.headers.get("location")
                if response.status_code in _REDIRECTS and location:
                    target = _redirect_target(url, location)
                    if target is None:
                        return self._error(state.url, url, f"refused redirect to {location[:200]!r}: not an http(s) URL", started)
                    if response.status_code in _PERMANENT and all_permanent:
                        permanent = target
                    else:
                        all_permanent = False
                        permanent = None
                    if target in seen:
                        return self._error(state.url, target, f"redirect loop at {strip_userinfo(target)}", started)
                    seen.add(target)
                    url = target
                    continue
                try:
                    body = self._read_body(response, deadline)
                except (CapExceededError, requests.RequestException, urllib3.exceptions.HTTPError, OSError, zlib.error) as exc:
                    reason = _reason(exc, exchange, settings)
                    return FetchResult(
                        state.url,
                        url,
                        None,
                        _headers(response),
                        error=f"while reading {strip_userinfo(url)}: {reason}",
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
    return {k.lower(): v[:MAX_HEADER] for k, v in response.headers.items()}


def _redirect_target(url: str, location: str) -> str | None:
    """Where a redirect points, made absolute, if it is a URL we may follow (http(s), a host,
    no control characters); its userinfo is dropped."""
    try:
        absolute = urljoin(url, location.strip())
    except ValueError:
        return None
    return web_url(absolute)


def _reason(exc: BaseException, exchange: Exchange, settings: FetchSettings) -> str:
    """What went wrong, in words a user can act on: which of DNS, refused, timed out, TLS, the guard."""
    if exchange.aborted:
        return "stopped: feeds is shutting down (polled again next time)"
    if exchange.expired:
        return f"timed out: the whole exchange took longer than {settings.connect_timeout + settings.read_timeout:.0f}s"
    chain = _causes(exc)
    for cause in chain:
        if isinstance(cause, AddressRefusedError):
            return str(cause).split(": ", 1)[-1]
        if isinstance(cause, NameResolutionError):
            return f"cannot resolve host {cause.conn.host}"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, requests.exceptions.SSLError | urllib3.exceptions.SSLError):
            return f"TLS error: {str(cause)[:200]}"
    if isinstance(exc, requests.ConnectTimeout):
        return "connect timed out"
    if isinstance(exc, requests.ReadTimeout):
        return "read timed out"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed"
    return str(exc)[:300] or type(exc).__name__


def _causes(exc: BaseException) -> list[BaseException]:
    """An exception, the reasons urllib3 wraps in it and the causes chained to it."""
    seen: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending and len(seen) < 20:
        current = pending.pop()
        if any(current is s for s in seen):
            continue
        seen.append(current)
        reason = getattr(current, "reason", None)
        for nxt in (*(a for a in current.args if isinstance(a, BaseException)), reason, current.__cause__, current.__context__):
            if isinstance(nxt, BaseException):
                pending.append(nxt)
    return seen
