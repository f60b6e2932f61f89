"""Durable discovery profiles of signed-in users."""

from __future__ import annotations

from typing import cast

from supabase import AsyncClient

from autopilot_api.core.security import hash_session_token
from autopilot_api.core.supabase import call_rpc
from autopilot_api.discovery.answers import catalogue_rules
from autopilot_api.models.auth import UserContext
from autopilot_api.models.discovery_profile import ClaimOutcome, DiscoveryProfile
from autopilot_api.schemas.discovery import DiscoveryProfileUpdate
from autopilot_api.services.event_bus import EventBus, profile_subject, session_subject
from autopilot_api.services.progress import build_progress_patch, phase_keys_for


class DiscoveryProfileService:
    def __init__(self, supabase: AsyncClient, *, bus: EventBus) -> None:
        self._supabase = supabase
        self._bus = bus

    async def get_or_create(self, *, user: UserContext) -> DiscoveryProfile:
        row = await call_rpc(
            self._supabase,
            "get_or_create_discovery_profile",
            {"p_user_id": str(user.id), "p_email": user.email},
        )
        profile = cast(DiscoveryProfile, row)
        if profile["version"] == 1 and profile["created_at"] == profile["updated_at"]:
            await self._bus.publish(profile_subject(user.id))
        return profile

    async def update(
        self,
        *,
        user: UserContext,
        update: DiscoveryProfileUpdate,
        expected_version: int | None = None,
    ) -> DiscoveryProfile:
        patch = build_progress_patch(update)
        row = await call_rpc(
            self._supabase,
            "update_discovery_profile",
            {
                "p_user_id": str(user.id),
                "p_patch": patch,
                "p_expected_version": expected_version,
                "p_email": user.email,
                "p_phase_keys": phase_keys_for(patch),
            },
        )
        await self._bus.publish(profile_subject(user.id))
        return cast(DiscoveryProfile, row)

    async def complete(self, *, user: UserContext) -> DiscoveryProfile:
        """Only from greenlight (409 otherwise); completing twice changes nothing."""
        row = await call_rpc(
            self._supabase, "complete_discovery_profile", {"p_user_id": str(user.id)}
        )
        await self._bus.publish(profile_subject(user.id))
        return cast(DiscoveryProfile, row)

    async def create_from_session(
        self, *, session_token: str, user: UserContext, dry_run: bool = False
    ) -> ClaimOutcome:
        """Merge an anonymous session into the user's profile (the claim's one SQL call)."""
        outcome = await call_rpc(
            self._supabase,
            "claim_session",
            {
                "p_token_hash": hash_session_token(session_token),
                "p_user_id": str(user.id),
                "p_email": user.email,
                "p_dry_run": dry_run,
                # The merge judges stored answers by the catalogue's rules (no copy in SQL).
                "p_rules": catalogue_rules(),
            },
        )
        claim = cast(ClaimOutcome, outcome)
        if not dry_run and not claim["already_claimed"]:
            await self._bus.publish(session_subject(claim["session_id"]))
            await self._bus.publish(profile_subject(user.id))
        return claim
