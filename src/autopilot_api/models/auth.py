"""Who is calling: a verified Supabase user, an anonymous session, both, or neither."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

from autopilot_api.models.session import ResolvedSession


@dataclass(frozen=True, slots=True)
class UserContext:
    id: UUID
    email: str | None
    is_anonymous: bool
    app_role: str | None
    # The access token's exp: what is derived from the token (event tickets) ends with it.
    expires_at: datetime | None = None

    @property
    def is_admin(self) -> bool:
        return self.app_role == "admin"


@dataclass(frozen=True, slots=True)
class SessionContext:
    session_id: UUID
    session_token: str
    session: ResolvedSession


@dataclass(frozen=True, slots=True)
class AuthContext:
    """Both are set between sign-up and the claim (a bearer and a live cookie): /sessions/*
    acts on the session then; everywhere else a signed-in caller is the user alone."""

    user: UserContext | None = None
    session: SessionContext | None = None

    @property
    def is_empty(self) -> bool:
        return self.user is None and self.session is None

    @property
    def acting_session(self) -> SessionContext | None:
        """The session the caller acts as outside /sessions/*: none when signed in."""
        return self.session if self.user is None else None


@dataclass(frozen=True, slots=True)
class SessionCookieWrite:
    """A write on the anonymous session: the cookie as sent (unresolved: the write resolves
    it in the same round trip) and the signed-in user when a bearer came too."""

    cookie: str | None
    user: UserContext | None


@dataclass(frozen=True, slots=True)
class SessionClaimCaller:
    """The claim: the signed-in user, and the cookie of the session to claim as sent."""

    user: UserContext
    cookie: str | None


@dataclass(frozen=True, slots=True)
class SessionProgressWrite:
    """PUT /sessions/me: the write on the anonymous session, and the version its If-Match
    expects (an int, '*' for any, or None without the header)."""

    caller: SessionCookieWrite
    if_match: int | Literal["*"] | None


@dataclass(frozen=True, slots=True)
class Owner:
    """Who owns what a request creates or reads: a user, else a session (else nobody)."""

    user_id: UUID | None
    session_id: UUID | None

    @property
    def is_nobody(self) -> bool:
        return self.user_id is None and self.session_id is None
