"""The data-plane client's transport: HTTP/1.1 keep-alive connections on asyncio, parsed by
httptools (the C parser uvicorn serves with).

supabase-py speaks httpx, and httpx lets the bytes on the wire come from any transport.
This one does only what a call to PostgREST needs: one request at a time per connection,
responses read whole (every RPC answers a bounded JSON document), TLS for a hosted
project, and httpx's own exceptions so callers see no difference. No proxies, no HTTP/2.
Measured against aiohttp beneath httpx (httpx-aiohttp), it costs a fraction of the CPU
per call (bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from datetime import timedelta
from typing import Any, cast

import httptools
import httpx

_Key = tuple[bytes, bytes, int]


class _ReadTimedOut(Exception):
    """The read timer went off (becomes httpx.ReadTimeout with the request attached)."""


_DEFAULT_PORTS = {b"http": 80, b"https": 443}


class _Connection(asyncio.Protocol):
    """One keep-alive connection; it carries one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser: httptools.HttpResponseParser | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._head = False
        self._headers_done = False
        self._complete = False
        self._keep_alive = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's, but are the same to use.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            # Bytes nobody asked for: this connection can no longer be trusted.
            self.close()
            return
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
                self._fail(httpx.RemoteProtocolError("the data plane closed the connection"))
        self.closed = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._parser is not None and not self._complete:
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
    async def exchange(self, data: bytes, *, head: bool, read_timeout: float | None) -> bool:
        """Send one request and read its whole response; True if the connection stays open."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self._waiter = loop.create_future()
        self._head = head
        self._headers_done = self._complete = self._keep_alive = False
        self.status = 0
        self.headers = []
        self.body = []
        self.transport.write(data)
        # A timer that fails the waiter, cheaper than asyncio.timeout() on every call.
        timer = (
            None
            if read_timeout is None
            else loop.call_later(read_timeout, self._fail_waiter, _ReadTimedOut())
        )
        try:
            await self._waiter
        except _ReadTimedOut:
            raise httpx.ReadTimeout("the data plane did not answer in time") from None
        finally:
            if timer is not None:
                timer.cancel()
        keep_alive = self._keep_alive and not self.closed
        self._parser = None
        self._waiter = None
        return keep_alive

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
        keepalive_expiry: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._max_connections = max_connections
        self._max_idle = max_keepalive_connections
        self._keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context
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
            connection = self._reuse(key) or await self._connect(key, timeouts, request)
            try:
                keep_alive = await connection.exchange(
                    data, head=request.method == "HEAD", read_timeout=timeouts.get("read")
                )
            except httpx.TransportError as exc:
                connection.close()
                exc.request = request
                raise
            except BaseException:
                # Cancelled mid-exchange: its response may still arrive, so the
                # connection cannot serve another request.
                connection.close()
                raise
            status, headers, body = connection.status, connection.headers, connection.body
            if keep_alive:
                self._release(key, connection)
            else:
                connection.close()
        finally:
            slots.release()
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
        response.elapsed = timedelta(seconds=loop.time() - started)
        return response

    def _reuse(self, key: _Key) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest_allowed = asyncio.get_running_loop().time() - self._keepalive_expiry
        while idle:
            connection = idle.pop()
            if not connection.closed and connection.idle_since >= oldest_allowed:
                return connection
            connection.close()
        return None

    def _release(self, key: _Key, connection: _Connection) -> None:
        now = asyncio.get_running_loop().time()
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


def transport_stats(transport: Any) -> dict[str, int]:
    """Idle connections per origin (for tests and diagnostics)."""
    if not isinstance(transport, DataPlaneTransport):
        return {}
    return {
        f"{scheme.decode()}://{host.decode()}:{port}": len(idle)
        for (scheme, host, port), idle in transport._idle.items()
    }
