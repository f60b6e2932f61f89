"""The data-plane HTTP client supabase-py is given, and the transport beneath it.

Two transports, chosen by DATA_PLANE_TRANSPORT (as uvicorn chooses httptools or h11):
- `builtin`: HTTP/1.1 keep-alive connections on asyncio, parsed by httptools (the C parser
  uvicorn serves with). It does only what a call to PostgREST needs: one request at a time
  per connection, the answer read whole (every call answers a bounded JSON document), TLS
  for a hosted project, httpx's exceptions. No proxies, no HTTP/2. It costs a fraction of
  httpx's own transport's CPU per call (bench/RESULTS.md).
- `httpx`: httpx's own transport (httpcore), with everything httpx does, proxies included.
- `auto` (the default): `builtin`, unless a proxy is set in the environment.

Both keep to the same contract: timeouts mean what httpx's mean (connect, TLS included; pool;
read: the longest silence while an answer is awaited or read, not a deadline for the whole
answer; a request the server does not take in time is a WriteTimeout: the builtin transport
writes it whole at once and tells the two apart when its read timer goes off), an idle
connection is not reused past DATA_PLANE_KEEPALIVE_SECONDS, and an answer larger than
DATA_PLANE_MAX_RESPONSE_BYTES fails with `ResponseTooLarge` and its connection is closed.

A reused connection can turn out to be closed by the server (a restart, a load balancer
dropping it): both transports check an idle connection before they reuse it, as httpcore
and urllib3 do. When the server closes it anyway, between that check and the request (or
closes it after reading the request, which the client cannot tell apart), `builtin` sends
a GET or HEAD once more on a new connection, and never anything else: PostgREST runs
GET and HEAD in read-only transactions, so they cannot repeat a write, while a POST to
`/rpc` may have been run and committed before the connection dropped (RFC 9112 §9.3.1;
aiohttp and urllib3 retry only idempotent methods too). httpcore retries nothing; with
`httpx` such a call fails as it would anywhere else. A failed write reaches the API's
caller as a 503 to retry, with its Idempotency-Key where the route takes one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any, Literal, cast

import httptools
import httpx

logger = logging.getLogger(__name__)

TransportKind = Literal["builtin", "httpx"]
_Key = tuple[bytes, bytes, int]
_DEFAULT_PORTS = {b"http": 80, b"https": 443}
# Methods that cannot write through PostgREST (it runs them read-only): safe to send again.
_RESENDABLE_METHODS = frozenset({"GET", "HEAD"})
# What httpx reads proxies from (through urllib's getproxies, lower case first).
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


class ResponseTooLarge(httpx.TransportError):
    """The data plane's answer is larger than DATA_PLANE_MAX_RESPONSE_BYTES."""


def proxy_variables(environ: Mapping[str, str]) -> list[str]:
    """The proxy variables set (non-empty) in `environ`, in any case."""
    wanted = {name.lower() for name in PROXY_VARIABLES}
    return sorted(name for name, value in environ.items() if name.lower() in wanted and value)


def choose_transport(
    setting: Literal["auto", "builtin", "httpx"], environ: Mapping[str, str] | None = None
) -> tuple[TransportKind, str]:
    """The transport to use and why (for the start-up log line)."""
    proxies = proxy_variables(os.environ if environ is None else environ)
    if setting == "httpx":
        return "httpx", "DATA_PLANE_TRANSPORT=httpx"
    if setting == "builtin":
        if proxies:
            return "builtin", f"DATA_PLANE_TRANSPORT=builtin; {', '.join(proxies)} not used"
        return "builtin", "DATA_PLANE_TRANSPORT=builtin"
    if proxies:
        return "httpx", f"{', '.join(proxies)} set: the builtin transport does not use proxies"
    return "builtin", "no proxy set"


class _NoCookies(httpx.Cookies):
    """A cookie store that neither keeps nor sends anything: PostgREST sets no cookies, a
    client shared by every visitor must never carry one between calls, and httpx would
    otherwise wrap every response (and request) for urllib's cookie jar."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def set_cookie_header(self, request: httpx.Request) -> None:
        return None


class DataPlaneHttpClient(httpx.AsyncClient):
    """httpx's client for supabase-py, without cookie handling."""

    _no_cookies = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        return None


