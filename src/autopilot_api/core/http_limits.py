"""uvicorn's httptools protocol with the limits uvicorn has no setting for.

uvicorn (httptools) reads a request head of any size, for as long as the client likes, and
accepts every connection until the process runs out of file descriptors. Its own knobs do not
close those gaps: `h11_max_incomplete_event_size` applies to h11 only; `timeout_keep_alive` is
armed only after a response and cancelled by any byte, so it never bounds a head being read;
`limit_concurrency` is checked once a head is complete (a slowloris never gets there), counts
idle keep-alive connections and live event streams alike, and answers 503 without closing.

This protocol adds, per served process:
- MAX_HEADER_BYTES: a request line + headers larger than this get 431 and the connection closes;
- HEADER_READ_TIMEOUT_SECONDS: from a request's first byte to the end of its head (an idle
  keep-alive connection is under KEEPALIVE_TIMEOUT_SECONDS instead, as is a new connection that
  has not sent anything yet), else 408 and close;
- MAX_CONNECTIONS: over it, the connection idle the longest is closed to make room, and when
  none is idle the new one gets 503 + Retry-After and is closed. Connections serving an event
  stream (text/event-stream) are not counted: streams have their own caps.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from autopilot_api.core.http_protocol import CorkedHttpToolsProtocol

if TYPE_CHECKING:
    from uvicorn._types import ASGISendEvent
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from autopilot_api.core.config import Settings

logger = logging.getLogger("uvicorn.error")

RETRY_AFTER_SECONDS = 1
# After a refusal the connection is half-closed and what the client still sends is read and
# dropped, until it closes or for at most this long: closing with unread data would reset the
# connection, and the client would lose the answer...
REFUSAL_LINGER_SECONDS = 2.0
# ...for at most this many connections at a time; beyond, they are closed at once.
MAX_LINGERING_REFUSALS = 256
REFUSAL_LOG_INTERVAL_SECONDS = 10.0


def connections_for_ulimit() -> int:
    """The default MAX_CONNECTIONS: three quarters of the soft `ulimit -n`, leaving the rest to
    event streams, the PostgREST and Postgres connections, log files and the like."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(64, soft * 3 // 4)


@dataclass(frozen=True)
class ServerLimits:
    max_header_bytes: int
    header_read_timeout_seconds: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            header_read_timeout_seconds=settings.header_read_timeout_seconds,
            max_connections=settings.max_connections or connections_for_ulimit(),
        )


class _Registry:
    """What the protocols of one server share, beyond uvicorn's `connections`."""

    def __init__(self) -> None:
        # Idle connections, the one idle the longest first (dicts keep insertion order).
        self.idle: dict[LimitedHttpToolsProtocol, None] = {}
        self.streams = 0
        self.lingering = 0
        self.refused = 0
        self.refusals_logged_at = 0.0


