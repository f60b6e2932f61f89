"""Postgres killed with SIGKILL under a stream of writes, then started again: every write
the API acknowledged (2xx) is still there. Durability as production runs it: fsync,
synchronous_commit and full_page_writes at their defaults (on)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import httpx
import pytest

from autopilot_api.local.dataplane import LocalDataPlane
from tests.conftest import browser_client, make_settings, running_app
from tests.fixtures.factories import answer, start_session

ASYNC = pytest.mark.asyncio(loop_scope="session")
WRITERS = 8


@pytest.fixture
def own_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDataPlane]:
    """A cluster of its own: this test kills it."""
    if os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL"):
        pytest.skip("kills the Postgres it started; not run against an external server")
    plane = LocalDataPlane(data_dir=tmp_path_factory.mktemp("crash"))
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


@ASYNC
async def test_postgres_killed_under_writes_loses_no_acknowledged_write(
    own_plane: LocalDataPlane,
) -> None:
    # Writers loop every 5 ms: far past the per-session write limit, which is not tested here.
    settings = make_settings(
        own_plane, data_plane_timeout_seconds=3.0, session_write_limit_per_minute=100_000_000
    )
    async with running_app(settings) as app:
        clients = [browser_client(app) for _ in range(WRITERS)]
        acknowledged = [0] * WRITERS
        unexpected: list[int] = []
        stop = asyncio.Event()
        try:
            for http in clients:
                await start_session(http)

            async def writer(index: int, http: httpx.AsyncClient) -> None:
                value = 0
                while not stop.is_set():
                    value += 1
                    response = await http.put(
                        "/api/v1/sessions/me", json={"answers": {"sku_count": answer(value)}}
                    )
                    if response.status_code == 200:
                        acknowledged[index] = value
                    elif response.status_code != 503:
                        unexpected.append(response.status_code)
                    await asyncio.sleep(0.005)

            tasks = [asyncio.create_task(writer(i, http)) for i, http in enumerate(clients)]
            await asyncio.sleep(0.5)
            before_kill = sum(acknowledged)
            pid = own_plane.postgres_pid()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(own_plane.ensure_postgres_running)
            for _ in range(600):  # until writes are acknowledged again (PostgREST backs off)
                after = sum(acknowledged)
                await asyncio.sleep(0.1)
                if sum(acknowledged) > after:
                    break
            stop.set()
            await asyncio.gather(*tasks)

            stored = []
            for http in clients:
                body = (await http.get("/api/v1/sessions/me")).json()
                stored.append(body["answers"]["sku_count"]["value"])
        finally:
            for http in clients:
                await http.aclose()

    print(  # noqa: T201
        f"acknowledged writes: {sum(acknowledged)} (last per writer {acknowledged}); "
        f"stored after recovery: {stored}"
    )
    assert before_kill > 0
    assert unexpected == []
    for index in range(WRITERS):
        assert stored[index] >= acknowledged[index], (index, stored, acknowledged)
