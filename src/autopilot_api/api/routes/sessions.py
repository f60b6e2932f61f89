"""/api/v1/sessions: the anonymous visitor's session, and claiming it on sign-up.

Between sign-up and the claim the SPA sends a bearer token and the browser the cookie:
these routes then act on the cookie's session and never create or replace one, so the
claim finds every answer. A signed-in caller with no live cookie gets 409
`signed_in_no_anonymous_session` from the writes; their answers live in /discovery.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from autopilot_api.api.deps import (
    ClaimCaller,
    SessionCaller,
    SessionProgressWriteDep,
    SessionServiceDep,
    SettingsDep,
    clear_session_cookie,
    client_ip,
    expected_version,
    set_etag,
    set_location,
    set_session_cookie,
)
from autopilot_api.api.json_body import JSONBodyRoute
from autopilot_api.api.openapi import BEARER_AND_COOKIE, NO_CREDENTIAL, SESSION_COOKIE, security
from autopilot_api.core.errors import SessionNotFoundError, SignedInNoAnonymousSessionError
from autopilot_api.core.request_context import clear_cookie_var
from autopilot_api.schemas.common import error_response, error_responses, header_docs
from autopilot_api.schemas.session import SessionClaimResponse, SessionResponse, SessionUpdate

router = APIRouter(tags=["sessions"], route_class=JSONBodyRoute)

_SIGNED_IN = (
    "signed_in_no_anonymous_session: a bearer and no live session cookie, so nothing is "
    "created; a signed-in user's answers live in /api/v1/discovery"
)


@router.post(
    "",
    summary="Start (or resume) an anonymous session",
    status_code=status.HTTP_201_CREATED,
    responses={
        201: {
            "description": "Created; the cookie is set",
            "headers": header_docs("ETag", "Set-Cookie", "Location"),
        },
        200: {
            "model": SessionResponse,
            "description": "A valid cookie was sent (with or without a bearer): the same "
            "session under a new cookie token; the one sent lasts SESSION_TOKEN_GRACE_SECONDS "
            "more (no cookie is set when that token was already replaced: the first new one "
            "stands)",
            "headers": header_docs("ETag", optional=["Set-Cookie"]),
        },
        **error_responses(401, 403, 404, 429, 503),
        409: error_response(409, _SIGNED_IN),
    },
    openapi_extra=security(NO_CREDENTIAL, SESSION_COOKIE),
)
async def create_session(
    request: Request, response: Response, auth: SessionCaller, sessions: SessionServiceDep
) -> SessionResponse:
    """Sets the session cookie; a valid cookie resumes its session under a new token."""
    settings = sessions.settings
    if auth.session is not None:
        rotated = await sessions.rotate_session_token(
            session_id=auth.session.session_id, token=auth.session.session_token
        )
        if rotated is None:  # ended between resolving the cookie and now
            raise SessionNotFoundError()
        session, new_token = rotated
        if new_token is not None:
            set_session_cookie(
                response, settings, token=new_token, expires_at=session["expires_at"]
            )
        response.status_code = status.HTTP_200_OK
        set_etag(response, session)
        return SessionResponse.from_row(session, recovery_window_days=settings.recovery_window_days)
    if auth.user is not None:
        raise SignedInNoAnonymousSessionError()
    created, token = await sessions.create_session(client_ip=client_ip(request, settings))
    set_session_cookie(response, settings, token=token, expires_at=created["expires_at"])
    clear_cookie_var.set(False)
    set_etag(response, created)
    set_location(response, request, "get_my_session")
    return SessionResponse.from_row(created, recovery_window_days=settings.recovery_window_days)


@router.get(
    "/me",
    summary="The caller's session",
    status_code=status.HTTP_200_OK,
    responses={200: {"headers": header_docs("ETag")}, **error_responses(401, 404, 503)},
    openapi_extra=security(SESSION_COOKIE, NO_CREDENTIAL),
)
async def get_my_session(
    auth: SessionCaller, response: Response, settings: SettingsDep
) -> SessionResponse:
    """The cookie's session, also with a bearer; no valid cookie → 404, nothing is set."""
    if auth.session is None:
        raise SessionNotFoundError()
    set_etag(response, auth.session.session)
    return SessionResponse.from_row(
        auth.session.session, recovery_window_days=settings.recovery_window_days
    )


