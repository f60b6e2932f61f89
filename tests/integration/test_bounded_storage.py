"""Storage per visitor is bounded (issue 15, item 4), through a real service process with
small limits: the metadata cap, the discovered-ids cap, the per-session write rate
limit, and the retention of audit events (with the `reset` a stream gets past it).
The heavy figures are in bench/storage_bounds.py (make check-reliability)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import psycopg
import pytest
import pytest_asyncio

from autopilot_api.core.config import Settings
from autopilot_api.local.dataplane import LocalDataPlane
from tests.fixtures.factories import SPA_ORIGIN, make_user
from tests.fixtures.processes import ServiceProcess, start_service
from tests.fixtures.sse import collect, sse_messages

ASYNC = pytest.mark.asyncio(loop_scope="session")
COOKIE = "autopilot_session"
METADATA_MAX = 2048
MAX_IDS = 250
WRITES_PER_MINUTE = 30


@pytest.fixture(scope="module")
def bounded_service(
    data_plane: LocalDataPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    service = start_service(
        data_plane,
        tmp_path_factory.mktemp("bounded"),
        SESSION_METADATA_MAX_BYTES=str(METADATA_MAX),
        SEARCH_SESSION_MAX_IDS=str(MAX_IDS),
        SESSION_WRITE_LIMIT_PER_MINUTE=str(WRITES_PER_MINUTE),
        AUDIT_EVENT_RETENTION_DAYS="90",
    )
    try:
        yield service
    finally:
        service.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def http(bounded_service: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=bounded_service.base_url,
        headers={"Origin": SPA_ORIGIN},
        timeout=httpx.Timeout(30, read=30),
    ) as client:
        yield client


def database_url(plane: LocalDataPlane) -> str:
    assert plane.info is not None
    return plane.info.database_url


def sql(plane: LocalDataPlane, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url(plane), autocommit=True) as conn:
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else []


@ASYNC
class TestMetadataCap:
    async def test_the_put_past_the_cap_is_refused_whole_and_names_the_limit(
        self, http: httpx.AsyncClient
    ) -> None:
        first = await http.put("/api/v1/sessions/me", json={"metadata": {"a": "x" * 900}})
        assert first.status_code == 201, first.text
        second = await http.put("/api/v1/sessions/me", json={"metadata": {"b": "y" * 900}})
        assert second.status_code == 200, second.text
        before = (await http.get("/api/v1/sessions/me")).json()

        over = await http.put(
            "/api/v1/sessions/me",
            json={"metadata": {"c": "z" * 900}, "timeframe": "next quarter"},
        )
        assert over.status_code == 422, over.text
        error = over.json()["error"]
        assert error["code"] == "metadata_too_large"
        assert str(METADATA_MAX) in error["message"]
        assert error["details"]["limitBytes"] == METADATA_MAX
        assert error["details"]["resultingBytes"] > METADATA_MAX
        # Nothing of the refused PUT was stored, its other fields included.
        after = (await http.get("/api/v1/sessions/me")).json()
        assert after == before
        assert after["timeframe"] != "next quarter"

    async def test_a_key_set_to_null_is_removed_which_makes_room(
        self, http: httpx.AsyncClient
    ) -> None:
        http.cookies.clear()
        await http.put("/api/v1/sessions/me", json={"metadata": {"a": "x" * 1500}})
        refused = await http.put("/api/v1/sessions/me", json={"metadata": {"b": "y" * 900}})
        assert refused.status_code == 422
        freed = await http.put(
            "/api/v1/sessions/me", json={"metadata": {"a": None, "b": "y" * 900}}
        )
        assert freed.status_code == 200, freed.text
        assert freed.json()["metadata"] == {"b": "y" * 900}


@ASYNC
class TestDiscoveredIdsCap:
    async def test_the_call_past_the_cap_is_refused_whole(self, http: httpx.AsyncClient) -> None:
        http.cookies.clear()
        created = await http.post(
            "/api/v1/search-sessions", json={"searchQuery": {}, "companies": ["x"]}
        )
        sid = created.json()["sessionId"]
        base = f"/api/v1/search-sessions/{sid}"
        ok = await http.post(f"{base}/discovered", json={"employeeIds": list(range(200))})
        assert ok.json()["totalDiscovered"] == 200

        # 100 ids of which 60 are new: 260 > 250, so none is added.
        over = await http.post(f"{base}/discovered", json={"employeeIds": list(range(160, 260))})
        assert over.status_code == 422, over.text
        error = over.json()["error"]
        assert error["code"] == "search_session_full"
        assert str(MAX_IDS) in error["message"]
        assert error["details"] == {"limit": MAX_IDS, "totalDiscovered": 200, "wouldAdd": 60}
        stats = (await http.get(f"{base}/stats")).json()
        assert stats["totalDiscovered"] == 200

        # Up to the cap exactly, and known ids again, are fine; one more is not.
        exact = await http.post(f"{base}/discovered", json={"employeeIds": list(range(150, 250))})
        assert exact.json() == {"added": 50, "totalDiscovered": MAX_IDS}
        again = await http.post(f"{base}/discovered", json={"employeeIds": [0, 249]})
        assert again.json()["added"] == 0
        one_more = await http.post(f"{base}/discovered", json={"employeeIds": [999]})
        assert one_more.status_code == 422

        # Order of first discovery is kept, across fetched marks.
        fetched = await http.post(f"{base}/fetched", json={"employeeIds": [0, 2, 249]})
        assert fetched.status_code == 200, fetched.text
        page = (await http.get(f"{base}/unfetched", params={"count": 3})).json()
        assert page["ids"] == [1, 3, 4]
        assert page["remaining"] == MAX_IDS - 3


@ASYNC
class TestWriteRateLimit:
    async def test_a_burst_of_25_passes_and_the_session_past_its_limit_gets_429(
        self, http: httpx.AsyncClient
    ) -> None:
        http.cookies.clear()
        # Far from a window's end, so the whole burst counts in one window.
        if time.time() % 60 > 45:
            time.sleep(61 - time.time() % 60)
        statuses = [
            (await http.put("/api/v1/sessions/me", json={"timeframe": f"t{i}"})).status_code
            for i in range(25)
        ]
        assert statuses == [201] + [200] * 24
        # The PUT that created the session is counted by the per-IP creation limit.
        for index in range(WRITES_PER_MINUTE - 24):
            response = await http.put("/api/v1/sessions/me", json={"timeframe": f"u{index}"})
            assert response.status_code == 200
        limited = await http.put("/api/v1/sessions/me", json={"timeframe": "over"})
        assert limited.status_code == 429, limited.text
        assert limited.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert (await http.get("/api/v1/sessions/me")).json()["timeframe"] != "over"

        # Another visitor is not limited by this one.
        async with httpx.AsyncClient(
            base_url=str(http.base_url), headers={"Origin": SPA_ORIGIN}
        ) as other:
            assert (
                await other.put("/api/v1/sessions/me", json={"timeframe": "x"})
            ).status_code == 201


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@ASYNC
class TestAuditEventRetention:
    async def test_cleanup_deletes_old_events_only_and_a_stale_stream_is_told_to_reset(
        self,
        http: httpx.AsyncClient,
        data_plane: LocalDataPlane,
        settings: Settings,
        rest: httpx.AsyncClient,
    ) -> None:
        http.cookies.clear()
        put = await http.put("/api/v1/sessions/me", json={"timeframe": "now"})
        assert put.status_code == 201
        token = put.cookies[COOKIE]
        session_id = put.json()["id"]
        # Two events past the 90-day retention, then one recent event.
        old_ids = [
            row[0]
            for row in sql(
                data_plane,
                "insert into autopilot.session_events"
                " (session_id, event_type, actor_type, created_at)"
                " select %s, 'updated', 'session', now() - interval '100 days'"
                " from generate_series(1, 2) returning id",
                session_id,
            )
        ]
        recent = await http.put("/api/v1/sessions/me", json={"timeframe": "later"})
        assert recent.status_code == 200

        admin = make_user(settings, admin=True)
        cleaned = await http.post(
            "/api/v1/admin/sessions/cleanup",
            headers={"Authorization": f"Bearer {admin.token}"},
        )
        assert cleaned.status_code == 200, cleaned.text
        left = [
            row[0]
            for row in sql(
                data_plane,
                "select id from autopilot.session_events where session_id = %s order by id",
                session_id,
            )
        ]
        assert not set(old_ids) & set(left)
        # The recent events stay.
        assert left
        assert max(left) > max(old_ids)
        (floor,) = sql(data_plane, "select autopilot.event_history_floor()")[0]
        assert floor >= max(old_ids)

        # The append-only rule still holds for the service's own key, through PostgREST...
        refused = await rest.delete("/session_events", params={"id": f"eq.{left[0]}"})
        assert refused.status_code >= 400
        # ...and for service_role with the cleanup's flag set by hand.
        with psycopg.connect(database_url(data_plane)) as conn:
            conn.execute("set local role service_role")
            conn.execute("select set_config('autopilot.retention_cleanup', 'on', true)")
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute("delete from autopilot.session_events where id = %s", (left[0],))
        assert (
            len(sql(data_plane, "select 1 from autopilot.session_events where id = %s", left[0]))
            == 1
        )

        # A stream resuming below the pruned history gets `reset`, then live events.
        cookie = {"Cookie": f"{COOKIE}={token}"}
        async with http.stream(
            "GET", "/api/v1/events", headers={**cookie, "Last-Event-ID": str(old_ids[0] - 1)}
        ) as stream:
            messages = sse_messages(stream)
            (reset,) = await collect(messages, events=1)
            assert reset.event == "reset"
            assert reset.data["payload"]["reason"] == "history_pruned"
            assert int(reset.id or 0) >= floor
            other = httpx.AsyncClient(base_url=str(http.base_url), headers={"Origin": SPA_ORIGIN})
            async with other:
                await other.put("/api/v1/sessions/me", headers=cookie, json={"timeframe": "x"})
            (live,) = await collect(messages, events=1)
            assert live.event == "updated"
            assert int(live.id or 0) > int(reset.id or 0)

        # Resuming at or above it replays as before: no reset.
        async with http.stream(
            "GET", "/api/v1/events", headers={**cookie, "Last-Event-ID": str(floor)}
        ) as stream:
            replayed = await collect(sse_messages(stream), events=1)
        assert replayed[0].event == "updated"

    async def test_the_cleanup_function_is_not_executable_with_the_anon_key(
        self, anon_rest: httpx.AsyncClient
    ) -> None:
        response = await anon_rest.post(
            "/rpc/cleanup_old_session_events", json={"p_retention_days": 1}
        )
        assert response.status_code in (401, 403, 404), response.text
