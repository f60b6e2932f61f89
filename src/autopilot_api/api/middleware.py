"""Pure ASGI middleware (no per-request BaseHTTPMiddleware overhead on the hot path)."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autopilot_api.api.error_handlers import unhandled_error_response
from autopilot_api.core.logging import log_access
from autopilot_api.core.metrics import REQUEST_SECONDS, REQUESTS
from autopilot_api.core.request_context import clear_cookie_var, request_id_var

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")
# An error envelope is small: its code is read from the first this many bytes of the body.
_ENVELOPE_PREFIX_BYTES = 4096
_SSE_ERROR = re.compile(rb"event: ?error\r?\n(?:[^\r\n]*\r?\n)*?data: ?([^\r\n]*)")


def _envelope_code(body: bytes) -> str | None:
    """The `error.code` of a JSON error envelope, if the body is one."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def _stream_error_code(chunk: bytes) -> str | None:
    """The code of an `event: error` in an SSE chunk ('error' when it names none), else
    None."""
    match = _SSE_ERROR.search(chunk)
    if match is None:
        return None
    return _envelope_code(match.group(1)) or "error"


def _route_template(scope: Scope) -> str:
    """The matched route's full template (e.g. /api/v1/conversations/{conversation_id}),
    never the raw path: ids, and random 404 paths, would explode the label set."""
    if "route" not in scope:
        return "unmatched"
    # FastAPI keeps the prefixed template of an included router's route here.
    context = scope.get("fastapi", {}).get("effective_route_context")
    template = getattr(context, "path_format", None) or getattr(scope["route"], "path", "")
    return str(template) or "unmatched"


# The labelled series, looked up once each: `labels()` takes a lock and builds its key
# on every call. Methods and templates are bounded (routes; `unmatched` for the rest).
_request_series: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _count_request(method: str, template: str, status: int, seconds: float) -> None:
    key = (method, template, status)
    series = _request_series.get(key)
    if series is None:
        series = (REQUESTS.labels(method, template, str(status)), REQUEST_SECONDS.labels(template))
        _request_series[key] = series
    series[0].inc()
    series[1].observe(seconds)


class RequestIdMiddleware:
    """Accepts a sane `X-Request-ID` or makes one; returns it and puts it in the logs.

    It also answers an exception nothing else handled (envelope, request id, no trace),
    so even a 500 carries the id it was logged under, and writes the one access line per
    request: the path without its query string (tickets travel there) and no headers.
    """

    def __init__(self, app: ASGIApp, *, access_log_sample_rate: float = 1.0) -> None:
        self.app = app
        self.access_log_sample_rate = access_log_sample_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        cookie_token = clear_cookie_var.set(False)
        header = (b"x-request-id", request_id.encode("latin-1"))

        response_started = False
        status = 500
        started = time.perf_counter()
        # What the access line says went wrong: an error envelope's code, or the code of an
        # `event: error` that ended an event stream.
        error_code: str | None = None
        stream_error = False
        watch: str | None = None  # "envelope" (a 4xx/5xx body), "stream" (an SSE body)
        envelope = b""

        async def send_with_id(message: Message) -> None:
            nonlocal response_started, status, error_code, stream_error, watch, envelope
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = message.get("headers", [])
                message["headers"] = [*headers, header]
                if status >= 400:
                    watch = "envelope"
                else:
                    for name, value in headers:
                        if name.lower() == b"content-type":
                            if value.startswith(b"text/event-stream"):
                                watch = "stream"
                            break
            elif watch is not None and message["type"] == "http.response.body":
                body = message.get("body", b"")
                if watch == "envelope":
                    envelope += body[: _ENVELOPE_PREFIX_BYTES - len(envelope)]
                    if not message.get("more_body", False) or (
                        len(envelope) >= _ENVELOPE_PREFIX_BYTES
                    ):
                        error_code, watch = _envelope_code(envelope), None
                elif b"error" in body:
                    code = _stream_error_code(body)
                    if code is not None:
                        error_code, stream_error = code, True
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if response_started:
                raise
            await unhandled_error_response(exc)(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            template = _route_template(scope)
            _count_request(scope["method"], template, status, elapsed)
            log_access(
                scope["method"],
                scope["path"],
                status,
                elapsed,
                self.access_log_sample_rate,
                error=error_code,
                stream_error=stream_error,
            )
            request_id_var.reset(token)
            clear_cookie_var.reset(cookie_token)


class BodySizeLimitMiddleware:
    """Refuses bodies over the limit, by Content-Length and while reading chunked bodies.

    The 413 is raised as an HTTPException from inside `receive`, so it happens in the
    route's body parsing and is rendered by the app's one error handler.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared_too_large = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared_too_large = int(value) > limit
                except ValueError:
                    declared_too_large = False
                break
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if declared_too_large:
                raise StarletteHTTPException(status_code=413)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise StarletteHTTPException(status_code=413)
            return message

        await self.app(scope, limited_receive, send)