def create_data_plane_http_client(
    kind: TransportKind,
    *,
    timeout: httpx.Timeout,
    limits: httpx.Limits,
    max_response_bytes: int,
    ssl_context: ssl.SSLContext | None = None,
    clock: Callable[[], float] | None = None,
) -> DataPlaneHttpClient:
    """The httpx client for the data plane over the chosen transport.

    `clock` (seconds, monotonic) replaces the event loop's clock for the builtin
    transport's idle limit, for tests.
    """
    if kind == "builtin":
        max_connections = limits.max_connections or 100
        transport = DataPlaneTransport(
            max_connections=max_connections,
            max_keepalive_connections=(
                max_connections
                if limits.max_keepalive_connections is None
                else limits.max_keepalive_connections
            ),
            keepalive_expiry=(
                float("inf") if limits.keepalive_expiry is None else limits.keepalive_expiry
            ),
            max_response_bytes=max_response_bytes,
            ssl_context=ssl_context,
            clock=clock,
        )
        return DataPlaneHttpClient(timeout=timeout, transport=transport)
    # No transport given: httpx builds its own, with the proxies the environment names.
    return DataPlaneHttpClient(
        timeout=timeout,
        limits=limits,
        verify=ssl_context or True,
        event_hooks={"response": [response_size_cap(max_response_bytes)]},
    )


def response_size_cap(limit: int) -> Callable[[httpx.Response], Awaitable[None]]:
    """An httpx response hook: the answer fails with ResponseTooLarge past `limit` bytes.

    It runs when the head has arrived, before httpx reads the body; raising from it (or
    from the body's stream) makes httpx close the response, and httpcore then closes a
    connection whose answer was not read to its end.
    """

    async def cap(response: httpx.Response) -> None:
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise _too_large(limit, response.request)
        response.stream = _CappedStream(cast(httpx.AsyncByteStream, response.stream), limit)

    return cap


def _too_large(limit: int, request: httpx.Request) -> ResponseTooLarge:
    return ResponseTooLarge(
        f"the data plane's answer is larger than DATA_PLANE_MAX_RESPONSE_BYTES ({limit})",
        request=request,
    )


class _CappedStream(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, limit: int) -> None:
        self._stream = stream
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        received = 0
        async for chunk in self._stream:
            received += len(chunk)
            if received > self._limit:
                raise ResponseTooLarge(
                    "the data plane's answer is larger than DATA_PLANE_MAX_RESPONSE_BYTES "
                    f"({self._limit})"
                )
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


# --- the builtin transport -------------------------------------------------------------------
class _TimedOut(Exception):
    """The read timer went off (becomes httpx's timeout with the request attached)."""

    def __init__(self, writing: bool) -> None:
        self.writing = writing


