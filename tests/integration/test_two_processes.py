"""Races across two service processes sharing one data plane: correctness comes from SQL,
not from any lock inside a process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from autopilot_api.core.config import Settings
from autopilot_api.discovery.catalogue import QUESTION_KEYS_IN_ORDER
from tests.fixtures.factories import SPA_ORIGIN, make_user, valid_value
from tests.fixtures.processes import ServiceProcess

ASYNC = pytest.mark.asyncio(loop_scope="session")
COOKIE = "autopilot_session"


@pytest_asyncio.fixture(loop_scope="session")
async def pair(
    two_services: tuple[ServiceProcess, ServiceProcess],
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    first, second = two_services
    headers = {"Origin": SPA_ORIGIN}
    async with (
        httpx.AsyncClient(base_url=first.base_url, headers=headers, timeout=30) as a,
        httpx.AsyncClient(base_url=second.base_url, headers=headers, timeout=30) as b,
    ):
        yield a, b


async def new_cookie(http: httpx.AsyncClient) -> dict[str, str]:
    response = await http.post("/api/v1/sessions")
    assert response.status_code == 201
    token = response.cookies[COOKIE]
    http.cookies.clear()
    return {"Cookie": f"{COOKIE}={token}"}


@ASYNC
class TestAcrossTwoProcesses:
    async def test_write_through_one_is_read_through_the_other_at_once(
        self, pair: tuple[httpx.AsyncClient, httpx.AsyncClient]
    ) -> None:
        a, b = pair
        cookie = await new_cookie(a)
        written = await a.put(
            "/api/v1/sessions/me",
            headers=cookie,
            json={"answers": {"facility_type": {"value": "cold storage"}}},
        )
        assert written.status_code == 200
        read = await b.get("/api/v1/sessions/me", headers=cookie)
        assert read.json()["answers"]["facility_type"]["value"] == "cold storage"
        assert read.json()["version"] == written.json()["version"]

    async def test_concurrent_puts_one_per_key_all_land(
        self, pair: tuple[httpx.AsyncClient, httpx.AsyncClient]
    ) -> None:
        a, b = pair
        cookie = await new_cookie(a)
        results = await asyncio.gather(
            *(
                (a if index % 2 else b).put(
                    "/api/v1/sessions/me",
                    headers=cookie,
                    json={"answers": {key: {"value": valid_value(key, index)}}},
                )
                for index, key in enumerate(QUESTION_KEYS_IN_ORDER)
            )
        )
        assert [r.status_code for r in results] == [200] * len(QUESTION_KEYS_IN_ORDER)
        final = (await b.get("/api/v1/sessions/me", headers=cookie)).json()
        assert len(final["answers"]) == len(QUESTION_KEYS_IN_ORDER)
        assert {k: final["answers"][k]["value"] for k in QUESTION_KEYS_IN_ORDER} == {
            k: valid_value(k, i) for i, k in enumerate(QUESTION_KEYS_IN_ORDER)
        }
        assert final["version"] == 1 + len(QUESTION_KEYS_IN_ORDER)

    async def test_double_claim_raced_by_one_user_merges_once(
        self, pair: tuple[httpx.AsyncClient, httpx.AsyncClient], settings: Settings
    ) -> None:
        a, b = pair
        cookie = await new_cookie(a)
        await a.put(
            "/api/v1/sessions/me", headers=cookie, json={"answers": {"sku_count": {"value": 12}}}
        )
        user = make_user(settings)
        headers = {**cookie, **user.headers}
        results = await asyncio.gather(
            *(http.post("/api/v1/sessions/claim", headers=headers) for http in (a, b, a, b))
        )
        assert [r.status_code for r in results] == [200] * 4
        merges = [r for r in results if r.json()["alreadyClaimed"] is False]
        assert len(merges) == 1
        profile = (await b.get("/api/v1/discovery", headers=user.headers)).json()
        assert profile["answers"]["sku_count"]["value"] == 12
        assert profile["version"] == 2  # created, then exactly one merge

    async def test_claim_raced_by_two_users_has_one_winner(
        self, pair: tuple[httpx.AsyncClient, httpx.AsyncClient], settings: Settings
    ) -> None:
        a, b = pair
        cookie = await new_cookie(a)
        first, second = make_user(settings), make_user(settings)
        results = await asyncio.gather(
            a.post("/api/v1/sessions/claim", headers={**cookie, **first.headers}),
            b.post("/api/v1/sessions/claim", headers={**cookie, **second.headers}),
        )
        assert sorted(r.status_code for r in results) == [200, 409]
