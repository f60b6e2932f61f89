"""Wire contracts of /api/v1/search-sessions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field, field_validator

from src.schemas.common import CamelInput, CamelModel

MAX_COMPANIES = 10_000
MAX_IDS_PER_CALL = 10_000
EmployeeId = int


class SearchSessionCreate(CamelInput):
    search_query: dict[str, Any] = Field(description="The original query, kept as given.")
    companies: list[str] = Field(min_length=1, max_length=MAX_COMPANIES)
    batch_size: int = Field(default=5, ge=1, le=100)

    @field_validator("companies")
    @classmethod
    def _no_blank_companies(cls, companies: list[str]) -> list[str]:
        cleaned = [company.strip() for company in companies]
        if any(not company or len(company) > 200 for company in cleaned):
            raise ValueError("company names must be 1..200 characters")
        return cleaned


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

    @field_validator("employee_ids")
    @classmethod
    def _bigint_range(cls, ids: list[int]) -> list[int]:
        if any(not 0 <= value < 2**63 for value in ids):
            raise ValueError("employee ids are non-negative 64-bit integers")
        return ids


class FetchedIds(EmployeeIds):
    cache_hits: int = Field(default=0, ge=0)


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
