"""/api/v1/admin: live sessions at a glance, cleanup on demand, model usage (admins only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from autopilot_api.api.deps import AdminServiceDep, CurrentAdmin, SessionServiceDep, SettingsDep
from autopilot_api.api.json_body import JSONBodyRoute
from autopilot_api.api.openapi import SIGNED_IN
from autopilot_api.schemas.admin import (
    AdminSessionRow,
    AdminSessionsPublic,
    CleanupResult,
    ModelUsagePublic,
    SessionTotals,
)
from autopilot_api.schemas.common import error_responses

router = APIRouter(tags=["admin"], route_class=JSONBodyRoute)


@router.get(
    "/sessions",
    summary="Session totals and a page of sessions (no tokens, no answers)",
    status_code=status.HTTP_200_OK,
    responses=error_responses(401, 403, 422, 503),
    openapi_extra=SIGNED_IN,
)
async def list_sessions(
    _: CurrentAdmin,
    admin: AdminServiceDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> AdminSessionsPublic:
    """Totals by phase and status, active in the last minutes, newest activity first."""
    totals = await admin.session_overview()
    rows, next_cursor = await admin.list_sessions(limit=limit, cursor=cursor)
    return AdminSessionsPublic(
        totals=SessionTotals.model_validate(totals),
        sessions=[AdminSessionRow.model_validate(row) for row in rows],
        next_cursor=next_cursor,
    )


@router.post(
    "/sessions/cleanup",
    summary="Delete expired, unclaimed sessions now",
    status_code=status.HTTP_200_OK,
    responses=error_responses(401, 403, 503),
    openapi_extra=SIGNED_IN,
)
async def cleanup_sessions(
    _: CurrentAdmin, sessions: SessionServiceDep, settings: SettingsDep
) -> CleanupResult:
    """Runs the batched cleanup to the end; returns how many sessions were deleted."""
    deleted = await sessions.cleanup_expired_sessions(
        batch_size=settings.session_cleanup_batch_size
    )
    return CleanupResult(deleted=deleted)


@router.get(
    "/usage",
    summary="Model tokens today, the token budgets, and the top spenders",
    status_code=status.HTTP_200_OK,
    responses=error_responses(401, 403, 422, 503),
    openapi_extra=SIGNED_IN,
)
async def model_usage(
    _: CurrentAdmin,
    admin: AdminServiceDep,
    top: Annotated[
        int, Query(ge=1, le=100, description="Entries in each top list (kept: 1,000).")
    ] = 10,
) -> ModelUsagePublic:
    """Today (UTC): tokens by operation and model, estimated cost, budgets, top spenders."""
    return ModelUsagePublic.from_report(await admin.model_usage(top=top))
