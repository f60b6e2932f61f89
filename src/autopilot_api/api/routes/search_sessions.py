"""/api/v1/search-sessions: long result lists loaded batch by batch ("load more")."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status

from autopilot_api.api.deps import (
    IdempotencyKeyHeader,
    ReadOwnerDep,
    SearchSessionServiceDep,
    WriteOwnerDep,
    client_ip,
    mark_replayed,
)
from autopilot_api.api.json_body import JSONBodyRoute
from autopilot_api.api.openapi import ANY_CALLER
from autopilot_api.schemas.common import error_responses
from autopilot_api.schemas.search_session import (
    ClearedCount,
    DiscoveredResult,
    EmployeeIds,
    FetchedIds,
    FetchedResult,
    NextBatch,
    SearchSessionCreate,
    SearchSessionCreated,
    SearchSessionStats,
    SearchSessionSummary,
    UnfetchedIds,
)

router = APIRouter(tags=["search sessions"], route_class=JSONBodyRoute)

SearchSessionId = Annotated[str, Path(max_length=64, description="search_<unix seconds>_<8 hex>")]


@router.post(
    "",
    summary="Start a search session",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(401, 403, 413, 422, 429, 503),
    openapi_extra=ANY_CALLER,
)
async def create_search_session(
    body: SearchSessionCreate,
    request: Request,
    owner: WriteOwnerDep,
    searches: SearchSessionServiceDep,
) -> SearchSessionCreated:
    """Splits the companies into batches and returns the first one (caps: README "Operations")."""
    created = await searches.create(
        owner=owner,
        client_ip=client_ip(request, searches.settings),
        search_query=body.search_query,
        companies=body.companies,
        batch_size=body.batch_size,
    )
    return SearchSessionCreated.model_validate(created)


@router.get(
    "",
    summary="The caller's active search sessions",
    status_code=status.HTTP_200_OK,
    responses=error_responses(401, 422, 503),
    openapi_extra=ANY_CALLER,
)
async def list_search_sessions(
    owner: ReadOwnerDep,
    searches: SearchSessionServiceDep,
    limit: Annotated[int, Query(ge=1, le=50)] = 50,
) -> list[SearchSessionSummary]:
    """Most recently accessed first, each with a short summary of its query."""
    rows = await searches.list_active(owner=owner, limit=limit)
    return [SearchSessionSummary.model_validate(row) for row in rows]


@router.delete(
    "",
    summary="Clear all of the caller's search sessions",
    status_code=status.HTTP_200_OK,
    responses=error_responses(401, 403, 429, 503),
    openapi_extra=ANY_CALLER,
)
async def clear_all_search_sessions(
    owner: ReadOwnerDep, searches: SearchSessionServiceDep
) -> ClearedCount:
    """Soft clear (they become inactive); returns how many were cleared."""
    return ClearedCount(cleared=await searches.clear(owner=owner))


@router.post(
    "/{session_id}/next-batch",
    summary="Hand out the next batch",
    status_code=status.HTTP_200_OK,
    responses=error_responses(401, 403, 404, 409, 422, 429, 503),
    openapi_extra=ANY_CALLER,
)
async def next_batch(
    session_id: SearchSessionId,
    owner: ReadOwnerDep,
    searches: SearchSessionServiceDep,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> NextBatch:
    """Each batch once, also under concurrency and keyed retries; 404 batch_exhausted at the end."""
    outcome = await searches.next_batch(
        owner=owner, session_id=session_id, idempotency_key=idempotency_key
    )
    mark_replayed(response, replayed=outcome.replayed)
    return NextBatch.model_validate(outcome.result)


@router.post(
    "/{session_id}/discovered",
    summary="Record discovered ids (deduplicated, order of first discovery)",
    status_code=status.HTTP_200_OK,
    responses=error_responses(401, 403, 404, 409, 413, 422, 429, 503),
    openapi_extra=ANY_CALLER,
)
async def add_discovered(
    session_id: SearchSessionId,
    body: EmployeeIds,
    owner: ReadOwnerDep,
    searches: SearchSessionServiceDep,
) -> DiscoveredResult:
    """Ids already known, or repeated in the request, are added once."""
    result = await searches.add_discovered(
        owner=owner, session_id=session_id, ids=body.employee_ids
    )
    return DiscoveredResult.model_validate(result)


@router.post(
    "/{session_id}/fetched",
    summary="Mark ids as fetched in full",
    status_code=status.HTTP_200_OK,
    responses=error_responses(401, 403, 404, 409, 413, 422, 429, 503),
    openapi_extra=ANY_CALLER,
)
async def mark_fetched(
    session_id: SearchSessionId,
    body: FetchedIds,
    owner: ReadOwnerDep,
    searches: SearchSessionServiceDep,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> FetchedResult:
    """Ids never discovered → 422 ids_not_discovered, and nothing is marked."""
    outcome = await searches.mark_fetched(
        owner=owner,
        session_id=session_id,
        ids=body.employee_ids,
        cache_hits=body.cache_hits,
        idempotency_key=idempotency_key,
    )
    mark_replayed(response, replayed=outcome.replayed)
    return FetchedResult.model_validate(outcome.result)


@router.get(
    "/{session_id}/unfetched",
    summary="Discovered ids not yet fetched",
    status_code=status.HTTP_200_OK,
    responses=error_responses(401, 404, 422, 503),
    openapi_extra=ANY_CALLER,
)
async def unfetched(
    session_id: SearchSessionId,
    owner: ReadOwnerDep,
    searches: SearchSessionServiceDep,
    count: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> UnfetchedIds:
    """In discovery order."""
    result = await searches.unfetched(owner=owner, session_id=session_id, count=count)
    return UnfetchedIds.model_validate(result)


@router.get(
    "/{session_id}/stats",
    summary="Totals, batch progress, fetched count and cache hit rate",
    status_code=status.HTTP_200_OK,
    responses=error_responses(401, 404, 422, 503),
    openapi_extra=ANY_CALLER,
)
async def stats(
    session_id: SearchSessionId, owner: ReadOwnerDep, searches: SearchSessionServiceDep
) -> SearchSessionStats:
    """Reading counts as access (last_accessed moves)."""
    return SearchSessionStats.model_validate(
        await searches.stats(owner=owner, session_id=session_id)
    )


@router.delete(
    "/{session_id}",
    summary="Clear a search session",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 403, 404, 422, 429, 503),
    openapi_extra=ANY_CALLER,
)
async def clear_search_session(
    session_id: SearchSessionId, owner: ReadOwnerDep, searches: SearchSessionServiceDep
) -> None:
    """Soft clear: it becomes inactive; further batches → 409 session_inactive."""
    await searches.clear(owner=owner, session_id=session_id)
