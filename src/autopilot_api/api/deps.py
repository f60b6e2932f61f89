"""Dependencies: thin readers of the lifespan state, identity resolution, cookie helpers,
and the service providers. Routes use the `Annotated` aliases defined here, never an
inline `Depends()`.

Every dependency is `async def`, even when it does not await: FastAPI runs a plain
`def` dependency in the thread pool, which costs more than the work itself.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import Depends, Header, Path, Request, Response

from autopilot_api.core.config import Settings
from autopilot_api.core.errors import (
    CsrfOriginRejectedError,
    ForbiddenError,
    UnauthorizedError,
)
from autopilot_api.core.metrics import check_scrape_access
from autopilot_api.core.request_context import clear_cookie_var
from autopilot_api.core.security import TokenVerifier
from autopilot_api.core.state import AppState
from autopilot_api.models.auth import (
    AuthContext,
    Owner,
    SessionContext,
    SessionCookieWrite,
    SessionProgressWrite,
    UserContext,
)
from autopilot_api.models.conversation import Conversation
from autopilot_api.models.session import ResolvedSession
from autopilot_api.schemas.common import IF_MATCH_PATTERN
from autopilot_api.services.admin_service import AdminService
from autopilot_api.services.agent_service import AgentService
from autopilot_api.services.chat_service import ChatService
from autopilot_api.services.conversation_service import ConversationService
from autopilot_api.services.discovery_profile_service import DiscoveryProfileService
from autopilot_api.services.event_service import EventService
from autopilot_api.services.health_service import HealthService
from autopilot_api.services.profile_extraction_service import ProfileExtractionService
from autopilot_api.services.search_session_service import SearchSessionService
from autopilot_api.services.session_service import SessionService
from autopilot_api.services.write_limits import WriteLimits, caller_key

__all__ = [
    "SESSION_COOKIE_CONFIG",
    "AuthContext",
    "SessionContext",
    "UserContext",
    "clear_session_cookie",
    "set_event_stream_cookie",
    "get_current_user",
    "get_current_user_or_session",
    "get_session_cookie",
    "set_session_cookie",
]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Our tokens are 64 characters; a longer cookie value is not ours.
MAX_CREDENTIAL_CHARS = 128
UNMATCHABLE_VERSION = -1

# The attributes that never change; name, Secure and SameSite come from Settings.
SESSION_COOKIE_CONFIG: dict[str, Any] = {"httponly": True, "path": "/"}


# --- lifespan state -----------------------------------------------------------------------
# Every provider reads the state from the request itself rather than depending on a
# state node: FastAPI solves each node of the tree on every request (a cached one too),
# and a nested node costs more than the attribute read it wraps.
def app_state(request: Request) -> AppState:
    state: AppState = request.state.app_state
    return state


async def get_settings_dep(request: Request) -> Settings:
    return app_state(request).settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


async def require_metrics_access(request: Request, settings: SettingsDep) -> None:
    """/metrics on the API port: a METRICS_TOKEN bearer, or the loopback in local mode."""
    check_scrape_access(
        settings=settings,
        client_host=request.client.host if request.client else None,
        authorization=request.headers.get("authorization", ""),
    )


MetricsAccess = Depends(require_metrics_access)


# --- services -----------------------------------------------------------------------------
async def get_health_service(request: Request) -> HealthService:
    state = app_state(request)
    return HealthService(state.supabase, data_plane_problem=state.data_plane_problem)


HealthServiceDep = Annotated[HealthService, Depends(get_health_service)]


def discovery_profile_service(state: AppState) -> DiscoveryProfileService:
    return DiscoveryProfileService(state.supabase, bus=state.bus)


def session_service(state: AppState) -> SessionService:
    return SessionService(
        state.supabase,
        state.settings,
        profiles=discovery_profile_service(state),
        rate_limiter=state.rate_limiter,
        bus=state.bus,
    )


async def get_discovery_profile_service(request: Request) -> DiscoveryProfileService:
    return discovery_profile_service(app_state(request))


DiscoveryProfileServiceDep = Annotated[
    DiscoveryProfileService, Depends(get_discovery_profile_service)
]


async def get_session_service(request: Request) -> SessionService:
    return session_service(app_state(request))


SessionServiceDep = Annotated[SessionService, Depends(get_session_service)]


async def get_conversation_service(request: Request) -> ConversationService:
    state = app_state(request)
    return ConversationService(state.supabase, state.settings, rate_limiter=state.rate_limiter)


ConversationServiceDep = Annotated[ConversationService, Depends(get_conversation_service)]


def agent_service(state: AppState) -> AgentService:
    return AgentService(
        state.openai,
        state.settings,
        sessions=session_service(state),
        profiles=discovery_profile_service(state),
        budget=state.model_budget,
    )


async def get_agent_service(request: Request) -> AgentService:
    return agent_service(app_state(request))


AgentServiceDep = Annotated[AgentService, Depends(get_agent_service)]


async def get_profile_extraction_service(request: Request) -> ProfileExtractionService:
    state = app_state(request)
    return ProfileExtractionService(
        state.openai, state.settings, state.supabase, bus=state.bus, budget=state.model_budget
    )


ProfileExtractionServiceDep = Annotated[
    ProfileExtractionService, Depends(get_profile_extraction_service)
]


async def get_chat_service(request: Request) -> ChatService:
    state = app_state(request)
    return ChatService(
        state.settings,
        conversations=ConversationService(
            state.supabase, state.settings, rate_limiter=state.rate_limiter
        ),
        agent=agent_service(state),
        profiles=discovery_profile_service(state),
        rate_limiter=state.rate_limiter,
    )


ChatServiceDep = Annotated[ChatService, Depends(get_chat_service)]


async def get_event_service(request: Request) -> EventService:
    state = app_state(request)
    return EventService(
        state.supabase, state.settings, bus=state.bus, streams=state.stream_registry()
    )


EventServiceDep = Annotated[EventService, Depends(get_event_service)]


async def get_admin_service(request: Request) -> AdminService:
    state = app_state(request)
    return AdminService(state.supabase, state.settings, model_budget=state.model_budget)


AdminServiceDep = Annotated[AdminService, Depends(get_admin_service)]


# --- client address -----------------------------------------------------------------------
def _is_trusted_proxy(host: str, settings: Settings) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in settings.trusted_proxy_networks)


def client_ip(request: Request, settings: Settings) -> str:
    """The peer address; forwarding headers count only when the peer is a trusted proxy."""
    peer = request.client.host if request.client else "unknown"
    if not settings.trusted_proxy_networks or not _is_trusted_proxy(peer, settings):
        return peer
    forwarded = request.headers.get("x-forwarded-for", "")
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted_proxy(hop, settings):
            return hop
    return hops[0] if hops else peer


# --- cookies ------------------------------------------------------------------------------
def get_session_cookie(request: Request, settings: Settings) -> str | None:
    return request.cookies.get(settings.session_cookie_name) or None


def _remaining_seconds(expires_at: str) -> int:
    expiry = datetime.fromisoformat(expires_at)
    return max(int((expiry - datetime.now(UTC)).total_seconds()), 0)


def set_session_cookie(
    response: Response, settings: Settings, *, token: str, expires_at: str
) -> None:
    """Set (or re-issue) the cookie; Max-Age is the session's remaining lifetime."""
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


