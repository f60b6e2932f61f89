"""Server-sent events: FastAPI's framing, with disconnects always noticed."""

from __future__ import annotations

import json
from typing import Any

from fastapi.sse import EventSourceResponse, format_sse_event
from starlette.types import Receive, Scope, Send


def sse_event(event: str, data: Any, *, event_id: str | None = None) -> bytes:
    return format_sse_event(data_str=json.dumps(data), event=event, id=event_id)


def sse_comment(text: str) -> bytes:
    return format_sse_event(comment=text)


class DisconnectAwareEventSourceResponse(EventSourceResponse):
    """Cancels the stream as soon as the client goes away.

    Starlette only notices a departed client on the next write when the server speaks
    ASGI 2.4; a slow upstream would then keep running, and the reply would be stored as
    complete. Listening for `http.disconnect` cancels the generator at once, so its
    `finally` can store what was produced as `aborted`.
    """

    headers_extra = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

    def __init__(self, content: Any, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        for name, value in self.headers_extra.items():
            self.headers.setdefault(name, value)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope = {**scope, "asgi": {**scope.get("asgi", {}), "spec_version": "2.3"}}
        await super().__call__(scope, receive, send)
