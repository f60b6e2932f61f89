"""Wire contracts of /api/v1/admin."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import Field

from autopilot_api.models.session import SessionPhase
from autopilot_api.schemas.common import CamelModel
from autopilot_api.schemas.discovery import SessionStatus


class SessionTotals(CamelModel):
    total: int
    by_phase: dict[str, int]
    by_status: dict[str, int]
    active_recently: int
    active_window_minutes: int


class AdminSessionRow(CamelModel):
    id: UUID
    phase: SessionPhase
    status: SessionStatus
    current_question_index: int
    answer_count: int
    roi_input_count: int
    claimed_by_profile_id: UUID | None
    version: int
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime


class AdminSessionsPublic(CamelModel):
    totals: SessionTotals
    sessions: list[AdminSessionRow] = Field(description="Newest activity first.")
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page.")


class CleanupResult(CamelModel):
    deleted: int


class EventTicketPublic(CamelModel):
    ticket: str = Field(
        description="Pass as ?ticket= to GET /api/v1/events, before expiresAt. Its first use "
        "sets the stream cookie; the same URL then reconnects only with that cookie."
    )
    expires_at: datetime
