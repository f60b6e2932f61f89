"""Wire contracts of /api/v1/sessions."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from autopilot_api.schemas.common import CamelModel
from autopilot_api.schemas.discovery import (
    DiscoveryAnswerSchema,
    DiscoveryProfileResponse,
    DiscoveryProfileUpdate,
    ProgressPublic,
    ROIInputsSchema,
    SessionUpdate,
    discovery_profile_response,
    progress_public_fields,
)

__all__ = [
    "DiscoveryAnswerSchema",
    "DiscoveryProfileUpdate",
    "ROIInputsSchema",
    "SessionClaimResponse",
    "SessionResponse",
    "SessionUpdate",
]


class SessionResponse(ProgressPublic):
    id: UUID
    conversation_id: UUID | None
    metadata: dict[str, Any]
    expires_at: datetime
    last_seen_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any], *, recovery_window_days: int) -> SessionResponse:
        return cls.model_validate(
            {
                **progress_public_fields(row, recovery_window_days=recovery_window_days),
                "id": row["id"],
                "conversation_id": row.get("conversation_id"),
                "metadata": row.get("metadata") or {},
                "expires_at": row["expires_at"],
                "last_seen_at": row["last_seen_at"],
            }
        )


class SessionClaimResponse(CamelModel):
    profile: DiscoveryProfileResponse
    claimed_session_id: UUID
    conversations_moved: int
    already_claimed: bool
    dry_run: bool

    @classmethod
    def from_outcome(
        cls, outcome: Mapping[str, Any], *, recovery_window_days: int
    ) -> SessionClaimResponse:
        return cls(
            profile=discovery_profile_response(
                outcome["profile"], recovery_window_days=recovery_window_days
            ),
            claimed_session_id=outcome["session_id"],
            conversations_moved=outcome["conversations_moved"],
            already_claimed=outcome["already_claimed"],
            dry_run=outcome["dry_run"],
        )
