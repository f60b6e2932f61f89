"""Every write's rate limit, named in one place (README "Operations" lists them):

- per caller, an anonymous session or a signed-in user: WRITE_LIMIT_PER_MINUTE for the
  writes without a limit of their own (search-session writes, PUT and complete of
  /discovery, complete and delete of /sessions/me, the claim, event tickets);
  SESSION_WRITE_LIMIT_PER_MINUTE for PUT /sessions/me; MESSAGE_RATE_LIMIT_PER_MINUTE for
  messages;
- creation per caller per hour, and per client IP (IPv6: one /64) when the caller is an
  anonymous session: conversations and search sessions; sessions themselves per client IP
  (SESSION_CREATE_LIMIT_PER_HOUR).

Sliding windows (services/rate_limiter.py), shared across instances through Redis."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from autopilot_api.core.config import Settings
from autopilot_api.models.auth import Owner
from autopilot_api.services.rate_limiter import RateLimiter, client_bucket

MINUTE = 60
HOUR = 3600

Creation = Literal["conversation", "search_session"]


def caller_key(*, user_id: UUID | None, session_id: UUID | None) -> str:
    """`user:<id>` for a signed-in caller, else `session:<id>`: what their budgets count."""
    return f"user:{user_id}" if user_id is not None else f"session:{session_id}"


def owner_key(owner: Owner) -> str:
    return caller_key(user_id=owner.user_id, session_id=owner.session_id)


class WriteLimits:
    def __init__(self, rate_limiter: RateLimiter, settings: Settings) -> None:
        self._rate_limiter = rate_limiter
        self._settings = settings

    async def write(self, *, caller: str) -> None:
        """One write by the caller (429 + Retry-After past WRITE_LIMIT_PER_MINUTE)."""
        await self._rate_limiter.hit(
            key=f"writes:{caller}",
            limit=self._settings.write_limit_per_minute,
            window_seconds=MINUTE,
        )

    async def create(self, *, kind: Creation, owner: Owner, client_ip: str) -> None:
        """One creation: counted per owner, then per client IP when the owner is an
        anonymous session (a visitor who makes new sessions for new budgets still shares
        the IP's). A creation the owner's limit refuses does not use up the IP's."""
        settings = self._settings
        if kind == "conversation":
            per_owner = settings.conversation_create_limit_per_hour
            per_ip = settings.conversation_create_limit_per_hour_per_ip
        else:
            per_owner = settings.search_session_create_limit_per_hour
            per_ip = settings.search_session_create_limit_per_hour_per_ip
        await self._rate_limiter.hit(
            key=f"create-{kind}:{owner_key(owner)}", limit=per_owner, window_seconds=HOUR
        )
        if owner.user_id is None:
            await self._rate_limiter.hit(
                key=f"create-{kind}:ip:{client_bucket(client_ip)}",
                limit=per_ip,
                window_seconds=HOUR,
            )
