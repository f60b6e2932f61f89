"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from autopilot_api.api.deps import HealthServiceDep
from autopilot_api.api.json_body import JSONBodyRoute
from autopilot_api.schemas.common import error_responses
from autopilot_api.schemas.health import HealthPublic

router = APIRouter(tags=["health"], route_class=JSONBodyRoute)


@router.get("/healthz", summary="Process is up", status_code=status.HTTP_200_OK)
async def healthz() -> HealthPublic:
    """Answers as long as the process serves requests; touches nothing else."""
    return HealthPublic(status="ok")


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics() -> Response:
    """The text exposition format, for a Prometheus scrape."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/readyz",
    summary="Data plane is reachable",
    status_code=status.HTTP_200_OK,
    responses=error_responses(503),
)
async def readyz(health: HealthServiceDep) -> HealthPublic:
    """One PostgREST round trip to Postgres; 503 with Retry-After when it fails."""
    await health.check_data_plane()
    return HealthPublic(status="ok")