_registries: weakref.WeakKeyDictionary[ServerState, _Registry] = weakref.WeakKeyDictionary()


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request that is refused."""


class _StreamAwareCycle(RequestResponseCycle):
    """uvicorn's request/response cycle, telling its protocol when the response is an event
    stream (uvicorn builds RequestResponseCycle by name, so the protocol re-classes it)."""

    protocol: LimitedHttpToolsProtocol

    async def send(self, message: ASGISendEvent) -> None:
        if not self.response_started and message["type"] == "http.response.start":
            for name, value in message.get("headers", ()):
                if name.lower() == b"content-type":
                    if value.startswith(b"text/event-stream"):
                        self.protocol.stream_started()
                    break
        await super().send(message)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    # Read from the settings once per process (a class, not an instance, crosses to workers).
    limits: ClassVar[ServerLimits | None] = None

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = LimitedHttpToolsProtocol.limits
        if limits is None:
            from autopilot_api.core.config import get_settings

            limits = LimitedHttpToolsProtocol.limits = ServerLimits.from_settings(get_settings())
        self._limits = limits
        registry = _registries.get(server_state)
        if registry is None:
            registry = _registries[server_state] = _Registry()
        self._registry = registry
        self._head_pending = False
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refusal: tuple[int, str] | None = None
        self._lingering: asyncio.TimerHandle | None = None
        self._streaming = False

    # --- connections ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        registry = self._registry
        if len(self.connections) - registry.streams > self._limits.max_connections:
            oldest_idle = next(iter(registry.idle), None)
            if oldest_idle is None:
                self._refuse_connection()
                return
            oldest_idle._evict()
        self._become_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._registry.idle.pop(self, None)
        self._cancel_head_timer()
        self._stream_ended()
        if self._lingering is not None:
            self._lingering.cancel()
            self._lingering = None
            self._registry.lingering -= 1
        super().connection_lost(exc)

    def _become_idle(self) -> None:
        """Idle until the next request: under the keep-alive timeout, first to be evicted."""
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )
        self._registry.idle[self] = None

    def _evict(self) -> None:
        self._registry.idle.pop(self, None)
        # No longer counted, though its close completes on a later turn of the loop.
        self.connections.discard(self)
        self._unset_keepalive_if_required()
        self.transport.close()

    def _refuse_connection(self) -> None:
        registry = self._registry
        self.connections.discard(self)
        registry.refused += 1
        now = time.monotonic()
        if now - registry.refusals_logged_at >= REFUSAL_LOG_INTERVAL_SECONDS:
            registry.refusals_logged_at = now
            logger.warning(
                "MAX_CONNECTIONS (%d) reached with no idle connection to close: "
                "%d connections refused with 503 so far",
                self._limits.max_connections,
                registry.refused,
            )
        self.transport.write(
            self._response(
                503,
                "Too many connections: retry shortly.",
                b"retry-after: " + str(RETRY_AFTER_SECONDS).encode() + b"\r\n",
            )
        )
        self._linger_then_close()

    def _linger_then_close(self) -> None:
        registry = self._registry
        if registry.lingering >= MAX_LINGERING_REFUSALS or not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        registry.lingering += 1
        self._lingering = self.loop.call_later(REFUSAL_LINGER_SECONDS, self.transport.close)

    # --- event streams -------------------------------------------------------------------

    def stream_started(self) -> None:
        if not self._streaming:
            self._streaming = True
            self._registry.streams += 1

    def _stream_ended(self) -> None:
        if self._streaming:
            self._streaming = False
            self._registry.streams -= 1

    # --- reading a request ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:
            return  # refused: read and dropped (see REFUSAL_LINGER_SECONDS)
        if self._head_pending:
            # Counted from the chunk after the one the request began in: that one is bounded
            # by the transport's read size, and the whole head is measured once complete.
            self._head_bytes += len(data)
        # uvicorn's data_received, telling a refusal from a parse error.
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._send_refusal(*self._refusal)
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._head_pending and self._head_bytes > self._limits.max_header_bytes:
            self._send_refusal(431, "Request header fields too large.")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._registry.idle.pop(self, None)
        self._head_pending = True
        self._head_bytes = 0
        self._head_timer = self.loop.call_later(
            self._limits.header_read_timeout_seconds, self._head_timed_out
        )

    def on_headers_complete(self) -> None:
        self._head_pending = False
        self._cancel_head_timer()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self._limits.max_header_bytes:
            self._refusal = (431, "Request header fields too large.")
            raise _Refused
        existing = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not existing and type(cycle) is RequestResponseCycle:
            cycle.__class__ = _StreamAwareCycle
            cycle.protocol = self  # type: ignore[attr-defined]

    def on_response_complete(self) -> None:
        self._stream_ended()
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:
            self._registry.idle[self] = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._head_pending:
            self._send_refusal(408, "Request header read timeout.")

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    # --- answers without the app ---------------------------------------------------------

    def _response(self, status: int, message: str, extra: bytes = b"") -> bytes:
        body = message.encode("ascii")
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                extra,
                b"connection: close\r\n\r\n",
                body,
            ]
        )
        return b"".join(content)

    def _send_refusal(self, status: int, message: str) -> None:
        self._head_pending = False
        self._cancel_head_timer()
        self._registry.idle.pop(self, None)
        if self.transport.is_closing():
            return
        # A response to an earlier request may still be on its way: only close then.
        if self.cycle is None or self.cycle.response_complete:
            self.logger.warning("%s (%d)", message, status)
            self.transport.write(self._response(status, message))
            self._linger_then_close()
        else:
            self.transport.close()


class ServedHttpToolsProtocol(CorkedHttpToolsProtocol, LimitedHttpToolsProtocol):
    """What `serve` runs: the limits above, and a small response sent in one write."""
