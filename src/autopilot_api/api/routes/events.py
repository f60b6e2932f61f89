"""/api/v1/events: the caller's live events (SSE), resumable with Last-Event-ID."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status
from fastapi.sse import format_sse_event

from autopilot_api.api.deps import CurrentAuth, CurrentUser, EventServiceDep, SettingsDep
from autopilot_api.api.openapi import (
    BEARER,
    EVENT_TICKET,
    SESSION_COOKIE,
    SIGNED_IN,
    SseEvent,
    security,
    sse_response,
)
from autopilot_api.api.sse import DisconnectAwareEventSourceResponse, sse_comment, sse_event
from autopilot_api.core.errors import AppError, UnauthorizedError
from autopilot_api.schemas.admin import EventTicketPublic
from autopilot_api.schemas.common import ErrorResponse, error_responses
from autopilot_api.schemas.events import EVENT_TYPES, SessionEventPublic
from autopilot_api.services.event_service import EventSubject

router = APIRouter(tags=["events"])


@router.post(
    "/ticket",
    summary="A short-lived, single-use ticket for EventSource clients",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(401, 503),
    openapi_extra=SIGNED_IN,
)
async def issue_ticket(user: CurrentUser, events: EventServiceDep) -> EventTicketPublic:
    """EventSource cannot send Authorization: trade the bearer token for a URL ticket."""
    ticket, expires_at = await events.issue_ticket(user=user)
    return EventTicketPublic.model_validate({"ticket": ticket, "expires_at": expires_at})


@router.get(
    "",
    summary="Live events of the caller's session or profile (SSE)",
    status_code=status.HTTP_200_OK,
    # The route returns its own streaming response: no JSON body to document.
    response_class=Response,
    responses={
        200: sse_response(
            "The caller's audit events as server-sent events (`id:` = the event id, "
            "`event:` = its type), replayed after Last-Event-ID and then live; heartbeat "
            "comments between them, and a `retry:` hint first.",
            [
                SseEvent(
                    EVENT_TYPES,
                    SessionEventPublic,
                    "An entry of the audit trail.",
                    has_id=True,
                ),
                SseEvent(
                    ["error"],
                    ErrorResponse,
                    "The stream failed (the envelope); reconnect with Last-Event-ID.",
                ),
            ],
        ),
        **error_responses(401, 422, 503),
    },
    openapi_extra=security(BEARER, SESSION_COOKIE, EVENT_TICKET),
)
async def stream_events(
    auth: CurrentAuth,
    events: EventServiceDep,
    settings: SettingsDep,
    ticket: Annotated[str | None, Query(max_length=128, description="From POST /ticket.")] = None,
    last_event_id: Annotated[
        int | None, Header(alias="Last-Event-ID", ge=0, description="Resume after this id.")
    ] = None,
) -> DisconnectAwareEventSourceResponse:
    """Replays what was missed after Last-Event-ID, then streams live."""
    if ticket is not None:
        subject = EventSubject("profile", await events.consume_ticket(ticket=ticket))
    elif auth.user is not None:
        subject = EventSubject("profile", auth.user.id)
    elif auth.session is not None:
        subject = EventSubject("session", auth.session.session_id)
    else:
        raise UnauthorizedError("Send the session cookie, a bearer token or a ticket.")
    first_frames = events.frames(subject=subject, last_event_id=last_event_id)

    async def body() -> AsyncIterator[bytes]:
        try:
            async for frame in first_frames:
                if frame.kind == "ready":
                    yield format_sse_event(comment="connected", retry=settings.events_retry_ms)
                elif frame.kind == "heartbeat":
                    yield sse_comment("heartbeat")
                elif frame.event is not None:
                    yield sse_event(
                        frame.event["type"], frame.event, event_id=str(frame.event["id"])
                    )
        except AppError as exc:
            # The client reconnects with Last-Event-ID and loses nothing.
            yield sse_event("error", exc.envelope())

    return DisconnectAwareEventSourceResponse(body())