def _clear_cookie_everywhere(response: Response, settings: Settings) -> None:
    # Also on error responses: the error handler reads this flag.
    clear_session_cookie(response, settings)
    clear_cookie_var.set(True)


# --- CSRF ---------------------------------------------------------------------------------
def check_csrf_origin(request: Request, settings: Settings) -> None:
    """Cookie-authenticated writes must come from our own origin or a listed one."""
    origin = request.headers.get("origin")
    own_origin = f"{request.url.scheme}://{request.url.netloc}"
    if origin is None or (origin != own_origin and origin not in settings.cors_origins):
        raise CsrfOriginRejectedError()


# --- identity -----------------------------------------------------------------------------
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


async def _verify_user(token: str, verifier: TokenVerifier) -> UserContext:
    verified = await verifier.verify(token)
    return UserContext(
        id=verified.user_id,
        email=verified.email,
        is_anonymous=verified.is_anonymous,
        app_role=verified.app_role,
        expires_at=datetime.fromtimestamp(verified.claims["exp"], UTC),
    )


async def _optional_user(request: Request, verifier: TokenVerifier) -> UserContext | None:
    token = _bearer_token(request)
    return None if token is None else await _verify_user(token, verifier)


async def get_optional_user(request: Request) -> UserContext | None:
    """The bearer's verified user; None without an Authorization header; invalid → 401."""
    return await _optional_user(request, app_state(request).token_verifier)


OptionalUser = Annotated[UserContext | None, Depends(get_optional_user)]


