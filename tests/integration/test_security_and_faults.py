"""Security sweep and injected faults, through HTTP."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from autopilot_api.core.config import Settings
from autopilot_api.local.dataplane import LocalDataPlane
from tests.conftest import browser_client, make_settings, running_app
from tests.fixtures.factories import answer, make_user, start_session

ASYNC = pytest.mark.asyncio(loop_scope="session")


@ASYNC
class TestBodyLimit:
    async def test_body_over_the_limit_is_413_by_length_and_when_chunked(
        self, data_plane: LocalDataPlane
    ) -> None:
        settings = make_settings(data_plane, max_body_bytes=2048)
        async with running_app(settings) as app, browser_client(app) as http:
            declared = await http.put(
                "/api/v1/sessions/me",
                content=b'{"timeframe":"' + b"x" * 5000 + b'"}',
                headers={"Content-Type": "application/json"},
            )

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(10):
                    yield b"x" * 1000

            chunked = await http.put(
                "/api/v1/sessions/me",
                content=chunks(),
                headers={"Content-Type": "application/json"},
            )
            small = await http.put("/api/v1/sessions/me", json={"timeframe": "fits"})
        for response in (declared, chunked):
            assert response.status_code == 413
            assert response.json()["error"]["code"] == "payload_too_large"
        assert chunked.request.headers["transfer-encoding"] == "chunked"
        assert small.status_code == 201


@ASYNC
class TestSecretsStayOnTheServer:
    async def test_logs_never_contain_tokens_or_bearer_strings(
        self, client: httpx.AsyncClient, settings: Settings, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        token = await start_session(client)
        await client.put("/api/v1/sessions/me", json={"answers": {"sku_count": answer(3)}})
        user = make_user(settings)
        await client.post("/api/v1/sessions/claim", headers=user.headers)
        ticket = (await client.post("/api/v1/events/ticket", headers=user.headers)).json()["ticket"]
        await client.get("/api/v1/discovery", headers={"Authorization": "Bearer not-a-jwt"})
        logged = caplog.text
        assert logged, "the flow should have logged something"
        for secret in (token, user.token, ticket, "not-a-jwt", "Bearer "):
            assert secret not in logged

    async def test_error_responses_never_echo_the_credentials(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        forged = make_user(settings).token[:-4] + "AAAA"
        response = await client.get(
            "/api/v1/discovery", headers={"Authorization": f"Bearer {forged}"}
        )
        assert response.status_code == 401
        assert forged not in response.text
        assert forged[:40] not in response.text


@ASYNC
class TestDataPlaneOutage:
    async def test_postgrest_stopped_mid_traffic_gives_503_then_recovers_by_itself(
        self, data_plane: LocalDataPlane
    ) -> None:
        settings = make_settings(data_plane, data_plane_timeout_seconds=3.0)
        assert data_plane.postgrest is not None
        async with running_app(settings) as app, browser_client(app) as http:
            await start_session(http)
            outcomes: list[tuple[int, float, str | None]] = []
            stop = asyncio.Event()

            async def traffic() -> None:
                while not stop.is_set():
                    started = time.monotonic()
                    response = await http.get("/api/v1/sessions/me")
                    outcomes.append(
                        (
                            response.status_code,
                            time.monotonic() - started,
                            response.headers.get("Retry-After"),
                        )
                    )
                    await asyncio.sleep(0.02)

            runner = asyncio.create_task(traffic())
            await asyncio.sleep(0.3)
            data_plane.postgrest.stop()
            await asyncio.sleep(1.0)
            down = len(outcomes)
            data_plane.postgrest.start()
            await asyncio.sleep(0.5)
            stop.set()
            await runner

        statuses = {status for status, _, _ in outcomes}
        assert statuses <= {200, 503}
        assert 503 in {status for status, _, _ in outcomes[:down]}
        assert all(retry for status, _, retry in outcomes if status == 503)
        assert outcomes[-1][0] == 200  # recovered with no restart
        assert max(elapsed for _, elapsed, _ in outcomes) < settings.data_plane_timeout_seconds + 2

    async def test_readiness_follows_the_outage(
        self, app: FastAPI, data_plane: LocalDataPlane
    ) -> None:
        assert data_plane.postgrest is not None
        async with browser_client(app) as http:
            data_plane.postgrest.stop()
            try:
                assert (await http.get("/readyz")).status_code == 503
            finally:
                data_plane.postgrest.start()
            assert (await http.get("/readyz")).status_code == 200
