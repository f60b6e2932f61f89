"""/api/v1/discovery: the question catalogue and signed-in users' discovery profiles."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from autopilot_api.api.deps import (
    CurrentUser,
    DiscoveryProfileServiceDep,
    IfMatchDep,
    SettingsDep,
    WritingUser,
    expected_version,
    set_etag,
)
from autopilot_api.api.json_body import JSONBodyRoute
from autopilot_api.api.openapi import PUBLIC, SIGNED_IN
from autopilot_api.discovery.catalogue import DISCOVERY_QUESTIONS
from autopilot_api.schemas.common import error_responses, header_docs
from autopilot_api.schemas.discovery import (
    DiscoveryProfileResponse,
    DiscoveryProfileUpdate,
    QuestionPublic,
    discovery_profile_response,
)

router = APIRouter(tags=["discovery"], route_class=JSONBodyRoute)

_QUESTIONS = [QuestionPublic.from_question(question) for question in DISCOVERY_QUESTIONS]


@router.get(
    "/questions",
    summary="The discovery question catalogue",
    status_code=200,
    responses={200: {"headers": header_docs("Cache-Control")}},
    openapi_extra=PUBLIC,
)
async def list_questions(response: Response) -> list[QuestionPublic]:
    """Public and cacheable: the SPA and the server share this one list."""
    response.headers["Cache-Control"] = "public, max-age=3600"
    return _QUESTIONS


@router.get(
    "",
    summary="The signed-in user's discovery profile",
    status_code=status.HTTP_200_OK,
    responses={200: {"headers": header_docs("ETag")}, **error_responses(401, 503)},
    openapi_extra=SIGNED_IN,
)
async def get_discovery_profile(
    user: CurrentUser,
    response: Response,
    profiles: DiscoveryProfileServiceDep,
    settings: SettingsDep,
) -> DiscoveryProfileResponse:
    """Created empty on first read."""
    row = await profiles.get_or_create(user=user)
    set_etag(response, row)
    return discovery_profile_response(row, recovery_window_days=settings.recovery_window_days)


@router.put(
    "",
    summary="Update the signed-in user's discovery profile (answers merge per key)",
    status_code=status.HTTP_200_OK,
    responses={
        200: {"headers": header_docs("ETag")},
        **error_responses(401, 409, 412, 413, 422, 429, 503),
    },
    openapi_extra=SIGNED_IN,
)
async def update_discovery_profile(
    update: DiscoveryProfileUpdate,
    user: WritingUser,
    response: Response,
    profiles: DiscoveryProfileServiceDep,
    if_match: IfMatchDep,
    settings: SettingsDep,
) -> DiscoveryProfileResponse:
    """Partial update with optional If-Match (stale → 412)."""
    row = await profiles.update(
        user=user, update=update, expected_version=expected_version(if_match)
    )
    set_etag(response, row)
    return discovery_profile_response(row, recovery_window_days=settings.recovery_window_days)


@router.post(
    "/complete",
    summary="Complete the signed-in user's discovery profile (from the greenlight phase)",
    status_code=status.HTTP_200_OK,
    responses={200: {"headers": header_docs("ETag")}, **error_responses(401, 409, 429, 503)},
    openapi_extra=SIGNED_IN,
)
async def complete_discovery_profile(
    user: WritingUser,
    response: Response,
    profiles: DiscoveryProfileServiceDep,
    settings: SettingsDep,
) -> DiscoveryProfileResponse:
    """Only from greenlight (409 completion_not_allowed otherwise); idempotent."""
    row = await profiles.complete(user=user)
    set_etag(response, row)
    return discovery_profile_response(row, recovery_window_days=settings.recovery_window_days)
