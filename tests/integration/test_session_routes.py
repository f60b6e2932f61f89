"""/api/v1/sessions through HTTP against the real data plane."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from autopilot_api.core.config import Settings
from autopilot_api.local.dataplane import LocalDataPlane
from tests.conftest import browser_client, make_settings, running_app
from tests.fixtures.factories import answer, start_session

ASYNC = pytest.mark.asyncio(loop_scope="session")
COOKIE = "autopilot_session"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def stored_session(rest: httpx.AsyncClient, token: str) -> dict[str, Any] | None:
    response = await rest.get("/sessions", params={"token_hash": f"eq.{token_hash(token)}"})
    response.raise_for_status()
    rows = response.json()
    return rows[0] if rows else None


async def session_count(rest: httpx.AsyncClient) -> int:
    response = await rest.head("/sessions", headers={"Prefer": "count=exact"})
    return int(response.headers["Content-Range"].split("/")[1])


async def patch_session_row(rest: httpx.AsyncClient, token: str, **values: Any) -> None:
    response = await rest.patch(
        "/sessions", params={"token_hash": f"eq.{token_hash(token)}"}, json=values
    )
    response.raise_for_status()


def set_cookie_header(response: httpx.Response) -> str:
    headers = [v for k, v in response.headers.multi_items() if k == "set-cookie"]
    assert headers, "expected a Set-Cookie header"
    return headers[-1]


@ASYNC
class TestCreateSession:
    async def test_creates_session_with_cookie_attributes(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        response = await client.post("/api/v1/sessions")
        assert response.status_code == 201
        cookie = set_cookie_header(response)
        assert cookie.startswith(f"{COOKIE}=")
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert {"httponly", "secure", "path", "max-age", "samesite"} <= attributes
        assert "samesite=lax" in cookie.lower()
        max_age = int(cookie.lower().split("max-age=")[1].split(";")[0])
        assert settings.session_cookie_max_age - 60 <= max_age <= settings.session_cookie_max_age
        assert response.headers["ETag"] == '"v1"'
        assert response.json()["phase"] == "discovery"

    async def test_token_is_64_chars_and_stored_only_as_its_hash(
        self, client: httpx.AsyncClient, rest: httpx.AsyncClient
    ) -> None:
        token = await start_session(client)
        assert len(token) == 64
        row = await stored_session(rest, token)
        assert row is not None
        assert row["token_hash"] == token_hash(token)
        assert token not in str(row)

    async def test_second_post_with_valid_cookie_returns_same_session(
        self, client: httpx.AsyncClient
    ) -> None:
        first = await client.post("/api/v1/sessions")
        second = await client.post("/api/v1/sessions")
        assert second.status_code == 200
        assert second.json()["id"] == first.json()["id"]

    async def test_client_chosen_token_is_never_adopted(
        self, app: FastAPI, rest: httpx.AsyncClient
    ) -> None:
        chosen = "A" * 64
        async with browser_client(app, cookies={COOKIE: chosen}) as http:
            response = await http.post("/api/v1/sessions")
            assert response.status_code == 201
            assert response.cookies.get(COOKIE) != chosen
        assert await stored_session(rest, chosen) is None

    async def test_samesite_none_forces_secure(self, data_plane: LocalDataPlane) -> None:
        settings = make_settings(data_plane, session_cookie_samesite="none")
        async with running_app(settings) as other_app, browser_client(other_app) as http:
            cookie = set_cookie_header(await http.post("/api/v1/sessions")).lower()
        assert "samesite=none" in cookie
        assert "secure" in cookie


@ASYNC
class TestCreateSessionRateLimit:
    async def test_creation_beyond_the_hourly_limit_is_429_with_retry_after(
        self, data_plane: LocalDataPlane
    ) -> None:
        settings = make_settings(data_plane, session_create_limit_per_hour=3)
        async with running_app(settings) as limited_app:
            statuses = []
            for _ in range(4):
                async with browser_client(limited_app) as http:
                    response = await http.post("/api/v1/sessions")
                    statuses.append(response.status_code)
            assert statuses == [201, 201, 201, 429]
            assert int(response.headers["Retry-After"]) > 0
            assert response.json()["error"]["code"] == "rate_limited"
            assert COOKIE not in response.cookies


@ASYNC
class TestGetMySession:
    async def test_without_cookie_is_404_and_creates_nothing(
        self, client: httpx.AsyncClient, rest: httpx.AsyncClient
    ) -> None:
        before = await session_count(rest)
        response = await client.get("/api/v1/sessions/me")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "session_not_found"
        assert "set-cookie" not in response.headers
        assert await session_count(rest) == before

    async def test_unknown_cookie_is_404_and_cleared(self, app: FastAPI) -> None:
        async with browser_client(app, cookies={COOKIE: "B" * 64}) as http:
            response = await http.get("/api/v1/sessions/me")
        assert response.status_code == 404
        cleared = set_cookie_header(response)
        assert cleared.startswith(f'{COOKIE}=""') or cleared.startswith(f"{COOKIE}=;")
        assert "max-age=0" in cleared.lower()

    async def test_returns_session_with_etag(self, client: httpx.AsyncClient) -> None:
        await start_session(client)
        response = await client.get("/api/v1/sessions/me")
        assert response.status_code == 200
        assert response.headers["ETag"] == f'"v{response.json()["version"]}"'

    async def test_expired_session_is_absent_and_cleared(
        self, client: httpx.AsyncClient, rest: httpx.AsyncClient
    ) -> None:
        token = await start_session(client)
        past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        await patch_session_row(rest, token, expires_at=past)
        response = await client.get("/api/v1/sessions/me")
        assert response.status_code == 404
        assert "max-age=0" in set_cookie_header(response).lower()

    async def test_activity_slides_expiry_and_reissues_cookie_at_most_daily(
        self, client: httpx.AsyncClient, rest: httpx.AsyncClient, settings: Settings
    ) -> None:
        token = await start_session(client)
        now = datetime.now(UTC)
        await patch_session_row(
            rest,
            token,
            last_seen_at=(now - timedelta(minutes=5)).isoformat(),
            expires_at=(now + timedelta(days=10)).isoformat(),
        )
        slid = await client.get("/api/v1/sessions/me")
        cookie = set_cookie_header(slid).lower()
        max_age = int(cookie.split("max-age=")[1].split(";")[0])
        assert max_age > settings.session_cookie_max_age - 120
        row = await stored_session(rest, token)
        assert row is not None
        assert datetime.fromisoformat(row["expires_at"]) > now + timedelta(days=29)

        # Seen again minutes later: last_seen_at moves, the expiry (and cookie) do not.
        await patch_session_row(rest, token, last_seen_at=(now - timedelta(minutes=5)).isoformat())
        again = await client.get("/api/v1/sessions/me")
        assert "set-cookie" not in again.headers

    async def test_last_seen_is_written_at_most_once_a_minute(
        self, client: httpx.AsyncClient, rest: httpx.AsyncClient
    ) -> None:
        token = await start_session(client)
        before = await stored_session(rest, token)
        await client.get("/api/v1/sessions/me")
        after = await stored_session(rest, token)
        assert before is not None
        assert after is not None
        assert after["last_seen_at"] == before["last_seen_at"]


@ASYNC
class TestUpdateMySession:
    async def test_answers_merge_per_key_and_are_enriched(self, client: httpx.AsyncClient) -> None:
        await start_session(client)
        await client.put(
            "/api/v1/sessions/me", json={"answers": {"facility_type": answer("cold storage")}}
        )
        response = await client.put(
            "/api/v1/sessions/me", json={"answers": {"sku_count": answer(1200)}}
        )
        assert response.status_code == 200
        answers = response.json()["answers"]
        assert set(answers) == {"facility_type", "sku_count"}
        stored = answers["sku_count"]
        assert stored["value"] == 1200
        assert stored["source"] == "user"
        assert stored["questionId"] == 9
        assert stored["group"] == "operations"
        assert stored["label"].endswith("?")
        assert stored["updatedAt"]

    async def test_null_removes_an_answer_and_keeps_others(self, client: httpx.AsyncClient) -> None:
        await start_session(client)
        await client.put(
            "/api/v1/sessions/me",
            json={
                "answers": {"facility_type": answer("manufacturing plant"), "sku_count": answer(5)}
            },
        )
        response = await client.put("/api/v1/sessions/me", json={"answers": {"sku_count": None}})
        assert set(response.json()["answers"]) == {"facility_type"}

    async def test_unknown_question_key_is_422_and_changes_nothing(
        self, client: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        before = (await client.get("/api/v1/sessions/me")).json()
        response = await client.put(
            "/api/v1/sessions/me",
            json={"answers": {"facility_type": answer("x"), "favourite_colour": answer("red")}},
        )
        assert response.status_code == 422
        body = response.json()["error"]
        assert body["code"] == "validation_error"
        assert body["category"] == "user_fixable"
        assert "favourite_colour" in str(body["details"])
        after = (await client.get("/api/v1/sessions/me")).json()
        assert after["answers"] == before["answers"]
        assert after["version"] == before["version"]

    @pytest.mark.parametrize(
        "body",
        [
            {"unknownField": 1},
            {"phase": "checkout"},
            {"phase": None},
            {"roiInputs": {"utilization": 1.5}},
            {"roiInputs": {"laborRate": -1}},
            {"answers": {"facility_type": {"value": "x", "source": "extracted"}}},
            {"answers": {"facility_type": {"value": "   "}}},
            {"selectedProductIds": ["not-a-uuid"]},
        ],
    )
    async def test_invalid_bodies_are_422_envelopes(
        self, client: httpx.AsyncClient, body: dict[str, Any]
    ) -> None:
        await start_session(client)
        response = await client.put("/api/v1/sessions/me", json=body)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "validation_error"

    async def test_roi_inputs_round_trip_with_provenance(self, client: httpx.AsyncClient) -> None:
        await start_session(client)
        response = await client.put(
            "/api/v1/sessions/me", json={"roiInputs": {"laborRate": 31.5, "utilization": 0.8}}
        )
        body = response.json()
        assert body["roiInputs"]["laborRate"] == 31.5
        assert body["roiInputs"]["utilization"] == 0.8
        assert body["roiInputs"]["manualMonthlySpend"] is None
        assert body["roiInputDetails"]["laborRate"]["source"] == "user"
        removed = await client.put("/api/v1/sessions/me", json={"roiInputs": {"laborRate": None}})
        assert removed.json()["roiInputs"]["laborRate"] is None
        assert removed.json()["roiInputs"]["utilization"] == 0.8

    async def test_without_session_creates_one_with_cookie(self, client: httpx.AsyncClient) -> None:
        response = await client.put(
            "/api/v1/sessions/me", json={"answers": {"facility_type": answer("cold storage")}}
        )
        assert response.status_code == 201
        assert response.cookies.get(COOKIE)
        assert (await client.get("/api/v1/sessions/me")).json()["answers"]["facility_type"][
            "value"
        ] == "cold storage"

    async def test_stale_if_match_is_412_and_changes_nothing(
        self, client: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        first = await client.put("/api/v1/sessions/me", json={"timeframe": "Q1"})
        etag = first.headers["ETag"]
        await client.put("/api/v1/sessions/me", json={"timeframe": "Q2"})
        stale = await client.put(
            "/api/v1/sessions/me", json={"timeframe": "Q3"}, headers={"If-Match": etag}
        )
        assert stale.status_code == 412
        assert stale.json()["error"]["code"] == "precondition_failed"
        assert (await client.get("/api/v1/sessions/me")).json()["timeframe"] == "Q2"

    async def test_current_if_match_succeeds_and_bumps_etag(
        self, client: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        etag = (await client.get("/api/v1/sessions/me")).headers["ETag"]
        response = await client.put(
            "/api/v1/sessions/me", json={"timeframe": "soon"}, headers={"If-Match": etag}
        )
        assert response.status_code == 200
        assert response.headers["ETag"] != etag

    async def test_if_match_without_session_is_412_and_creates_nothing(
        self, client: httpx.AsyncClient, rest: httpx.AsyncClient
    ) -> None:
        before = await session_count(rest)
        response = await client.put(
            "/api/v1/sessions/me", json={"timeframe": "x"}, headers={"If-Match": '"v1"'}
        )
        assert response.status_code == 412
        assert await session_count(rest) == before

    async def test_phase_moves_one_step_forward_or_back(self, client: httpx.AsyncClient) -> None:
        await start_session(client)
        skipped = await client.put("/api/v1/sessions/me", json={"phase": "greenlight"})
        assert skipped.status_code == 409
        error = skipped.json()["error"]
        assert error["code"] == "invalid_phase_transition"
        assert error["details"]["allowed"] == ["discovery", "roi"]
        assert (await client.put("/api/v1/sessions/me", json={"phase": "roi"})).status_code == 200
        forward = await client.put("/api/v1/sessions/me", json={"phase": "greenlight"})
        assert forward.status_code == 200
        back = await client.put("/api/v1/sessions/me", json={"phase": "discovery"})
        assert back.json()["phase"] == "discovery"


@ASYNC
class TestCsrfAndCors:
    async def test_cookie_write_without_origin_is_refused(self, app: FastAPI) -> None:
        async with browser_client(app) as http:
            await start_session(http)
            del http.headers["Origin"]
            response = await http.put("/api/v1/sessions/me", json={"timeframe": "x"})
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "csrf_origin_rejected"

    async def test_cookie_write_from_unlisted_origin_is_refused(self, app: FastAPI) -> None:
        async with browser_client(app) as http:
            await start_session(http)
            response = await http.put(
                "/api/v1/sessions/me",
                json={"timeframe": "x"},
                headers={"Origin": "https://evil.example"},
            )
        assert response.status_code == 403

    async def test_write_from_the_apis_own_origin_is_accepted(self, app: FastAPI) -> None:
        async with browser_client(app, headers={"Origin": "https://testserver"}) as http:
            response = await http.put("/api/v1/sessions/me", json={"timeframe": "x"})
        assert response.status_code == 201

    async def test_cors_preflight_allows_listed_origin_with_credentials(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.options(
            "/api/v1/sessions/me",
            headers={
                "Access-Control-Request-Method": "PUT",
                "Access-Control-Request-Headers": "if-match,content-type",
            },
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "http://spa.test"
        assert response.headers["access-control-allow-credentials"] == "true"
        assert "if-match" in response.headers["access-control-allow-headers"].lower()

    async def test_cors_denies_unlisted_origin(self, client: httpx.AsyncClient) -> None:
        response = await client.options(
            "/api/v1/sessions/me",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "PUT"},
        )
        assert "access-control-allow-origin" not in response.headers
        simple = await client.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in simple.headers

    async def test_etag_and_retry_after_are_exposed(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/healthz")
        exposed = response.headers["access-control-expose-headers"].lower()
        assert {"etag", "retry-after", "x-request-id"} <= {h.strip() for h in exposed.split(",")}


@ASYNC
class TestDeleteMySession:
    async def test_delete_removes_row_and_clears_cookie(
        self, client: httpx.AsyncClient, rest: httpx.AsyncClient
    ) -> None:
        token = await start_session(client)
        response = await client.delete("/api/v1/sessions/me")
        assert response.status_code == 204
        assert "max-age=0" in set_cookie_header(response).lower()
        assert await stored_session(rest, token) is None
        assert (await client.get("/api/v1/sessions/me")).status_code == 404

    async def test_delete_without_session_is_404(self, client: httpx.AsyncClient) -> None:
        response = await client.delete("/api/v1/sessions/me")
        assert response.status_code == 404
