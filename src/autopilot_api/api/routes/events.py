"""/api/v1/events: the caller's live events (SSE), resumable with Last-Event-ID."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.sse import format_sse_event

from autopilot_api.api.deps import (
    CurrentAuth,
    EventServiceDep,
    EventStreamCookie,
    SettingsDep,
    WritingUser,
    client_ip,
    set_event_stream_cookie,
)
from autopilot_api.api.json_body import JSONBodyRoute
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
from autopilot_api.services.event_service import EventSubject, TicketGrant

router = APIRouter(tags=["events"], route_class=JSONBodyRoute)


@router.post(
    "/ticket",
    summary="A short-lived ticket for opening an EventSource",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(401, 429, 503),
    openapi_extra=SIGNED_IN,
)
async def issue_ticket(user: WritingUser, events: EventServiceDep) -> EventTicketPublic:
    """EventSource cannot send Authorization: trade the bearer token for a URL ticket (first
    use opens the stream and sets the cookie with which the same URL may reconnect)."""
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
            "comments between them, and a `retry:` hint first. The stream ends after "
            "EVENTS_MAX_STREAM_SECONDS (or when the access token that opened it expires); "
            "reconnect with Last-Event-ID. With a ticket, its first use sets an HttpOnly "
            "stream cookie (Path = this URL's path): a reconnect to the same URL is accepted "
            "with the spent ticket and that cookie only. Streams are capped per client IP "
            "(429), anonymous streams as a group and per instance (503); a newer stream of "
            "the same session or profile may end an older one, and a stream whose client "
            "reads nothing ends after EVENTS_SEND_TIMEOUT_SECONDS.",
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
        **error_responses(401, 422, 429, 503),
    },
    openapi_extra=security(BEARER, SESSION_COOKIE, EVENT_TICKET),
)
async def stream_events(
    request: Request,
    auth: CurrentAuth,
    events: EventServiceDep,
    settings: SettingsDep,
    stream_cookie: EventStreamCookie,
    ticket: Annotated[str | None, Query(max_length=128, description="From POST /ticket.")] = None,
    last_event_id: Annotated[
        int | None,
        # Event ids are Postgres bigints: a larger one could only fail inside the stream.
        Header(alias="Last-Event-ID", ge=0, le=2**63 - 1, description="Resume after this id."),
    ] = None,
    last_event_id_query: Annotated[
        int | None,
        Query(
            alias="lastEventId",
            ge=0,
            le=2**63 - 1,
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
    # Free to create, so capped as a group: anonymous sessions and Supabase's anonymous
    # users. A ticket is bought with a signed-in bearer.
    anonymous: bool
    if ticket is not None:
        grant = await events.open_with_ticket(ticket=ticket, credential=stream_cookie)
        subject = EventSubject("profile", grant.profile_id)
        not_after = grant.not_after
        anonymous = False
    elif auth.user is not None:
        subject = EventSubject("profile", auth.user.id)
        not_after = auth.user.expires_at
        anonymous = auth.user.is_anonymous
    elif auth.session is not None:
        subject = EventSubject("session", auth.session.session_id)
        not_after = None
        anonymous = True
    else:
        raise UnauthorizedError("Send the session cookie, a bearer token or a ticket.")
    live = events.open_stream(
        subject=subject,
        client_ip=client_ip(request, settings),
        anonymous=anonymous,
        last_event_id=resume_after,
        not_after=not_after,
    )

    async def body() -> AsyncIterator[bytes]:
        async with contextlib.aclosing(live.frames) as frames:
            try:
                async for frame in frames:
                    if frame.kind == "ready":
                        # An id with no data sets the browser's last event id without an
                        # event: a stream dropped before its first event resumes from here.
                        yield format_sse_event(
                            comment="connected",
                            id=str(frame.cursor),
                            retry=settings.events_retry_ms,
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

    stream = DisconnectAwareEventSourceResponse(
        body(),
        send_timeout=settings.events_send_timeout_seconds,
        ends_at=live.ends_at,
        stop=live.stopped,
        on_stalled=live.client_stalled,
    )
    if grant is not None:
        set_event_stream_cookie(
            stream,
            settings,
            path=request.url.path,
            credential=grant.credential,
            expires_at=grant.credential_expires_at,
        )
    return stream
