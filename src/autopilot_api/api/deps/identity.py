"""Who is calling, worked out once per request: a verified Supabase user (a bearer token),
an anonymous session (the cookie), both (between sign-up and the claim), or neither.

A route takes one of the aliases below, and each is one dependency node (FastAPI solves
every node on every request). They all start from the same two steps: `bearer_user`, and
for the routes that read the cookie `session_cookie`, the one place the CSRF rule lives.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

from fastapi import Depends, Request, Response

from autopilot_api.api.deps.conditional import IfMatchHeader, parse_if_match
from autopilot_api.api.deps.cookies import (
    clear_session_cookie_everywhere,
    get_session_cookie,
    set_session_cookie,
)
from autopilot_api.api.deps.services import app_state
from autopilot_api.composition import AppState
from autopilot_api.core.config import Settings
from autopilot_api.core.errors import CsrfOriginRejectedError, ForbiddenError, UnauthorizedError
from autopilot_api.core.metrics import check_scrape_access
from autopilot_api.core.security import TokenVerifier
from autopilot_api.models.auth import (
    AuthContext,
    SessionClaimCaller,
    SessionContext,
    SessionCookieWrite,
    SessionProgressWrite,
    UserContext,
)
from autopilot_api.services.write_limits import caller_key

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


# --- the two steps ------------------------------------------------------------------------
def _bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise UnauthorizedError(
            "The Authorization header must be 'Bearer <access token>'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return credentials.strip()


async def bearer_user(request: Request, verifier: TokenVerifier) -> UserContext | None:
    """The bearer's verified user; None without an Authorization header. An invalid token
    is 401, never a fallback to the cookie."""
    token = _bearer_token(request)
    if token is None:
        return None
    verified = await verifier.verify(token)
    return UserContext(
        id=verified.user_id,
        email=verified.email,
        is_anonymous=verified.is_anonymous,
        app_role=verified.app_role,
        expires_at=datetime.fromtimestamp(verified.claims["exp"], UTC),
    )


def _require_allowed_origin(request: Request, settings: Settings) -> None:
    origin = request.headers.get("origin")
    own_origin = f"{request.url.scheme}://{request.url.netloc}"
    if origin is None or (origin != own_origin and origin not in settings.cors_origins):
        raise CsrfOriginRejectedError()


def session_cookie(
    request: Request, settings: Settings, *, user: UserContext | None, acts_on_cookie: bool
) -> str | None:
    """The session cookie as sent, read through the CSRF rule, before anything is looked up.

    A write needs an Origin that is ours or in CORS_ORIGINS when the cookie authenticates
    it: without a bearer (the cookie is, or will become, its credential), and beside a
    bearer on the routes that act on the cookie's session (/sessions/*, the claim) when a
    cookie is sent. A bearer write that leaves the cookie alone needs none: browsers never
    attach a bearer by themselves. (Routes that require a bearer never read the cookie.)
    """
    cookie = get_session_cookie(request, settings)
    if request.method not in SAFE_METHODS and (
        user is None or (acts_on_cookie and cookie is not None)
    ):
        _require_allowed_origin(request, settings)
    return cookie


def _signed_in(user: UserContext | None) -> UserContext:
    if user is None:
        raise UnauthorizedError(
            "This endpoint needs 'Authorization: Bearer <access token>'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return user


# --- a signed-in user ---------------------------------------------------------------------
async def get_current_user(request: Request) -> UserContext:
    """A verified Supabase user; 401 without a valid bearer token."""
    return _signed_in(await bearer_user(request, app_state(request).token_verifier))


CurrentUser = Annotated[UserContext, Depends(get_current_user)]


async def get_writing_user(request: Request) -> UserContext:
    """A verified user making a write: counted against their WRITE_LIMIT_PER_MINUTE (429)."""
    state = app_state(request)
    user = _signed_in(await bearer_user(request, state.token_verifier))
    await state.services.write_limits.write(caller=caller_key(user_id=user.id, session_id=None))
    return user


WritingUser = Annotated[UserContext, Depends(get_writing_user)]


async def get_current_admin(request: Request) -> UserContext:
    user = _signed_in(await bearer_user(request, app_state(request).token_verifier))
    if not user.is_admin:
        raise ForbiddenError("Administrators only.")
    return user


CurrentAdmin = Annotated[UserContext, Depends(get_current_admin)]


# --- the user and/or the session ----------------------------------------------------------
async def _resolve_session(
    state: AppState, response: Response, *, user: UserContext | None, cookie: str | None
) -> SessionContext | None:
    """The cookie's live session, its expiry slid (the cookie re-issued when it did).

    Without a bearer, an unknown, expired or claimed cookie is treated as absent and
    cleared. With one it is left alone: a claimed cookie still answers a retried claim,
    and only the claim ends a session's cookie. Reads never create anything.
    """
    if cookie is None:
        return None
    resolved = await state.services.sessions.get_session_by_token(token=cookie)
    if resolved is None:
        if user is None:
            clear_session_cookie_everywhere(response, state.settings)
        return None
    if resolved.get("expiry_extended"):
        set_session_cookie(
            response, state.settings, token=cookie, expires_at=resolved["expires_at"]
        )
    return SessionContext(session_id=UUID(resolved["id"]), session_token=cookie, session=resolved)


async def _auth_context(
    request: Request, response: Response, *, acts_on_cookie: bool
) -> AuthContext:
    state = app_state(request)
    user = await bearer_user(request, state.token_verifier)
    cookie = session_cookie(request, state.settings, user=user, acts_on_cookie=acts_on_cookie)
    session = await _resolve_session(state, response, user=user, cookie=cookie)
    return AuthContext(user=user, session=session)


async def get_current_user_or_session(request: Request, response: Response) -> AuthContext:
    """The bearer's user and the cookie's live session: either, both or neither. Outside
    /sessions a signed-in caller is the user alone (AuthContext.acting_session)."""
    return await _auth_context(request, response, acts_on_cookie=False)


CurrentAuth = Annotated[AuthContext, Depends(get_current_user_or_session)]


async def get_session_caller(request: Request, response: Response) -> AuthContext:
    """/sessions/*: the caller, acting on the cookie's session also when signed in."""
    return await _auth_context(request, response, acts_on_cookie=True)


SessionCaller = Annotated[AuthContext, Depends(get_session_caller)]


# --- writes that resolve the cookie themselves, in their own round trip -------------------
async def get_session_claim_caller(request: Request) -> SessionClaimCaller:
    """The claim: a signed-in user (401 first) and the cookie to claim, as sent."""
    state = app_state(request)
    user = _signed_in(await bearer_user(request, state.token_verifier))
    cookie = session_cookie(request, state.settings, user=user, acts_on_cookie=True)
    return SessionClaimCaller(user=user, cookie=cookie)


ClaimCaller = Annotated[SessionClaimCaller, Depends(get_session_claim_caller)]


async def get_session_progress_write(
    request: Request, if_match: IfMatchHeader = None
) -> SessionProgressWrite:
    """PUT /sessions/me in one dependency node (the hottest write): the bearer's user if
    any, the cookie as sent, and the If-Match version."""
    state = app_state(request)
    user = await bearer_user(request, state.token_verifier)
    cookie = session_cookie(request, state.settings, user=user, acts_on_cookie=True)
    return SessionProgressWrite(
        caller=SessionCookieWrite(cookie=cookie, user=user), if_match=parse_if_match(if_match)
    )


SessionProgressWriteDep = Annotated[SessionProgressWrite, Depends(get_session_progress_write)]


# --- operators ----------------------------------------------------------------------------
async def require_metrics_access(request: Request) -> None:
    """/metrics on the API port: a METRICS_TOKEN bearer, or the loopback in local mode."""
    check_scrape_access(
        settings=app_state(request).settings,
        client_host=request.client.host if request.client else None,
        authorization=request.headers.get("authorization", ""),
    )


MetricsAccess = Depends(require_metrics_access)
