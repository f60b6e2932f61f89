"""Anonymous sessions: creation, resolution by cookie token, updates, claim, cleanup."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, cast
from uuid import UUID

from supabase import AsyncClient

from autopilot_api.core.config import Settings
from autopilot_api.core.errors import (
    AnonymousUserCannotClaimError,
    InvalidPhaseTransitionError,
    PreconditionFailedError,
    SessionNotFoundError,
    SignedInNoAnonymousSessionError,
)
from autopilot_api.core.logging import AUDIT
from autopilot_api.core.metrics import CLAIMS, SESSIONS_CREATED
from autopilot_api.core.security import generate_session_token, hash_session_token
from autopilot_api.core.supabase import call_rpc
from autopilot_api.models.auth import UserContext
from autopilot_api.models.discovery_profile import ClaimOutcome
from autopilot_api.models.session import ResolvedSession, Session
from autopilot_api.schemas.discovery import SessionUpdate
from autopilot_api.services.discovery_profile_service import DiscoveryProfileService
from autopilot_api.services.event_bus import EventBus, session_subject
from autopilot_api.services.progress import build_progress_patch, phase_keys_for
from autopilot_api.services.rate_limiter import RateLimiter, client_bucket
from autopilot_api.services.write_limits import WriteLimits, caller_key

logger = logging.getLogger(__name__)

_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_\-]{64}$")
SESSION_CREATE_WINDOW_SECONDS = 3600
SESSION_WRITE_WINDOW_SECONDS = 60


@dataclass(frozen=True, slots=True)
class ProgressWrite:
    """A PUT's outcome: the session, and what the cookie needs."""

    session: ResolvedSession
    new_token: str | None
    dead_cookie: bool


