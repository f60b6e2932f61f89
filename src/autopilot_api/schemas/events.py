"""Wire contracts of /api/v1/events: the JSON in each live event's `data:`."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args
from uuid import UUID

from pydantic import Field

from autopilot_api.schemas.common import CamelModel

# session_events.event_type, with `extracted` sent as `extraction.completed`.
EventType = Literal[
    "created",
    "updated",
    "phase_changed",
    "completed",
    "claimed",
    "extraction.completed",
    "deleted",
    "expired",
    "token_rotated",
    # Not stored: sent instead of a silent gap when Last-Event-ID is older than the
    # retained history (AUDIT_EVENT_RETENTION_DAYS); the client reloads its state.
    "reset",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)


class EventActor(CamelModel):
    type: Literal["user", "session", "system"]
    id: str | None = Field(description="The user's or session's id; null for the system.")


class SessionEventPublic(CamelModel):
    """One entry of the audit trail; the SSE `id:` is its id and `event:` its type."""

    id: int
    type: EventType
    session_id: UUID | None
    profile_id: UUID | None
    actor: EventActor
    payload: dict[str, Any]
    created_at: datetime