async def get_current_user(user: OptionalUser) -> UserContext:
    """A verified Supabase user; 401 without a valid bearer token. (Through OptionalUser,
    so a route that also reads the cookie, as the claim does, verifies the token once.)"""
    if user is None:
        raise UnauthorizedError(
            "This endpoint needs 'Authorization: Bearer <access token>'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return user


CurrentUser = Annotated[UserContext, Depends(get_current_user)]


async def get_writing_user(request: Request, user: CurrentUser) -> UserContext:
    """A verified user making a write: counted against their WRITE_LIMIT_PER_MINUTE (429)."""
    state = app_state(request)
    await WriteLimits(state.rate_limiter, state.settings).write(
        caller=caller_key(user_id=user.id, session_id=None)
    )
    return user


WritingUser = Annotated[UserContext, Depends(get_writing_user)]


async def get_current_admin(user: CurrentUser) -> UserContext:
    if not user.is_admin:
        raise ForbiddenError("Administrators only.")
    return user


CurrentAdmin = Annotated[UserContext, Depends(get_current_admin)]


async def get_current_user_or_session(request: Request, response: Response) -> AuthContext:
    """The bearer's user (invalid → 401, no fallback) and the valid session cookie's
    session: either, both (between sign-up and the claim) or neither.

    Without a bearer, an unknown, expired or claimed cookie is treated as absent and
    cleared. With one it is left alone: a claimed cookie still answers a retried claim,
    and only the claim ends a session's cookie. Reads never create anything. (Reads the
    lifespan state itself: this runs on every request.)
    """
    state: AppState = request.state.app_state
    settings = state.settings
    user = await _optional_user(request, state.token_verifier)
    if user is None and request.method not in SAFE_METHODS:
        check_csrf_origin(request, settings)

    session_context: SessionContext | None = None
    cookie = get_session_cookie(request, settings)
    if cookie is not None:
        resolved = await session_service(state).get_session_by_token(token=cookie)
        if resolved is None:
            if user is None:
                _clear_cookie_everywhere(response, settings)
        else:
            session_context = SessionContext(
                session_id=UUID(resolved["id"]), session_token=cookie, session=resolved
            )
            if resolved.get("expiry_extended"):
                set_session_cookie(
                    response, settings, token=cookie, expires_at=resolved["expires_at"]
                )
    return AuthContext(user=user, session=session_context)


CurrentAuth = Annotated[AuthContext, Depends(get_current_user_or_session)]


async def get_session_caller(request: Request, response: Response) -> AuthContext:
    """/sessions/*: the caller, acting on the cookie's session also when signed in.

    A write through the cookie needs an allowed Origin, with a bearer beside it too.
    """
    auth = await get_current_user_or_session(request, response)
    if auth.user is not None and auth.session is not None and request.method not in SAFE_METHODS:
        check_csrf_origin(request, request.state.app_state.settings)
    return auth


SessionCaller = Annotated[AuthContext, Depends(get_session_caller)]


async def get_session_cookie_for_write(request: Request, user: OptionalUser) -> SessionCookieWrite:
    """The cookie a write acts on (the claim), unresolved, and the bearer's user if any.
    CSRF-checked whenever a cookie is sent or may be set."""
    return _session_cookie_write(request, user)


def _session_cookie_write(request: Request, user: UserContext | None) -> SessionCookieWrite:
    settings = app_state(request).settings
    cookie = get_session_cookie(request, settings)
    if user is None or cookie is not None:
        check_csrf_origin(request, settings)
    return SessionCookieWrite(cookie=cookie, user=user)


SessionCookieForWrite = Annotated[SessionCookieWrite, Depends(get_session_cookie_for_write)]


# --- retries ------------------------------------------------------------------------------
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description=(
            "Optional, any unique string (a UUID): a retry with the same key returns the "
            "first outcome instead of doing the work again; the same key with another "
            "request → 422 idempotency_key_reused. Keys belong to the caller and last "
            "IDEMPOTENCY_KEY_TTL_SECONDS (24 h by default)."
        ),
    ),
]


def mark_replayed(response: Response, *, replayed: bool) -> None:
    """`Idempotent-Replayed: true` on a retry answered with the first call's outcome."""
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"


# --- conditional requests -----------------------------------------------------------------
# ASCII digits only: str.isdigit() also passes "²", which int() refuses. At most 18 (the
# header's pattern already says so), so int() never meets a number it will not read.
_OUR_ETAG = re.compile(r'"v([0-9]{1,18})"')
MAX_VERSION = 2**31 - 1  # versions are Postgres integers


def etag_for(version: int) -> str:
    return f'"v{version}"'