class SessionService:
    def __init__(
        self,
        supabase: AsyncClient,
        settings: Settings,
        *,
        profiles: DiscoveryProfileService,
        rate_limiter: RateLimiter,
        bus: EventBus,
    ) -> None:
        self._supabase = supabase
        self._settings = settings
        self._profiles = profiles
        self._rate_limiter = rate_limiter
        self._limits = WriteLimits(rate_limiter, settings)
        self._bus = bus

    @property
    def _lifetime_seconds(self) -> int:
        return self._settings.session_cookie_max_age

    @property
    def settings(self) -> Settings:
        """What it runs with; the routes set its cookie and recovery window from it."""
        return self._settings

    async def create_session(
        self, *, client_ip: str, metadata: dict[str, Any] | None = None
    ) -> tuple[Session, str]:
        """A new session and its raw token (returned once, for the cookie)."""
        await self._rate_limiter.hit(
            key=f"session-create:{client_bucket(client_ip)}",
            limit=self._settings.session_create_limit_per_hour,
            window_seconds=SESSION_CREATE_WINDOW_SECONDS,
        )
        token = generate_session_token()
        row = await call_rpc(
            self._supabase,
            "create_session",
            {
                "p_token_hash": hash_session_token(token),
                "p_lifetime_seconds": self._lifetime_seconds,
                "p_metadata": metadata or {},
            },
        )
        session = cast(Session, row)
        logger.info("session created: session_id=%s", session["id"])
        SESSIONS_CREATED.inc()
        await self._bus.publish(session_subject(session["id"]))
        return session, token

    async def rotate_session_token(
        self, *, session_id: UUID, token: str
    ) -> tuple[ResolvedSession, str | None] | None:
        """The cookie's session under a new token (returned, for the cookie), or with None
        when this token was already replaced (the first new token stands); None when the
        token names no live session. The replaced token lasts SESSION_TOKEN_GRACE_SECONDS."""
        await self._limits.write(caller=caller_key(user_id=None, session_id=session_id))
        new_token = generate_session_token()
        row = await call_rpc(
            self._supabase,
            "rotate_session_token",
            {
                "p_token_hash": hash_session_token(token),
                "p_new_token_hash": hash_session_token(new_token),
                "p_grace_seconds": self._settings.session_token_grace_seconds,
            },
        )
        if not row:
            return None
        await self._bus.publish(session_subject(row["id"]))
        session = cast(ResolvedSession, {**row, "expiry_extended": False})
        return session, new_token if row.get("rotated") else None

    async def get_session_by_token(self, *, token: str) -> ResolvedSession | None:
        """The live session for a cookie token (sliding its expiry), or None."""
        if not _TOKEN_SHAPE.match(token):
            return None
        row = await call_rpc(
            self._supabase,
            "resolve_session",
            {
                "p_token_hash": hash_session_token(token),
                "p_lifetime_seconds": self._lifetime_seconds,
            },
        )
        return cast(ResolvedSession, row) if row else None

    async def update_session(
        self, *, session_id: UUID, update: SessionUpdate, expected_version: int | None = None
    ) -> Session:
        """A checkpoint: merges the patch, bumps version and last_seen_at."""
        row = await self._apply_update(
            "update_session_progress",
            {"p_session_id": str(session_id)},
            patch=build_progress_patch(update),
            phase=update.phase,
            expected_version=expected_version,
        )
        return cast(Session, row)

    async def write_progress(
        self,
        *,
        token: str | None,
        client_ip: str,
        update: SessionUpdate,
        expected_version: int | None = None,
        require_existing: bool = False,
        signed_in: bool = False,
    ) -> ProgressWrite:
        """PUT /sessions/me: one round trip for a live cookie; otherwise a new session
        (rate-limited) takes the update. An If-Match cannot hold for a new session, and a
        signed-in caller never gets one (409): their answers go to the profile."""
        # Validated before anything is written: an invalid update creates no session either.
        patch = build_progress_patch(update)
        if token is not None and _TOKEN_SHAPE.match(token):
            # Keyed by the token's hash: the raw token never goes into a Redis key.
            await self._rate_limiter.hit(
                key=f"session-write:{hash_session_token(token)}",
                limit=self._settings.session_write_limit_per_minute,
                window_seconds=SESSION_WRITE_WINDOW_SECONDS,
            )
            row = await self._apply_update(
                "update_session_by_token",
                {
                    "p_token_hash": hash_session_token(token),
                    "p_lifetime_seconds": self._lifetime_seconds,
                },
                patch=patch,
                phase=update.phase,
                expected_version=expected_version,
            )
            if row is not None:
                return ProgressWrite(cast(ResolvedSession, row), new_token=None, dead_cookie=False)
        if signed_in:
            raise SignedInNoAnonymousSessionError()
        if require_existing:
            raise PreconditionFailedError("There is no session for If-Match to match.")
        created, new_token = await self.create_session(client_ip=client_ip)
        row = await self._apply_update(
            "update_session_progress",
            {"p_session_id": created["id"]},
            patch=patch,
            phase=update.phase,
            expected_version=None,
        )
        resolved: ResolvedSession = {**cast(Session, row), "expiry_extended": False}
        return ProgressWrite(resolved, new_token=new_token, dead_cookie=token is not None)

    async def _apply_update(
        self,
        function: str,
        target: dict[str, Any],
        *,
        patch: dict[str, Any],
        phase: str | None,
        expected_version: int | None,
    ) -> Any:
        try:
            row = await call_rpc(
                self._supabase,
                function,
                {
                    **target,
                    "p_patch": patch,
                    "p_expected_version": expected_version,
                    "p_metadata_max_bytes": self._settings.session_metadata_max_bytes,
                    "p_phase_keys": phase_keys_for(patch),
                },
            )
        except InvalidPhaseTransitionError:
            logger.warning("phase transition refused: to=%s", phase)
            raise
        if row is None:
            return None
        if phase is not None:
            logger.info("session phase now %s: session_id=%s", row["phase"], row["id"])
        await self._bus.publish(session_subject(row["id"]))
        return row

    async def complete_session(self, *, session_id: UUID) -> Session:
        """Only from greenlight (409 otherwise); completing twice changes nothing."""
        await self._limits.write(caller=caller_key(user_id=None, session_id=session_id))
        row = await call_rpc(self._supabase, "complete_session", {"p_session_id": str(session_id)})
        logger.info("session completed: session_id=%s", session_id)
        await self._bus.publish(session_subject(session_id))
        return cast(Session, row)

    async def delete_session(self, *, session_id: UUID) -> None:
        await self._limits.write(caller=caller_key(user_id=None, session_id=session_id))
        deleted = await call_rpc(
            self._supabase, "delete_session", {"p_session_id": str(session_id)}
        )
        if not deleted:
            raise SessionNotFoundError()
        logger.info("session deleted: session_id=%s", session_id)
        await self._bus.publish(session_subject(session_id))

    async def claim_session(
        self, *, token: str, user: UserContext, dry_run: bool = False
    ) -> ClaimOutcome:
        if user.is_anonymous:
            raise AnonymousUserCannotClaimError()
        if not _TOKEN_SHAPE.match(token):
            raise SessionNotFoundError("No session to claim.")
        await self._limits.write(caller=caller_key(user_id=user.id, session_id=None))
        outcome = await self._profiles.create_from_session(
            session_token=token, user=user, dry_run=dry_run
        )
        if not dry_run and not outcome["already_claimed"]:
            CLAIMS.inc()
            logger.log(
                AUDIT,
                "session claimed: session_id=%s profile_id=%s conversations_moved=%d",
                outcome["session_id"],
                user.id,
                outcome["conversations_moved"],
            )
        return outcome

    async def cleanup_expired_sessions(
        self, *, batch_size: int = 500, max_batches: int | None = None
    ) -> int:
        """Delete expired unclaimed sessions in batches (one transaction each), then expired
        Idempotency-Keys and audit events past their retention the same way; returns the
        number of sessions deleted."""
        total = await self._delete_in_batches(
            "cleanup_expired_sessions", batch_size=batch_size, max_batches=max_batches
        )
        if total:
            logger.info("expired sessions deleted: %d", total)
        keys = await self._delete_in_batches(
            "cleanup_expired_idempotency_keys", batch_size=batch_size, max_batches=max_batches
        )
        if keys:
            logger.info("expired idempotency keys deleted: %d", keys)
        events = await self._delete_in_batches(
            "cleanup_old_session_events",
            batch_size=batch_size,
            max_batches=max_batches,
            p_retention_days=self._settings.audit_event_retention_days,
        )
        if events:
            logger.info("audit events past retention deleted: %d", events)
        return total

    async def _delete_in_batches(
        self, function: str, *, batch_size: int, max_batches: int | None, **params: Any
    ) -> int:
        total = 0
        batches = 0
        while max_batches is None or batches < max_batches:
            deleted = int(
                await call_rpc(self._supabase, function, {"p_batch_size": batch_size, **params})
            )
            total += deleted
            batches += 1
            if deleted < batch_size:
                break
        return total