class _Connection(asyncio.Protocol):
    """One keep-alive connection; it carries one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        # Nothing of the current exchange's answer arrived before the connection ended.
        self.lost_before_answer = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poll: Any = None
        self._parser: httptools.HttpResponseParser | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._head = False
        self._headers_done = False
        self._complete = False
        self._keep_alive = False
        self._received = 0
        self._max_bytes = 0
        self._read_timeout = 0.0
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's, but are the same to use.
        self.transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._poll = select.poll()
            self._poll.register(sock.fileno(), select.POLLIN)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            # Bytes nobody asked for: this connection can no longer be trusted.
            self.close()
            return
        self._received += len(data)
        if self._received > self._max_bytes:
            self._fail(ResponseTooLarge(f"larger than {self._max_bytes} bytes"))
            return
        assert self._loop is not None
        self._last_read = self._loop.time()
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("the data plane switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed response from the data plane: {exc}"))

    def eof_received(self) -> bool:
        if self._parser is not None and not self._complete:
            if self._headers_done and self._reads_until_close():
                self._finish()
            else:
                self.lost_before_answer = self._received == 0
                self._fail(httpx.RemoteProtocolError("the data plane closed the connection"))
        self.closed = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._parser is not None and not self._complete:
            self.lost_before_answer = self._received == 0
            self._fail(httpx.ReadError("the connection to the data plane was lost"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        self.status = self._parser.get_status_code()
        self._headers_done = True
        if self._head or self.status in (204, 304):
            self._finish()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:
            # An interim response: the real one follows on the same exchange.
            self.headers.clear()
            self._headers_done = False
            return
        self._finish()

    # the exchange
    def is_stale(self) -> bool:
        """An idle connection with something to read: the server's close (or bytes it had
        no reason to send). The check httpcore (`is_readable`) and urllib3
        (`is_connection_dropped`) make before reusing a connection."""
        return self.closed or (self._poll is not None and bool(self._poll.poll(0)))

    async def exchange(
        self, data: bytes, *, head: bool, read_timeout: float | None, max_bytes: int
    ) -> bool:
        """Send one request and read its whole response; True if the connection stays open."""
        assert self.transport is not None
        assert self._loop is not None
        loop = self._loop
        self._parser = httptools.HttpResponseParser(self)
        self._waiter = loop.create_future()
        self._head = head
        self._headers_done = self._complete = self._keep_alive = False
        self.lost_before_answer = False
        self._received = 0
        self._max_bytes = max_bytes
        self.status = 0
        self.headers = []
        self.body = []
        self.transport.write(data)
        if read_timeout is not None:
            # One timer per exchange, moved on only when it goes off: cheaper than a
            # timer (or asyncio.timeout()) restarted on every read.
            self._read_timeout = read_timeout
            self._last_read = loop.time()
            self._timer = loop.call_at(self._last_read + read_timeout, self._on_read_timer)
        try:
            await self._waiter
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        keep_alive = self._keep_alive and not self.closed
        self._parser = None
        self._waiter = None
        return keep_alive

    def _on_read_timer(self) -> None:
        assert self._loop is not None
        assert self.transport is not None
        deadline = self._last_read + self._read_timeout
        if deadline - self._loop.time() > 0.001:
            # Something was read since the timer was set: wait from then.
            self._timer = self._loop.call_at(deadline, self._on_read_timer)
            return
        self._timer = None
        self._fail_waiter(_TimedOut(writing=self.transport.get_write_buffer_size() > 0))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _reads_until_close(self) -> bool:
        names = {name.lower() for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def _finish(self) -> None:
        # Asked now: once a message completes, httptools resets and forgets it.
        self._keep_alive = self._parser is not None and self._parser.should_keep_alive()
        self._complete = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, exc: Exception) -> None:
        self._complete = True
        self._fail_waiter(exc)
        self.close()

    def _fail_waiter(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)


class DataPlaneTransport(httpx.AsyncBaseTransport):
    """Keep-alive connections per origin; at most `max_connections` exchanges at once."""

    def __init__(
        self,
        *,
        max_connections: int = 100,
        max_keepalive_connections: int = 100,
        keepalive_expiry: float = 15.0,
        max_response_bytes: int = 8 * 1024 * 1024,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._max_connections = max_connections
        self._max_idle = max_keepalive_connections
        self._keepalive_expiry = keepalive_expiry
        self._max_response_bytes = max_response_bytes
        self._ssl_context = ssl_context
        self._clock = clock
        self._slots: asyncio.Semaphore | None = None
        self._idle: dict[_Key, deque[_Connection]] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the data-plane transport is closed")
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        url = request.url
        scheme = url.raw_scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported scheme {url.scheme!r}", request=request)
        key = (scheme, url.raw_host, url.port or _DEFAULT_PORTS[scheme])
        data = _serialize(request, await request.aread())
        loop = asyncio.get_running_loop()
        started = loop.time()

        slots = self._slots
        if slots is None:
            slots = self._slots = asyncio.Semaphore(self._max_connections)
        if slots.locked():
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout(
                    "no free connection to the data plane", request=request
                ) from None
        else:
            await slots.acquire()
        try:
            connection = self._reuse(key)
            if connection is not None:
                try:
                    keep_alive = await self._exchange(connection, data, request)
                    return self._response(request, key, connection, keep_alive, started)
                except httpx.TransportError:
                    resend = connection.lost_before_answer and request.method in _RESENDABLE_METHODS
                    if not resend:
                        raise
                # The reused connection ended before any byte of its answer: a GET or HEAD
                # goes once more, on a new connection (see the module's docstring).
            connection = await self._connect(key, timeouts, request)
            keep_alive = await self._exchange(connection, data, request)
            return self._response(request, key, connection, keep_alive, started)
        finally:
            slots.release()

    async def _exchange(self, connection: _Connection, data: bytes, request: httpx.Request) -> bool:
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        try:
            return await connection.exchange(
                data,
                head=request.method == "HEAD",
                read_timeout=timeouts.get("read"),
                max_bytes=self._max_response_bytes,
            )
        except _TimedOut as exc:
            connection.close()
            if exc.writing:
                raise httpx.WriteTimeout(
                    "the data plane did not take the request in time", request=request
                ) from None
            raise httpx.ReadTimeout(
                "the data plane did not answer in time", request=request
            ) from None
        except ResponseTooLarge:
            connection.close()
            raise _too_large(self._max_response_bytes, request) from None
        except httpx.TransportError as exc:
            connection.close()
            exc.request = request
            raise
        except BaseException:
            # Cancelled mid-exchange: its response may still arrive, so the
            # connection cannot serve another request.
            connection.close()
            raise

    def _response(
        self,
        request: httpx.Request,
        key: _Key,
        connection: _Connection,
        keep_alive: bool,
        started: float,
    ) -> httpx.Response:
        status, headers, body = connection.status, connection.headers, connection.body
        if keep_alive:
            self._release(key, connection)
        else:
            connection.close()
        response = httpx.Response(
            status,
            headers=headers,
            stream=httpx.ByteStream(b"".join(body)),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )
        # Read (and decoded) here, in one synchronous pass: httpx then has nothing to
        # stream, which costs more than the exchange itself for a small JSON answer.
        response.read()
        response.elapsed = timedelta(seconds=asyncio.get_running_loop().time() - started)
        return response

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def _reuse(self, key: _Key) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest_allowed = self._now() - self._keepalive_expiry
        while idle:
            connection = idle.pop()
            if connection.idle_since >= oldest_allowed and not connection.is_stale():
                return connection
            connection.close()
        return None

    def _release(self, key: _Key, connection: _Connection) -> None:
        now = self._now()
        connection.idle_since = now
        idle = self._idle.setdefault(key, deque())
        # The least recently used end: drop what expired or closed while it waited.
        while idle and (idle[0].closed or idle[0].idle_since < now - self._keepalive_expiry):
            idle.popleft().close()
        if len(idle) >= self._max_idle:
            connection.close()
            return
        idle.append(connection)

    async def _connect(
        self, key: _Key, timeouts: dict[str, float | None], request: httpx.Request
    ) -> _Connection:
        scheme, host, port = key
        hostname = host.decode("ascii")
        tls: ssl.SSLContext | None = None
        if scheme == b"https":
            tls = self._ssl_context or httpx.create_ssl_context()
            self._ssl_context = tls
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeouts.get("connect")):
                _, connection = await loop.create_connection(
                    _Connection,
                    hostname,
                    port,
                    ssl=tls,
                    server_hostname=hostname if tls is not None else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                "connecting to the data plane timed out", request=request
            ) from None
        except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            raise httpx.ConnectError(
                f"cannot connect to the data plane: {type(exc).__name__}", request=request
            ) from exc
        return connection

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        self._idle.clear()


def _serialize(request: httpx.Request, body: bytes) -> bytes:
    """The request as one write: request line, headers, body."""
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.url.raw_path)]
    lines += [b"%s: %s" % pair for pair in request.headers.raw]
    head = b"\r\n".join(lines)
    # A line break inside a name or value would start a header (or a request) of its own.
    if head.count(b"\n") != len(lines) - 1 or head.count(b"\r") != len(lines) - 1:
        raise httpx.LocalProtocolError("a header holds a line break", request=request)
    return b"%s\r\n\r\n%s" % (head, body)
