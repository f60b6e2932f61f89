"""/api/v1/search-sessions through HTTP; races across two service processes."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest
import pytest_asyncio

from autopilot_api.core.config import Settings
from tests.fixtures.factories import SPA_ORIGIN, make_user, start_session
from tests.fixtures.processes import ServiceProcess, client_limits

ASYNC = pytest.mark.asyncio(loop_scope="session")
BASE = "/api/v1/search-sessions"
COMPANIES = [
    "Google",
    "Meta",
    "Apple",
    "Amazon",
    "Microsoft",
    "OpenAI",
    "Anthropic",
    "Cohere",
    "Hugging Face",
    "Stability AI",
]


async def create(
    http: httpx.AsyncClient, companies: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    body = {
        "searchQuery": {"role": "engineer", "location": "Berlin"},
        "companies": companies or COMPANIES,
        **extra,
    }
    response = await http.post(BASE, json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


@ASYNC
class TestSeedBehaviour:
    async def test_creation_with_ten_companies_makes_two_batches_of_five(
        self, client: httpx.AsyncClient
    ) -> None:
        created = await create(client, batchSize=5)
        assert created["totalBatches"] == 2
        assert created["firstBatch"] == COMPANIES[:5]
        assert created["batchSize"] == 5
        assert re.fullmatch(r"search_\d+_[0-9a-f]{8}", created["sessionId"])

    async def test_progressive_loading_to_exhaustion(self, client: httpx.AsyncClient) -> None:
        created = await create(client, batchSize=3)
        sid = created["sessionId"]
        batches = [created["firstBatch"]]
        while True:
            response = await client.post(f"{BASE}/{sid}/next-batch")
            if response.status_code == 404:
                assert response.json()["error"]["code"] == "batch_exhausted"
                break
            body = response.json()
            assert body["batchIndex"] == len(batches)
            batches.append(body["batch"])
        assert batches == [COMPANIES[0:3], COMPANIES[3:6], COMPANIES[6:9], COMPANIES[9:10]]

    async def test_dedup_keeps_first_discovery_order(self, client: httpx.AsyncClient) -> None:
        sid = (await create(client))["sessionId"]
        first = (
            await client.post(f"{BASE}/{sid}/discovered", json={"employeeIds": [1, 2, 3]})
        ).json()
        second = (
            await client.post(f"{BASE}/{sid}/discovered", json={"employeeIds": [3, 4, 5, 4]})
        ).json()
        assert first == {"added": 3, "totalDiscovered": 3}
        assert second == {"added": 2, "totalDiscovered": 5}
        unfetched = (await client.get(f"{BASE}/{sid}/unfetched", params={"count": 20})).json()
        assert unfetched == {"ids": [1, 2, 3, 4, 5], "remaining": 5}


@ASYNC
class TestFetchedAndStats:
    async def test_fetched_ids_leave_unfetched_and_count_cache_hits(
        self, client: httpx.AsyncClient
    ) -> None:
        sid = (await create(client))["sessionId"]
        await client.post(f"{BASE}/{sid}/discovered", json={"employeeIds": [10, 11, 12, 13]})
        marked = await client.post(
            f"{BASE}/{sid}/fetched", json={"employeeIds": [11, 10], "cacheHits": 1}
        )
        assert marked.json() == {"marked": 2, "profilesFetched": 2}
        assert (await client.get(f"{BASE}/{sid}/unfetched", params={"count": 1})).json() == {
            "ids": [12],
            "remaining": 2,
        }
        stats = (await client.get(f"{BASE}/{sid}/stats")).json()
        assert (stats["totalDiscovered"], stats["profilesFetched"], stats["unfetched"]) == (4, 2, 2)
        assert (stats["cacheHits"], stats["cacheMisses"], stats["cacheHitRate"]) == (1, 1, 0.5)
        assert (stats["batchIndex"], stats["totalBatches"], stats["batchesRemaining"]) == (0, 2, 1)

    async def test_ids_never_discovered_are_422_and_nothing_is_marked(
        self, client: httpx.AsyncClient
    ) -> None:
        sid = (await create(client))["sessionId"]
        await client.post(f"{BASE}/{sid}/discovered", json={"employeeIds": [1]})
        response = await client.post(f"{BASE}/{sid}/fetched", json={"employeeIds": [1, 99]})
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "ids_not_discovered"
        assert response.json()["error"]["details"]["ids"] == [99]
        assert (await client.get(f"{BASE}/{sid}/stats")).json()["profilesFetched"] == 0

    async def test_every_call_updates_last_accessed(self, client: httpx.AsyncClient) -> None:
        sid = (await create(client))["sessionId"]
        before = (await client.get(f"{BASE}/{sid}/stats")).json()["lastAccessed"]
        await client.get(f"{BASE}/{sid}/unfetched")
        after = (await client.get(f"{BASE}/{sid}/stats")).json()["lastAccessed"]
        assert after > before

    @pytest.mark.parametrize(
        "body",
        [
            {"searchQuery": {}, "companies": []},
            {"searchQuery": {}, "companies": ["a"], "batchSize": 0},
            {"searchQuery": {}, "companies": ["a"], "batchSize": 101},
            {"companies": ["a"]},
            {"searchQuery": {}, "companies": ["  "]},
        ],
    )
    async def test_invalid_creation_is_422(
        self, client: httpx.AsyncClient, body: dict[str, Any]
    ) -> None:
        response = await client.post(BASE, json=body)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "validation_error"


@ASYNC
class TestOwnershipAndClearing:
    async def test_another_owners_session_is_404(
        self, client: httpx.AsyncClient, other_client: httpx.AsyncClient, settings: Settings
    ) -> None:
        sid = (await create(client))["sessionId"]
        await start_session(other_client)
        for call in (
            other_client.post(f"{BASE}/{sid}/next-batch"),
            other_client.get(f"{BASE}/{sid}/stats"),
            other_client.delete(f"{BASE}/{sid}"),
        ):
            response = await call
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "search_session_not_found"
        user = make_user(settings)
        assert (await client.get(f"{BASE}/{sid}/stats", headers=user.headers)).status_code == 404

    async def test_list_is_most_recent_first_with_a_summary(
        self, client: httpx.AsyncClient
    ) -> None:
        older = (await create(client))["sessionId"]
        newer = (await create(client))["sessionId"]
        await client.get(f"{BASE}/{older}/stats")
        listed = (await client.get(BASE)).json()
        assert [row["sessionId"] for row in listed[:2]] == [older, newer]
        assert listed[0]["querySummary"] == "role: engineer · location: Berlin"

    async def test_cleared_session_is_inactive_and_out_of_the_list(
        self, client: httpx.AsyncClient
    ) -> None:
        sid = (await create(client))["sessionId"]
        assert (await client.delete(f"{BASE}/{sid}")).status_code == 204
        response = await client.post(f"{BASE}/{sid}/next-batch")
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "session_inactive"
        assert sid not in [row["sessionId"] for row in (await client.get(BASE)).json()]

    async def test_clear_all_returns_the_count(self, client: httpx.AsyncClient) -> None:
        await create(client)
        await create(client)
        assert (await client.delete(BASE)).json() == {"cleared": 2}
        assert (await client.get(BASE)).json() == []

    async def test_reads_without_identity_create_nothing(self, client: httpx.AsyncClient) -> None:
        response = await client.get(BASE)
        assert response.json() == []
        assert "set-cookie" not in response.headers

    async def test_search_sessions_move_to_the_user_on_claim(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        sid = (await create(client))["sessionId"]
        user = make_user(settings)
        assert (
            await client.post("/api/v1/sessions/claim", headers=user.headers)
        ).status_code == 200
        client.cookies.clear()
        mine = await client.get(f"{BASE}/{sid}/stats", headers=user.headers)
        assert mine.status_code == 200

    async def test_deleting_the_session_deletes_its_search_sessions(
        self, client: httpx.AsyncClient, rest: httpx.AsyncClient
    ) -> None:
        sid = (await create(client))["sessionId"]
        await client.delete("/api/v1/sessions/me")
        assert (await rest.get("/search_sessions", params={"id": f"eq.{sid}"})).json() == []


@pytest_asyncio.fixture(loop_scope="session")
async def pair(
    two_services: tuple[ServiceProcess, ServiceProcess],
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    first, second = two_services
    options: dict[str, Any] = {
        "headers": {"Origin": SPA_ORIGIN},
        "timeout": 30,
        "limits": client_limits(),
    }
    async with (
        httpx.AsyncClient(base_url=first.base_url, **options) as a,
        httpx.AsyncClient(base_url=second.base_url, **options) as b,
    ):
        yield a, b


@ASYNC
class TestConcurrencyAcrossTwoProcesses:
    async def test_20_concurrent_next_batch_calls_hand_out_each_batch_once(
        self, pair: tuple[httpx.AsyncClient, httpx.AsyncClient]
    ) -> None:
        a, b = pair
        companies = [f"company-{i}" for i in range(50)]
        created = (
            await a.post(
                BASE, json={"searchQuery": {"q": 1}, "companies": companies, "batchSize": 5}
            )
        ).json()
        assert created["totalBatches"] == 10
        cookie = {"Cookie": f"autopilot_session={a.cookies['autopilot_session']}"}
        results = await asyncio.gather(
            *(
                (a if i % 2 else b).post(
                    f"{BASE}/{created['sessionId']}/next-batch", headers=cookie
                )
                for i in range(20)
            )
        )
        handed = sorted(r.json()["batchIndex"] for r in results if r.status_code == 200)
        exhausted = [r for r in results if r.status_code == 404]
        assert handed == list(range(1, 10))
        assert len(exhausted) == 11
        assert all(r.json()["error"]["code"] == "batch_exhausted" for r in exhausted)

    async def test_20_concurrent_discovered_calls_keep_every_id_once(
        self, pair: tuple[httpx.AsyncClient, httpx.AsyncClient]
    ) -> None:
        a, b = pair
        a.cookies.clear()
        sid = (await a.post(BASE, json={"searchQuery": {}, "companies": ["x"]})).json()["sessionId"]
        cookie = {"Cookie": f"autopilot_session={a.cookies['autopilot_session']}"}
        batches = [list(range(i * 10, i * 10 + 30)) for i in range(20)]  # heavy overlap
        results = await asyncio.gather(
            *(
                (a if i % 2 else b).post(
                    f"{BASE}/{sid}/discovered", headers=cookie, json={"employeeIds": ids}
                )
                for i, ids in enumerate(batches)
            )
        )
        assert all(r.status_code == 200 for r in results)
        assert sum(r.json()["added"] for r in results) == 220
        everything = (
            await a.get(f"{BASE}/{sid}/unfetched", params={"count": 1000}, headers=cookie)
        ).json()["ids"]
        assert sorted(everything) == list(range(220))
        assert len(everything) == len(set(everything))


def key() -> dict[str, str]:
    return {"Idempotency-Key": uuid.uuid4().hex}


@ASYNC
class TestIdempotencyKeys:
    """A 503 can hide a committed write; a retry with the same key must not do it again."""

    async def test_next_batch_retried_with_its_key_returns_the_same_batch(
        self, client: httpx.AsyncClient
    ) -> None:
        sid = (await create(client, batchSize=3))["sessionId"]
        first_key, second_key = key(), key()
        first = await client.post(f"{BASE}/{sid}/next-batch", headers=first_key)
        retry = await client.post(f"{BASE}/{sid}/next-batch", headers=first_key)
        assert first.status_code == retry.status_code == 200
        assert retry.json() == first.json()
        assert first.json()["batchIndex"] == 1
        assert "idempotent-replayed" not in first.headers
        assert retry.headers["Idempotent-Replayed"] == "true"
        second = await client.post(f"{BASE}/{sid}/next-batch", headers=second_key)
        assert second.json()["batchIndex"] == 2
        assert second.json()["batch"] == COMPANIES[6:9]
        assert (await client.get(f"{BASE}/{sid}/stats")).json()["batchIndex"] == 2

    async def test_fetched_retried_with_its_key_returns_the_first_outcome_and_counts_once(
        self, client: httpx.AsyncClient
    ) -> None:
        sid = (await create(client))["sessionId"]
        await client.post(f"{BASE}/{sid}/discovered", json={"employeeIds": [1, 2, 3]})
        body = {"employeeIds": [1, 2], "cacheHits": 1}
        same = key()
        first = await client.post(f"{BASE}/{sid}/fetched", json=body, headers=same)
        retry = await client.post(f"{BASE}/{sid}/fetched", json=body, headers=same)
        assert first.json() == retry.json() == {"marked": 2, "profilesFetched": 2}
        stats = (await client.get(f"{BASE}/{sid}/stats")).json()
        assert (stats["cacheHits"], stats["cacheMisses"]) == (1, 1)

    async def test_the_same_key_with_another_request_is_422_and_changes_nothing(
        self, client: httpx.AsyncClient
    ) -> None:
        sid = (await create(client))["sessionId"]
        other = (await create(client))["sessionId"]
        await client.post(f"{BASE}/{sid}/discovered", json={"employeeIds": [1, 2]})
        same = key()
        assert (
            await client.post(f"{BASE}/{sid}/fetched", json={"employeeIds": [1]}, headers=same)
        ).status_code == 200
        reused = await client.post(f"{BASE}/{sid}/fetched", json={"employeeIds": [2]}, headers=same)
        assert reused.status_code == 422
        assert reused.json()["error"]["code"] == "idempotency_key_reused"
        assert (await client.get(f"{BASE}/{sid}/stats")).json()["profilesFetched"] == 1

        batch_key = key()
        assert (await client.post(f"{BASE}/{sid}/next-batch", headers=batch_key)).status_code == 200
        elsewhere = await client.post(f"{BASE}/{other}/next-batch", headers=batch_key)
        assert elsewhere.status_code == 422
        assert elsewhere.json()["error"]["code"] == "idempotency_key_reused"
        assert (await client.get(f"{BASE}/{other}/stats")).json()["batchIndex"] == 0

    async def test_keys_belong_to_one_caller_and_one_operation(
        self, client: httpx.AsyncClient, other_client: httpx.AsyncClient
    ) -> None:
        mine = (await create(client))["sessionId"]
        theirs = (await create(other_client))["sessionId"]
        shared = key()
        assert (await client.post(f"{BASE}/{mine}/next-batch", headers=shared)).status_code == 200
        # Another caller with the same key gets its own outcome, not a replay or a 422.
        response = await other_client.post(f"{BASE}/{theirs}/next-batch", headers=shared)
        assert response.status_code == 200
        assert "idempotent-replayed" not in response.headers
        # The same caller and key on another operation is another request.
        await client.post(f"{BASE}/{mine}/discovered", json={"employeeIds": [7]})
        fetched = await client.post(
            f"{BASE}/{mine}/fetched", json={"employeeIds": [7]}, headers=shared
        )
        assert fetched.status_code == 200
        assert fetched.json() == {"marked": 1, "profilesFetched": 1}

    async def test_a_failed_call_records_nothing_so_its_retry_runs_again(
        self, client: httpx.AsyncClient
    ) -> None:
        sid = (await create(client))["sessionId"]
        same = key()
        body = {"employeeIds": [99]}
        refused = await client.post(f"{BASE}/{sid}/fetched", json=body, headers=same)
        assert refused.json()["error"]["code"] == "ids_not_discovered"
        await client.post(f"{BASE}/{sid}/discovered", json=body)
        retried = await client.post(f"{BASE}/{sid}/fetched", json=body, headers=same)
        assert retried.status_code == 200
        assert retried.json() == {"marked": 1, "profilesFetched": 1}

    async def test_a_replay_outlives_the_clearing_of_the_search_session(
        self, client: httpx.AsyncClient
    ) -> None:
        sid = (await create(client))["sessionId"]
        same = key()
        first = await client.post(f"{BASE}/{sid}/next-batch", headers=same)
        await client.delete(f"{BASE}/{sid}")
        retry = await client.post(f"{BASE}/{sid}/next-batch", headers=same)
        assert retry.status_code == 200
        assert retry.json() == first.json()

    async def test_an_expired_key_is_a_new_request_and_the_cleanup_deletes_it(
        self, client: httpx.AsyncClient, rest: httpx.AsyncClient, settings: Settings
    ) -> None:
        sid = (await create(client, batchSize=3))["sessionId"]
        same = key()
        assert (await client.post(f"{BASE}/{sid}/next-batch", headers=same)).json()[
            "batchIndex"
        ] == 1
        stored = (
            await rest.get("/idempotency_keys", params={"key": f"eq.{same['Idempotency-Key']}"})
        ).json()
        assert len(stored) == 1
        assert stored[0]["operation"] == "search_sessions.next_batch"
        expires = datetime.fromisoformat(stored[0]["expires_at"])
        created = datetime.fromisoformat(stored[0]["created_at"])
        assert (expires - created).total_seconds() == settings.idempotency_key_ttl_seconds

        await rest.patch(
            "/idempotency_keys",
            params={"key": f"eq.{same['Idempotency-Key']}"},
            json={"expires_at": "2000-01-01T00:00:00Z"},
        )
        again = await client.post(f"{BASE}/{sid}/next-batch", headers=same)
        assert again.json()["batchIndex"] == 2
        assert "idempotent-replayed" not in again.headers

        other = key()
        await client.post(f"{BASE}/{sid}/next-batch", headers=other)
        await rest.patch(
            "/idempotency_keys",
            params={"key": f"eq.{other['Idempotency-Key']}"},
            json={"expires_at": "2000-01-01T00:00:00Z"},
        )
        admin = make_user(settings, admin=True)
        assert (
            await client.post("/api/v1/admin/sessions/cleanup", headers=admin.headers)
        ).status_code == 200
        left = (
            await rest.get(
                "/idempotency_keys",
                params={"key": f"in.({same['Idempotency-Key']},{other['Idempotency-Key']})"},
            )
        ).json()
        assert [row["key"] for row in left] == [same["Idempotency-Key"]]

    async def test_deleting_the_session_deletes_its_keys_and_their_outcomes(
        self, client: httpx.AsyncClient, rest: httpx.AsyncClient
    ) -> None:
        sid = (await create(client))["sessionId"]
        same = key()
        await client.post(f"{BASE}/{sid}/next-batch", headers=same)
        query = {"key": f"eq.{same['Idempotency-Key']}"}
        assert len((await rest.get("/idempotency_keys", params=query)).json()) == 1
        await client.delete("/api/v1/sessions/me")
        assert (await rest.get("/idempotency_keys", params=query)).json() == []

    @pytest.mark.parametrize("value", ["", "k" * 201])
    async def test_a_malformed_key_is_422(self, client: httpx.AsyncClient, value: str) -> None:
        sid = (await create(client))["sessionId"]
        response = await client.post(f"{BASE}/{sid}/next-batch", headers={"Idempotency-Key": value})
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "validation_error"
        assert (await client.get(f"{BASE}/{sid}/stats")).json()["batchIndex"] == 0

    async def test_openapi_declares_the_header(self, client: httpx.AsyncClient) -> None:
        paths = (await client.get("/openapi.json")).json()["paths"]
        for operation in ("next-batch", "fetched"):
            post = paths[f"{BASE}/{{session_id}}/{operation}"]["post"]
            headers = [p for p in post["parameters"] if p["in"] == "header"]
            assert [p["name"] for p in headers] == ["Idempotency-Key"]


@ASYNC
async def test_concurrent_retries_with_one_key_across_two_processes_take_one_batch(
    pair: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    a, b = pair
    a.cookies.clear()
    sid = (await create(a, batchSize=1))["sessionId"]
    headers = {"Cookie": f"autopilot_session={a.cookies['autopilot_session']}", **key()}
    results = await asyncio.gather(
        *((a if i % 2 else b).post(f"{BASE}/{sid}/next-batch", headers=headers) for i in range(10))
    )
    assert [r.status_code for r in results] == [200] * 10
    assert {r.json()["batchIndex"] for r in results} == {1}
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in results) == 9
    stats = await a.get(f"{BASE}/{sid}/stats", headers=headers)
    assert stats.json()["batchIndex"] == 1
