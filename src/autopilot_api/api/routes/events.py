"""/api/v1/events: the caller's live events (SSE), resumable with Last-Event-ID."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, status
from fastapi.sse import format_sse_event

from autopilot_api.api.deps import (
    CurrentAuth,
    CurrentUser,
    EventServiceDep,
    EventStreamCookie,
    SettingsDep,
    set_event_stream_cookie,
)
from autopilot_api.api.sse import DisconnectAwareEventSourceResponse, sse_comment, sse_event
from autopilot_api.core.errors import AppError, UnauthorizedError
from autopilot_api.schemas.admin import EventTicketPublic
from autopilot_api.schemas.common import error_responses
from autopilot_api.services.event_service import EventSubject, TicketGrant

router = APIRouter(tags=["events"])


@router.post(
    "/ticket",
    summary="A short-lived ticket for opening an EventSource",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(401, 503),
)
async def issue_ticket(user: CurrentUser, events: EventServiceDep) -> EventTicketPublic:
    """EventSource cannot send Authorization: trade the bearer token for a URL ticket (first
    use opens the stream and sets the cookie with which the same URL may reconnect)."""
    ticket, expires_at = await events.issue_ticket(user=user)
    return EventTicketPublic.model_validate({"ticket": ticket, "expires_at": expires_at})


@router.get(
    "",
    summary="Live events of the caller's session or profile (SSE)",
    status_code=status.HTTP_200_OK,
    response_model=None,
    responses={
        200: {
            "description": "text/event-stream: audit events (id = event id) and "
            "extraction.completed; heartbeat comments; a retry hint. The stream ends after "
            "EVENTS_MAX_STREAM_SECONDS (or when the access token that opened it expires); "
            "reconnect with Last-Event-ID. With a ticket, its first use sets an HttpOnly "
            "stream cookie (Path = this URL's path): a reconnect to the same URL is accepted "
            "with the spent ticket and that cookie only.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **error_responses(401, 422, 503),
    },
)
async def stream_events(
    request: Request,
    auth: CurrentAuth,
    events: EventServiceDep,
    settings: SettingsDep,
    stream_cookie: EventStreamCookie,
    ticket: Annotated[str | None, Query(max_length=128, description="From POST /ticket.")] = None,
    last_event_id: Annotated[
        int | None, Header(alias="Last-Event-ID", ge=0, description="Resume after this id.")
    ] = None,
    last_event_id_query: Annotated[
        int | None,
        Query(
            alias="lastEventId",
            ge=0,
            description="Resume after this id when no Last-Event-ID header is sent: for a new "
            "EventSource (e.g. with a new ticket after a token refresh), which cannot send it.",
        ),
    ] = None,
) -> DisconnectAwareEventSourceResponse:
    """Replays what was missed after Last-Event-ID, then streams live."""
    # The header wins: a browser reconnecting to this URL sends the newer id in it.
    resume_after = last_event_id if last_event_id is not None else last_event_id_query
    grant: TicketGrant | None = None
    not_after: datetime | None
    if ticket is not None:
        grant = await events.open_with_ticket(ticket=ticket, credential=stream_cookie)
        subject = EventSubject("profile", grant.profile_id)
        not_after = grant.not_after
    elif auth.user is not None:
        subject = EventSubject("profile", auth.user.id)
        not_after = auth.user.expires_at
    elif auth.session is not None:
        subject = EventSubject("session", auth.session.session_id)
        not_after = None
    else:
        raise UnauthorizedError("Send the session cookie, a bearer token or a ticket.")
    first_frames = events.frames(subject=subject, last_event_id=resume_after, not_after=not_after)

    async def body() -> AsyncIterator[bytes]:
        try:
            async for frame in first_frames:
                if frame.kind == "ready":
                    # An id with no data sets the browser's last event id without an
                    # event: a stream dropped before its first event resumes from here.
                    yield format_sse_event(
                        comment="connected", id=str(frame.cursor), retry=settings.events_retry_ms
                    )
                elif frame.kind == "heartbeat":
                    yield sse_comment("heartbeat")
                elif frame.event is not None:
                    yield sse_event(
                        frame.event["type"], frame.event, event_id=str(frame.event["id"])
                    )
        except AppError as exc:
            # The client reconnects with Last-Event-ID and loses nothing.
            yield sse_event("error", exc.envelope())

    stream = DisconnectAwareEventSourceResponse(body())
    if grant is not None:
        set_event_stream_cookie(
            stream,
            settings,
            path=request.url.path,
            credential=grant.credential,
            expires_at=grant.credential_expires_at,
        )
    return stream
