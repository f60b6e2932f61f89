"""Queries abandoned after a 503 must not keep running: the role PostgREST runs the
service's queries as (service_role) carries a statement_timeout below the HTTP client's
timeout, and the service says so at start-up when its settings disagree."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import psycopg
import pytest
import pytest_asyncio

from autopilot_api.core.config import Settings
from autopilot_api.local.dataplane import LocalDataPlane
from tests.conftest import make_settings, plane_info, running_app

ASYNC = pytest.mark.asyncio(loop_scope="session")
ROLE_TIMEOUT_MS = 8000


def _execute(plane: LocalDataPlane, statement: str) -> None:
    with psycopg.connect(plane_info(plane).database_url, autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


@pytest_asyncio.fixture(loop_scope="session")
async def sleeper(data_plane: LocalDataPlane, rest: httpx.AsyncClient) -> AsyncIterator[str]:
    """A throwaway RPC that sleeps, exposed to service_role only, dropped afterwards."""
    _execute(
        data_plane,
        "create function autopilot.test_sleep(p_seconds double precision) returns void "
        "language sql as $$ select pg_sleep(p_seconds) $$; "
        "revoke all on function autopilot.test_sleep(double precision) "
        "from public, anon, authenticated; "
        "grant execute on function autopilot.test_sleep(double precision) to service_role; "
        "notify pgrst, 'reload schema';",
    )
    try:
        deadline = time.monotonic() + 10
        while (await rest.post("/rpc/test_sleep", json={"p_seconds": 0})).status_code >= 300:
            assert time.monotonic() < deadline, "PostgREST did not load the test function"
            await asyncio.sleep(0.1)
        yield "/rpc/test_sleep"
    finally:
        _execute(
            data_plane,
            "drop function autopilot.test_sleep(double precision); notify pgrst, 'reload schema';",
        )


@ASYNC
class TestRoleStatementTimeout:
    async def test_queries_through_postgrest_carry_the_role_timeout(
        self, rest: httpx.AsyncClient
    ) -> None:
        response = await rest.post("/rpc/statement_timeout_ms")
        assert response.status_code == 200
        assert response.json() == ROLE_TIMEOUT_MS

    @pytest.mark.slow  # waits out the timeout
    async def test_a_query_running_past_it_is_cancelled(
        self, rest: httpx.AsyncClient, sleeper: str
    ) -> None:
        started = time.monotonic()
        response = await rest.post(sleeper, json={"p_seconds": 30}, timeout=25)
        elapsed = time.monotonic() - started
        assert response.json()["code"] == "57014"  # canceling statement due to statement timeout
        assert ROLE_TIMEOUT_MS / 1000 <= elapsed < ROLE_TIMEOUT_MS / 1000 + 3

    def test_it_is_set_on_service_role_only(self, data_plane: LocalDataPlane) -> None:
        """Never on the database or `postgres`: migrations and cleanup run there."""
        with psycopg.connect(plane_info(data_plane).database_url) as conn:
            rows = conn.execute(
                "select coalesce(r.rolname, '(database)'), s.setconfig "
                "from pg_db_role_setting s left join pg_roles r on r.oid = s.setrole "
                "where s.setdatabase in (0, (select oid from pg_database "
                "                            where datname = current_database()))"
            ).fetchall()
        with_timeout = {
            role
            for role, config in rows
            for entry in config
            if entry.startswith("statement_timeout=")
        }
        assert with_timeout == {"service_role"}
        assert ["statement_timeout=8s"] == [
            entry
            for role, config in rows
            if role == "service_role"
            for entry in config
            if entry.startswith("statement_timeout=")
        ]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings() -> Iterator[_Records]:
    # The app's logging setup replaces the root handlers (caplog's too); the module's
    # own logger keeps this one.
    handler = _Records()
    logger = logging.getLogger("autopilot_api.core.supabase")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@ASYNC
class TestStartupCheck:
    async def test_a_client_timeout_not_above_the_role_timeout_is_reported(
        self, data_plane: LocalDataPlane, warnings: _Records
    ) -> None:
        async with running_app(make_settings(data_plane, data_plane_timeout_seconds=8.0)):
            pass
        (message,) = [m for m in warnings.messages if "statement_timeout" in m]
        assert "DATA_PLANE_TIMEOUT_SECONDS" in message
        assert "8.0 s" in message

    async def test_the_test_settings_agree_with_the_role(
        self, settings: Settings, warnings: _Records
    ) -> None:
        assert settings.data_plane_timeout_seconds > ROLE_TIMEOUT_MS / 1000
        async with running_app(settings):
            pass
        assert [m for m in warnings.messages if "statement_timeout" in m] == []
