"""Liveness, readiness and metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response, status
from prometheus_client import CONTENT_TYPE_LATEST

from autopilot_api.api.deps import HealthServiceDep, MetricsAccess
from autopilot_api.api.openapi import PUBLIC
from autopilot_api.core.metrics import render_metrics
from autopilot_api.schemas.common import error_responses
from autopilot_api.schemas.health import HealthPublic

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    summary="Process is up",
    status_code=status.HTTP_200_OK,
    responses=error_responses(503),
    openapi_extra=PUBLIC,
)
async def healthz(health: HealthServiceDep) -> HealthPublic:
    """Answers while the process serves requests; 503 only when a local data plane is down
    for good (no network round trip)."""
    health.check_process()
    return HealthPublic(status="ok")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    include_in_schema=False,
    dependencies=[MetricsAccess],
    responses=error_responses(401, 404),
)
async def metrics() -> Response:
    """The text exposition format of every worker, for a Prometheus scrape."""
    return Response(await asyncio.to_thread(render_metrics), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/readyz",
    summary="Data plane is reachable",
    status_code=status.HTTP_200_OK,
    responses=error_responses(503),
    openapi_extra=PUBLIC,
)
async def readyz(health: HealthServiceDep) -> HealthPublic:
    """One PostgREST round trip to Postgres; 503 with Retry-After when it fails."""
    await health.check_data_plane()
    return HealthPublic(status="ok")
