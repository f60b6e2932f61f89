"""What administrators see: session totals and a keyset-paginated list (no secrets), and the
model's usage today."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any, cast
from uuid import UUID

from supabase import AsyncClient

from autopilot_api.core.config import Settings
from autopilot_api.core.errors import ValidationFailedError, field_error
from autopilot_api.core.supabase import call_rpc
from autopilot_api.services.model_budget import ModelBudget, UsageReport


def encode_cursor(last_seen_at: str, session_id: str) -> str:
    return base64.urlsafe_b64encode(f"{last_seen_at}|{session_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        seen, session_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        datetime.fromisoformat(seen)
        UUID(session_id)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise ValidationFailedError(
            "The cursor is not one this endpoint returned.",
            details=[field_error(["query", "cursor"], "invalid cursor", "cursor")],
        ) from exc
    return seen, session_id


class AdminService:
    def __init__(
        self, supabase: AsyncClient, settings: Settings, *, model_budget: ModelBudget
    ) -> None:
        self._supabase = supabase
        self._settings = settings
        self._model_budget = model_budget

    async def model_usage(self, *, top: int) -> UsageReport:
        """Today's model usage (UTC), the budgets and the `top` biggest spenders of each kind."""
        return await self._model_budget.usage_report(top=top)

    async def session_overview(self) -> dict[str, Any]:
        totals = await call_rpc(
            self._supabase,
            "admin_session_overview",
            {"p_active_minutes": self._settings.admin_active_minutes},
        )
        return cast(dict[str, Any], totals)

    async def list_sessions(
        self, *, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        before_seen, before_id = decode_cursor(cursor) if cursor else (None, None)
        rows = cast(
            list[dict[str, Any]],
            await call_rpc(
                self._supabase,
                "admin_list_sessions",
                {"p_limit": limit, "p_before_seen": before_seen, "p_before_id": before_id},
            ),
        )
        next_cursor = (
            encode_cursor(rows[-1]["lastSeenAt"], rows[-1]["id"]) if len(rows) == limit else None
        )
        return rows, next_cursor
