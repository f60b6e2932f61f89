"""Wire contracts of /api/v1/search-sessions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import Field, StrictInt, StringConstraints

from autopilot_api.schemas.common import NOT_BLANK_PATTERN, CamelInput, CamelModel, WholeNumber

MAX_COMPANIES = 10_000
MAX_IDS_PER_CALL = 10_000
# Ids the SPA can hold exactly: JavaScript numbers are exact up to 2**53 - 1.
EmployeeId = Annotated[StrictInt, Field(ge=0, le=2**53 - 1), WholeNumber]
CompanyName = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=200, pattern=NOT_BLANK_PATTERN
    ),
]


class SearchSessionCreate(CamelInput):
    search_query: dict[str, Any] = Field(description="The original query, kept as given.")
    companies: list[CompanyName] = Field(min_length=1, max_length=MAX_COMPANIES)
    batch_size: Annotated[StrictInt, Field(ge=1, le=100), WholeNumber] = 5


class SearchSessionCreated(CamelModel):
    session_id: str
    first_batch: list[str]
    total_batches: int
    batch_size: int


class NextBatch(CamelModel):
    batch: list[str]
    batch_index: int
    total_batches: int


class EmployeeIds(CamelInput):
    employee_ids: list[EmployeeId] = Field(min_length=1, max_length=MAX_IDS_PER_CALL)


class FetchedIds(EmployeeIds):
    cache_hits: Annotated[StrictInt, Field(ge=0, le=MAX_IDS_PER_CALL), WholeNumber] = 0


class DiscoveredResult(CamelModel):
    added: int
    total_discovered: int


class FetchedResult(CamelModel):
    marked: int
    profiles_fetched: int


class UnfetchedIds(CamelModel):
    ids: list[EmployeeId]
    remaining: int


class SearchSessionStats(CamelModel):
    session_id: str
    is_active: bool
    total_discovered: int
    profiles_fetched: int
    unfetched: int
    batch_index: int
    total_batches: int
    batches_remaining: int
    cache_hits: int
    cache_misses: int
    cache_hit_rate: float
    last_accessed: datetime
    created_at: datetime


class SearchSessionSummary(SearchSessionStats):
    query_summary: str


class ClearedCount(CamelModel):
    cleared: int
