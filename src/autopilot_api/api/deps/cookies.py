"""The session cookie and the event-stream cookie: read, set, cleared."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Request, Response

from autopilot_api.api.deps.services import app_state
from autopilot_api.core.config import Settings
from autopilot_api.core.request_context import clear_cookie_var

# Our credentials are 64 characters; a longer cookie value is not ours.
MAX_CREDENTIAL_CHARS = 128

# The attributes that never change; name, Secure and SameSite come from Settings.
SESSION_COOKIE_CONFIG: dict[str, Any] = {"httponly": True, "path": "/"}


def get_session_cookie(request: Request, settings: Settings) -> str | None:
    return request.cookies.get(settings.session_cookie_name) or None


def _remaining_seconds(expires_at: str) -> int:
    expiry = datetime.fromisoformat(expires_at)
    return max(int((expiry - datetime.now(UTC)).total_seconds()), 0)


def set_session_cookie(
    response: Response, settings: Settings, *, token: str, expires_at: str
) -> None:
    """Set (or re-issue) the cookie; Max-Age is the session's remaining lifetime. It
    replaces one set earlier in the same request (a re-issue, then a new token)."""
    prefix = f"{settings.session_cookie_name}=".encode("latin-1")
    response.raw_headers[:] = [
        (name, value)
        for name, value in response.raw_headers
        if not (name == b"set-cookie" and value.startswith(prefix))
    ]
    response.set_cookie(
        key=settings.session_cookie_name,
        value=token,
        max_age=_remaining_seconds(expires_at),
        secure=settings.session_cookie_secure,
        samesite=settings.session_cookie_samesite,
        **SESSION_COOKIE_CONFIG,
    )


def clear_session_cookie(response: Response, settings: Settings) -> None:
    response.delete_cookie(
        key=settings.session_cookie_name,
        secure=settings.session_cookie_secure,
        samesite=settings.session_cookie_samesite,
        **SESSION_COOKIE_CONFIG,
    )


def clear_session_cookie_everywhere(response: Response, settings: Settings) -> None:
    """Cleared on this response, and on an error response instead (the error handler reads
    the flag)."""
    clear_session_cookie(response, settings)
    clear_cookie_var.set(True)


async def get_event_stream_cookie(request: Request) -> str | None:
    """The stream credential a ticket-opened EventSource presents when it reconnects."""
    value = request.cookies.get(app_state(request).settings.events_cookie_name)
    return value if value and len(value) <= MAX_CREDENTIAL_CHARS else None


EventStreamCookie = Annotated[str | None, Depends(get_event_stream_cookie)]


def set_event_stream_cookie(
    response: Response, settings: Settings, *, path: str, credential: str, expires_at: str
) -> None:
    """HttpOnly, sent only to the events URL; SameSite and Secure as the session cookie."""
    response.set_cookie(
        key=settings.events_cookie_name,
        value=credential,
        max_age=_remaining_seconds(expires_at),
        path=path,
        secure=settings.session_cookie_secure,
        samesite=settings.session_cookie_samesite,
        httponly=True,
    )
