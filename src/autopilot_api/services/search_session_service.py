"""Progressive-loading search sessions. Every change is one SQL function (atomic under
concurrency, caps included); this class shapes inputs and outputs and counts each write
against the caller's rate limits."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any, cast

from supabase import AsyncClient

from autopilot_api.core.config import Settings
from autopilot_api.core.errors import SearchSessionNotFoundError
from autopilot_api.core.supabase import call_rpc
from autopilot_api.models.auth import Owner
from autopilot_api.services.rate_limiter import RateLimiter
from autopilot_api.services.write_limits import WriteLimits, owner_key

SUMMARY_MAX_CHARS = 80


def split_into_batches(items: list[str], batch_size: int) -> list[list[str]]:
    return [items[start : start + batch_size] for start in range(0, len(items), batch_size)]


def new_search_session_id() -> str:
    return f"search_{int(time.time())}_{secrets.token_hex(4)}"


def query_summary(search_query: dict[str, Any]) -> str:
    """A short human line: `role: engineer · location: Berlin`."""
    parts = []
    for key, value in search_query.items():
        shown = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        parts.append(f"{key}: {shown}")
    summary = " · ".join(parts) or "(empty query)"
    return summary if len(summary) <= SUMMARY_MAX_CHARS else summary[: SUMMARY_MAX_CHARS - 1] + "…"


@dataclass(frozen=True, slots=True)
class KeyedOutcome:
    """The result of a call that took an Idempotency-Key; `replayed` when a retry got the
    first call's result back."""

    result: dict[str, Any]
    replayed: bool


class SearchSessionService:
    def __init__(
        self, supabase: AsyncClient, settings: Settings, *, rate_limiter: RateLimiter
    ) -> None:
        self._supabase = supabase
        self._settings = settings
        self._limits = WriteLimits(rate_limiter, settings)

    @property
    def settings(self) -> Settings:
        """What it runs with; the routes read the client address through it."""
        return self._settings

    async def _count_write(self, owner: Owner) -> None:
        """A write by nobody (no session, no user) can only find nothing: 404 before any
        work, so there is nothing to count. Anyone else's write counts."""
        if owner.is_nobody:
            raise SearchSessionNotFoundError()
        await self._limits.write(caller=owner_key(owner))

    async def _keyed_call(
        self, function: str, owner: Owner, idempotency_key: str | None, **params: Any
    ) -> KeyedOutcome:
        """A call whose SQL function stores its outcome under the key, in its own transaction
        (a new key past the caller's IDEMPOTENCY_KEYS_MAX_PER_CALLER drops their oldest)."""
        await self._count_write(owner)
        result = dict(
            await self._call(
                function,
                owner,
                idempotency_key=idempotency_key,
                idempotency_ttl_seconds=self._settings.idempotency_key_ttl_seconds,
                idempotency_max_keys=self._settings.idempotency_keys_max_per_caller,
                **params,
            )
        )
        replayed = bool(result.pop("replayed"))
        return KeyedOutcome(result=result, replayed=replayed)

    async def _call(self, function: str, owner: Owner, **params: Any) -> Any:
        return await call_rpc(
            self._supabase,
            function,
            {
                "p_user_id": str(owner.user_id) if owner.user_id else None,
                "p_session_id": str(owner.session_id) if owner.session_id else None,
                **{f"p_{name}": value for name, value in params.items()},
            },
        )

    async def create(
        self,
        *,
        owner: Owner,
        client_ip: str,
        search_query: dict[str, Any],
        companies: list[str],
        batch_size: int,
    ) -> dict[str, Any]:
        """Rate-limited per owner and (anonymous) per client IP; capped per owner and in the
        query's size, in SQL (422 too_many_search_sessions, search_query_too_large)."""
        await self._limits.create(kind="search_session", owner=owner, client_ip=client_ip)
        batches = split_into_batches(companies, batch_size)
        created = await self._call(
            "create_search_session",
            owner,
            id=new_search_session_id(),
            search_query=search_query,
            batches=batches,
            max_per_owner=self._settings.search_sessions_max_per_owner,
            query_max_bytes=self._settings.search_query_max_bytes,
        )
        return {**cast(dict[str, Any], created), "batch_size": batch_size}

    async def next_batch(
        self, *, owner: Owner, session_id: str, idempotency_key: str | None = None
    ) -> KeyedOutcome:
        return await self._keyed_call("next_search_batch", owner, idempotency_key, id=session_id)

    async def add_discovered(
        self, *, owner: Owner, session_id: str, ids: list[int]
    ) -> dict[str, Any]:
        await self._count_write(owner)
        return cast(
            dict[str, Any],
            await self._call(
                "add_discovered_ids",
                owner,
                id=session_id,
                ids=ids,
                max_ids=self._settings.search_session_max_ids,
            ),
        )

    async def mark_fetched(
        self,
        *,
        owner: Owner,
        session_id: str,
        ids: list[int],
        cache_hits: int,
        idempotency_key: str | None = None,
    ) -> KeyedOutcome:
        return await self._keyed_call(
            "mark_profiles_fetched",
            owner,
            idempotency_key,
            id=session_id,
            ids=ids,
            cache_hits=cache_hits,
        )

    async def unfetched(self, *, owner: Owner, session_id: str, count: int) -> dict[str, Any]:
        return cast(
            dict[str, Any], await self._call("unfetched_ids", owner, id=session_id, count=count)
        )

    async def stats(self, *, owner: Owner, session_id: str) -> dict[str, Any]:
        return cast(dict[str, Any], await self._call("search_session_stats", owner, id=session_id))

    async def list_active(self, *, owner: Owner, limit: int) -> list[dict[str, Any]]:
        if owner.is_nobody:
            return []
        rows = cast(
            list[dict[str, Any]], await self._call("list_search_sessions", owner, limit=limit)
        )
        return [{**row, "query_summary": query_summary(row["search_query"])} for row in rows]

    async def clear(self, *, owner: Owner, session_id: str | None = None) -> int:
        if owner.is_nobody:
            if session_id is not None:
                raise SearchSessionNotFoundError()
            return 0
        await self._count_write(owner)
        return int(await self._call("clear_search_sessions", owner, id=session_id))