IfMatchHeader = Annotated[
    str | None,
    Header(
        description='Optional: the ETag you read ("v<version>"), or *; stale → 412.',
        pattern=IF_MATCH_PATTERN,
    ),
]


async def get_if_match(if_match: IfMatchHeader = None) -> int | Literal["*"] | None:
    """The version the client expects, '*' for any, or None when not given."""
    return parse_if_match(if_match)


def parse_if_match(if_match: str | None) -> int | Literal["*"] | None:
    if if_match is None:
        return None
    candidates = [part.strip() for part in if_match.split(",") if part.strip()]
    if "*" in candidates:
        return "*"
    for candidate in candidates:
        ours = _OUR_ETAG.fullmatch(candidate.removeprefix("W/"))
        # Past what a version column holds, it can only be stale.
        if ours is not None and int(ours.group(1)) <= MAX_VERSION:
            return int(ours.group(1))
    # A tag this resource never had: the write fails with 412 once the body is validated.
    return UNMATCHABLE_VERSION


IfMatchDep = Annotated[int | Literal["*"] | None, Depends(get_if_match)]


async def get_session_progress_write(
    request: Request, if_match: IfMatchHeader = None
) -> SessionProgressWrite:
    """PUT /sessions/me in one dependency node (the hottest write; FastAPI solves every
    node on every request): the bearer's user if any, the cookie (CSRF-checked as for
    any cookie write) and the If-Match version."""
    user = await _optional_user(request, app_state(request).token_verifier)
    return SessionProgressWrite(
        caller=_session_cookie_write(request, user), if_match=parse_if_match(if_match)
    )


SessionProgressWriteDep = Annotated[SessionProgressWrite, Depends(get_session_progress_write)]


def expected_version(if_match: int | Literal["*"] | None) -> int | None:
    return None if if_match in (None, "*") else int(if_match)


def set_etag(response: Response, row: Mapping[str, Any]) -> None:
    response.headers["ETag"] = etag_for(int(row["version"]))


def set_location(response: Response, request: Request, route_name: str, **path_params: str) -> None:
    """`Location` of a created resource: its path (a relative reference, right behind proxies)."""
    response.headers["Location"] = str(request.app.url_path_for(route_name, **path_params))


async def _get_or_create_session(
    auth: AuthContext,
    response: Response,
    settings: Settings,
    sessions: SessionService,
    client_ip: str,
) -> SessionContext:
    """The caller's session; a write with none creates it (rate-limited) and sets the cookie."""
    if auth.session is not None:
        return auth.session
    created, token = await sessions.create_session(client_ip=client_ip)
    set_session_cookie(response, settings, token=token, expires_at=created["expires_at"])
    resolved: ResolvedSession = {**created, "expiry_extended": False}
    return SessionContext(session_id=UUID(created["id"]), session_token=token, session=resolved)


# --- ownership ----------------------------------------------------------------------------
async def owned_conversation(
    conversation_id: Annotated[UUID, Path(description="The conversation's id.")],
    auth: CurrentAuth,
    conversations: ConversationServiceDep,
) -> Conversation:
    """The conversation, if the caller (user or session) owns it; anyone else gets 404."""
    return await conversations.get_owned(conversation_id=conversation_id, auth=auth)


OwnedConversation = Annotated[Conversation, Depends(owned_conversation)]


async def get_write_owner(request: Request, response: Response, auth: CurrentAuth) -> Owner:
    """A signed-in user owns what they create; otherwise the session (created if needed)."""
    if auth.user is not None:
        return Owner(user_id=auth.user.id, session_id=None)
    state = app_state(request)
    session = await _get_or_create_session(
        auth,
        response,
        state.settings,
        session_service(state),
        client_ip(request, state.settings),
    )
    return Owner(user_id=None, session_id=session.session_id)


WriteOwnerDep = Annotated[Owner, Depends(get_write_owner)]


async def get_read_owner(auth: CurrentAuth) -> Owner:
    """The caller as an owner for reads: nothing is created."""
    if auth.user is not None:
        return Owner(user_id=auth.user.id, session_id=None)
    return Owner(user_id=None, session_id=auth.session.session_id if auth.session else None)


ReadOwnerDep = Annotated[Owner, Depends(get_read_owner)]


async def get_search_session_service(request: Request) -> SearchSessionService:
    state = app_state(request)
    return SearchSessionService(state.supabase, state.settings, rate_limiter=state.rate_limiter)


SearchSessionServiceDep = Annotated[SearchSessionService, Depends(get_search_session_service)]