@router.put(
    "/me",
    summary="Update the caller's session (answers merge per key)",
    status_code=status.HTTP_200_OK,
    responses={
        200: {"headers": header_docs("ETag")},
        201: {
            "model": SessionResponse,
            "description": "No session yet and no bearer: created with the update",
            "headers": header_docs("ETag", "Set-Cookie", "Location"),
        },
        **error_responses(401, 403, 404, 412, 413, 422, 429, 503),
        409: error_response(409, f"invalid_phase_transition, or {_SIGNED_IN}"),
    },
    openapi_extra=security(SESSION_COOKIE, NO_CREDENTIAL),
)
async def update_my_session(
    update: SessionUpdate,
    request: Request,
    response: Response,
    write: SessionProgressWriteDep,
    sessions: SessionServiceDep,
) -> SessionResponse:
    """Partial update of the cookie's session (also with a bearer); else creates one, or 409."""
    settings = sessions.settings
    caller, if_match = write.caller, write.if_match
    cookie = caller.cookie
    written = await sessions.write_progress(
        token=cookie,
        client_ip=client_ip(request, settings),
        update=update,
        expected_version=expected_version(if_match),
        require_existing=if_match is not None,
        signed_in=caller.user is not None,
    )
    row = written.session
    if written.dead_cookie:
        clear_session_cookie(response, settings)
    if written.new_token is not None:
        response.status_code = status.HTTP_201_CREATED
        set_session_cookie(
            response, settings, token=written.new_token, expires_at=row["expires_at"]
        )
        set_location(response, request, "get_my_session")
    elif row["expiry_extended"] and cookie is not None:
        set_session_cookie(response, settings, token=cookie, expires_at=row["expires_at"])
    set_etag(response, row)
    return SessionResponse.from_row(row, recovery_window_days=settings.recovery_window_days)


@router.post(
    "/me/complete",
    summary="Complete the caller's session (from the greenlight phase)",
    status_code=status.HTTP_200_OK,
    responses={
        200: {"headers": header_docs("ETag")},
        **error_responses(401, 403, 404, 409, 429, 503),
    },
    openapi_extra=security(SESSION_COOKIE, NO_CREDENTIAL),
)
async def complete_my_session(
    auth: SessionCaller, response: Response, sessions: SessionServiceDep
) -> SessionResponse:
    """Only from greenlight (409 completion_not_allowed otherwise); idempotent."""
    settings = sessions.settings
    if auth.session is None:
        raise SessionNotFoundError()
    completed = await sessions.complete_session(session_id=auth.session.session_id)
    set_etag(response, completed)
    return SessionResponse.from_row(completed, recovery_window_days=settings.recovery_window_days)


@router.delete(
    "/me",
    summary="Delete the caller's session and its data",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        204: {
            "description": "Deleted; the cookie is cleared",
            "headers": header_docs("Set-Cookie"),
        },
        **error_responses(401, 403, 404, 429, 503),
    },
    openapi_extra=security(SESSION_COOKIE, NO_CREDENTIAL),
)
async def delete_my_session(
    auth: SessionCaller, response: Response, sessions: SessionServiceDep
) -> None:
    """Deletes the session, its conversations and messages, and clears the cookie."""
    settings = sessions.settings
    if auth.session is None:
        raise SessionNotFoundError()
    await sessions.delete_session(session_id=auth.session.session_id)
    clear_session_cookie(response, settings)


@router.post(
    "/claim",
    summary="Claim the anonymous session into the signed-in user's discovery profile",
    status_code=status.HTTP_200_OK,
    responses=error_responses(401, 403, 404, 409, 422, 429, 503),
    openapi_extra=security(BEARER_AND_COOKIE),
)
async def claim_session(
    response: Response,
    caller: ClaimCaller,
    sessions: SessionServiceDep,
    dry_run: Annotated[
        bool, Query(alias="dryRun", description="Return the merged profile, write nothing.")
    ] = False,
) -> SessionClaimResponse:
    """Needs a permanent user's bearer token and the session cookie; idempotent per user."""
    settings = sessions.settings
    token = caller.cookie
    if token is None:
        raise SessionNotFoundError("No session cookie to claim.")
    outcome = await sessions.claim_session(token=token, user=caller.user, dry_run=dry_run)
    if not dry_run:
        clear_session_cookie(response, settings)
    return SessionClaimResponse.from_outcome(
        outcome, recovery_window_days=settings.recovery_window_days
    )
