"""Rows of `autopilot.discovery_profiles` and the claim function's result."""

from __future__ import annotations

from typing import TypedDict

from autopilot_api.models.session import ProgressFields


class DiscoveryProfile(ProgressFields):
    id: str | None
    profile_id: str


class ClaimOutcome(TypedDict):
    profile: DiscoveryProfile
    session_id: str
    already_claimed: bool
    conversations_moved: int
    dry_run: bool
