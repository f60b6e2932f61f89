"""Server-sent events: FastAPI's framing, with disconnects always noticed and writes bounded."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from fastapi.sse import EventSourceResponse, format_sse_event
from starlette.types import Message, Receive, Scope, Send


def sse_event(event: str, data: Any, *, event_id: str | None = None) -> bytes:
    return format_sse_event(data_str=json.dumps(data), event=event, id=event_id)


def sse_comment(text: str) -> bytes:
    return format_sse_event(comment=text)


class _ClientStalled(Exception):
    """A write did not complete within the deadline: the client reads nothing."""


class DisconnectAwareEventSourceResponse(EventSourceResponse):
    """Cancels the stream as soon as the client goes away, or the server stops it.

    Starlette only notices a departed client on the next write when the server speaks
    ASGI 2.4; a slow upstream would then keep running, and the reply would be stored as
    complete. Listening for `http.disconnect` cancels the generator at once, so its
    `finally` can store what was produced as `aborted`.

    With `send_timeout`, a write waits at most that long (and never past `ends_at`, a
    `time.monotonic()`): a write blocks once the client's socket buffers are full, so a
    client that reads nothing would otherwise hold the stream, and its place, forever, with
    the stream's own end never reached. When the deadline passes, `on_stalled` is told, the
    content is closed (its places released) and the response ends. With `stop`, the response
    ends when the event is set, even in the middle of a write.

    The connection itself stays until its client reads the end of the response or goes away:
    ASGI cannot drop a connection, and bounding a connection that reads nothing is the edge's
    job (the reverse proxy's send timeout), as for any other response.
    """

    headers_extra = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

    def __init__(
        self,
        content: Any,
        *,
        send_timeout: float | None = None,
        ends_at: float | None = None,
        stop: asyncio.Event | None = None,
        on_stalled: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(content, **kwargs)
        for name, value in self.headers_extra.items():
            self.headers.setdefault(name, value)
        self._send_timeout = send_timeout
        self._ends_at = ends_at
        self._stop = stop
        self._on_stalled = on_stalled
        self._started = False
        self._completed = False
        self._disconnected = False
        self._cut_short = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope = {**scope, "asgi": {**scope.get("asgi", {}), "spec_version": "2.3"}}
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Closed here, out of the cancelled task group: its cleanup may await.
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()
        if self._cut_short and not self._disconnected and not self._completed:
            # The end of the response, for a client that reads on: an EventSource reconnects.
            # For one that reads nothing, this waits until it goes away.
            if not self._started:
                await send(
                    {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
                )
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def listen_for_disconnect(self, receive: Receive) -> None:
        if self._stop is None:
            await super().listen_for_disconnect(receive)
            self._disconnected = True
            return
        stopped = asyncio.ensure_future(self._stop.wait())
        left = asyncio.ensure_future(super().listen_for_disconnect(receive))
        try:
            done, _ = await asyncio.wait((stopped, left), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            left.cancel()
        if left in done:
            left.result()  # an error while listening ends the response, as in Starlette
            self._disconnected = True
        else:
            self._cut_short = True

    async def stream_response(self, send: Send) -> None:
        async def tracked_send(message: Message) -> None:
            await self._send_within_deadline(send, message)

        try:
            await super().stream_response(tracked_send)
        except _ClientStalled:
            self._cut_short = True
            if self._on_stalled is not None:
                self._on_stalled()

    async def _send_within_deadline(self, send: Send, message: Message) -> None:
        if self._send_timeout is None:
            await send(message)
        else:
            timeout = self._send_timeout
            if self._ends_at is not None:
                timeout = min(timeout, self._ends_at - time.monotonic())
            try:
                async with asyncio.timeout(max(timeout, 0.0)):
                    await send(message)
            except TimeoutError:
                raise _ClientStalled from None
        if message["type"] == "http.response.start":
            self._started = True
        elif not message.get("more_body", False):
            self._completed = True
