"""Signing in before claiming (issue 13, item 1), through the HTTP API.

Between sign-up and the claim the SPA holds both the anonymous cookie and a bearer token
(`credentials: 'include'` sends the cookie with every call). The rule: a caller with a
bearer token never creates or replaces an anonymous session. On /sessions/* a bearer
caller with a live cookie acts on that session, so the claim still finds every answer;
everywhere else a bearer caller is the user alone.
"""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from autopilot_api.core.config import Settings
from tests.conftest import browser_client
from tests.fixtures.factories import answer, make_user, start_session

ASYNC = pytest.mark.asyncio(loop_scope="session")
COOKIE = "autopilot_session"

BEFORE_SIGN_IN: dict[str, Any] = {
    "facility_type": "cold storage",
    "facility_size_sqft": 120_000,
    "number_of_sites": 2,
}
AFTER_SIGN_IN: dict[str, Any] = {
    "sku_count": 1_800,
    "primary_goal": "reduce labor cost",
}

SEARCH = {"searchQuery": {"role": "engineer"}, "companies": ["Acme", "Globex"]}


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def session_count(rest: httpx.AsyncClient) -> int:
    response = await rest.head("/sessions", headers={"Prefer": "count=exact"})
    return int(response.headers["Content-Range"].split("/")[1])


async def stored_session(rest: httpx.AsyncClient, token: str) -> dict[str, Any]:
    rows = (await rest.get("/sessions", params={"token_hash": f"eq.{token_hash(token)}"})).json()
    assert len(rows) == 1
    return dict(rows[0])


def set_cookies(response: httpx.Response) -> list[str]:
    return [v for k, v in response.headers.multi_items() if k == "set-cookie"]


async def answered_anonymously(http: httpx.AsyncClient) -> str:
    """A visitor's session with the answers given before signing in; the cookie token."""
    token = await start_session(http)
    written = await http.put(
        "/api/v1/sessions/me",
        json={"answers": {key: answer(value) for key, value in BEFORE_SIGN_IN.items()}},
    )
    assert written.status_code == 200, written.text
    return token


@ASYNC
class TestSigningInBeforeClaiming:
    async def test_answers_before_and_after_sign_in_all_reach_the_profile(
        self, client: httpx.AsyncClient, settings: Settings, rest: httpx.AsyncClient
    ) -> None:
        token = await answered_anonymously(client)
        user = make_user(settings)
        sessions_before = await session_count(rest)

        # Signed in, not yet claimed: the SPA sends the bearer and the browser the cookie.
        resumed = await client.post("/api/v1/sessions", headers=user.headers)
        jar = [client.cookies.get(COOKIE)]
        written = await client.put(
            "/api/v1/sessions/me",
            headers=user.headers,
            json={"answers": {key: answer(value) for key, value in AFTER_SIGN_IN.items()}},
        )
        jar.append(client.cookies.get(COOKIE))
        read = await client.get("/api/v1/sessions/me", headers=user.headers)
        jar.append(client.cookies.get(COOKIE))
        sessions_after = await session_count(rest)

        claimed = await client.post("/api/v1/sessions/claim", headers=user.headers)
        assert claimed.status_code == 200, claimed.text
        profile = (await client.get("/api/v1/discovery", headers=user.headers)).json()
        given = {**BEFORE_SIGN_IN, **AFTER_SIGN_IN}
        stored = {key: entry["value"] for key, entry in profile["answers"].items()}
        reached = {key for key, value in given.items() if stored.get(key) == value}
        assert reached == set(given), f"{len(reached)} of {len(given)} answers reached the profile"

        # POST /sessions resumes the session under a new token (README "Signing in and
        # claiming"); the other calls keep the cookie as it is.
        rotated = jar[0]
        assert rotated is not None
        assert rotated != token
        assert jar == [rotated] * 3
        assert sessions_after == sessions_before

        assert resumed.status_code == 200
        assert len(set_cookies(resumed)) == 1
        assert written.status_code == 200
        assert set_cookies(written) == []
        assert read.status_code == 200
        session_id = (await stored_session(rest, rotated))["id"]
        assert resumed.json()["id"] == written.json()["id"] == read.json()["id"] == session_id
        assert set(read.json()["answers"]) == set(given)
        assert claimed.json()["alreadyClaimed"] is False
        # The claim, and only the claim, ends the anonymous session's cookie.
        assert client.cookies.get(COOKIE) is None

    async def test_put_with_bearer_keeps_the_if_match_rules(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        await answered_anonymously(client)
        user = make_user(settings)
        etag = (await client.get("/api/v1/sessions/me", headers=user.headers)).headers["ETag"]
        fresh = await client.put(
            "/api/v1/sessions/me",
            headers={**user.headers, "If-Match": etag},
            json={"timeframe": "this quarter"},
        )
        assert fresh.status_code == 200, fresh.text
        assert fresh.headers["ETag"] != etag
        stale = await client.put(
            "/api/v1/sessions/me",
            headers={**user.headers, "If-Match": etag},
            json={"timeframe": "next year"},
        )
        assert stale.status_code == 412
        assert stale.json()["error"]["code"] == "precondition_failed"
        current = (await client.get("/api/v1/sessions/me", headers=user.headers)).json()
        assert current["timeframe"] == "this quarter"

    async def test_complete_and_delete_with_bearer_act_on_the_anonymous_session(
        self, client: httpx.AsyncClient, settings: Settings, rest: httpx.AsyncClient
    ) -> None:
        token = await answered_anonymously(client)
        user = make_user(settings)
        refused = await client.post("/api/v1/sessions/me/complete", headers=user.headers)
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "completion_not_allowed"
        deleted = await client.delete("/api/v1/sessions/me", headers=user.headers)
        assert deleted.status_code == 204
        gone = await rest.get("/sessions", params={"token_hash": f"eq.{token_hash(token)}"})
        assert gone.json() == []


@ASYNC
class TestSignedInWithoutAnAnonymousSession:
    @pytest.mark.parametrize("cookie", [None, "a" * 64, "not-a-token"])
    async def test_post_and_put_create_nothing_and_say_where_answers_live(
        self, app: FastAPI, settings: Settings, rest: httpx.AsyncClient, cookie: str | None
    ) -> None:
        user = make_user(settings)
        cookies = {COOKIE: cookie} if cookie else None
        async with browser_client(app, cookies=cookies, headers=user.headers) as http:
            before = await session_count(rest)
            started = await http.post("/api/v1/sessions")
            written = await http.put(
                "/api/v1/sessions/me", json={"answers": {"sku_count": answer(5)}}
            )
            guarded = await http.put(
                "/api/v1/sessions/me",
                headers={"If-Match": '"v1"'},
                json={"answers": {"sku_count": answer(5)}},
            )
            read = await http.get("/api/v1/sessions/me")
            assert await session_count(rest) == before
            assert http.cookies.get(COOKIE) == cookie
        for response in (started, written, guarded):
            assert response.status_code == 409, response.text
            error = response.json()["error"]
            assert error["code"] == "signed_in_no_anonymous_session"
            assert error["category"] == "user_fixable"
            assert "/api/v1/discovery" in error["message"]
            assert set_cookies(response) == []
        assert read.status_code == 404
        assert read.json()["error"]["code"] == "session_not_found"

    async def test_a_claimed_cookie_is_not_revived_and_the_claim_stays_idempotent(
        self, app: FastAPI, settings: Settings
    ) -> None:
        user = make_user(settings)
        async with browser_client(app) as http:
            token = await answered_anonymously(http)
            assert (await http.post("/api/v1/sessions/claim", headers=user.headers)).is_success
        # The claim's answer was lost: the browser still holds the claimed cookie.
        async with browser_client(app, cookies={COOKIE: token}, headers=user.headers) as http:
            written = await http.put("/api/v1/sessions/me", json={"timeframe": "soon"})
            read = await http.get("/api/v1/sessions/me")
            retry = await http.post("/api/v1/sessions/claim")
        assert written.status_code == 409
        assert set_cookies(written) == []
        assert read.status_code == 404
        assert set_cookies(read) == []
        assert retry.status_code == 200
        assert retry.json()["alreadyClaimed"] is True


@ASYNC
class TestBearerAndCookieTogether:
    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("POST", "/api/v1/sessions"),
            ("PUT", "/api/v1/sessions/me"),
            ("GET", "/api/v1/sessions/me"),
        ],
    )
    async def test_an_invalid_bearer_is_401_with_no_fallback_to_the_cookie(
        self, client: httpx.AsyncClient, method: str, path: str
    ) -> None:
        token = await start_session(client)
        response = await client.request(
            method,
            path,
            headers={"Authorization": "Bearer not.a.jwt"},
            json={"timeframe": "soon"} if method == "PUT" else None,
        )
        assert response.status_code == 401
        assert response.json()["error"]["category"] == "user_fixable"
        assert set_cookies(response) == []
        assert client.cookies.get(COOKIE) == token

    @pytest.mark.parametrize("origin", [None, "http://evil.test"])
    async def test_a_cookie_write_next_to_a_bearer_still_needs_an_allowed_origin(
        self, app: FastAPI, settings: Settings, rest: httpx.AsyncClient, origin: str | None
    ) -> None:
        async with browser_client(app) as spa:
            token = await answered_anonymously(spa)
        user = make_user(settings)
        headers = {**user.headers, **({"Origin": origin} if origin else {})}
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="https://testserver",
            cookies={COOKIE: token},
            headers=headers,
        ) as foreign:
            responses = [
                await foreign.post("/api/v1/sessions"),
                await foreign.put("/api/v1/sessions/me", json={"timeframe": "now"}),
                await foreign.delete("/api/v1/sessions/me"),
                await foreign.post("/api/v1/sessions/claim"),
            ]
        for response in responses:
            assert response.status_code == 403, response.text
            assert response.json()["error"]["code"] == "csrf_origin_rejected"
        stored = await stored_session(rest, token)
        assert stored["timeframe"] is None
        assert stored["claimed_by_profile_id"] is None

    async def test_every_sessions_write_sending_a_cookie_beside_a_bearer_needs_an_origin(
        self, app: FastAPI, settings: Settings, rest: httpx.AsyncClient
    ) -> None:
        """One rule for /sessions/* and the claim: a bearer write that sends the cookie needs
        an allowed Origin, whether or not the cookie turns out to be live (a dead one is
        refused before it is looked up, as PUT and the claim always did)."""
        user = make_user(settings)
        sessions_before = await session_count(rest)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="https://testserver",
            cookies={COOKIE: "D" * 64},  # the shape of a token, of no session
            headers=user.headers,
        ) as foreign:
            responses = [
                await foreign.post("/api/v1/sessions"),
                await foreign.put("/api/v1/sessions/me", json={"timeframe": "now"}),
                await foreign.post("/api/v1/sessions/me/complete"),
                await foreign.delete("/api/v1/sessions/me"),
                await foreign.post("/api/v1/sessions/claim"),
            ]
            read = await foreign.get("/api/v1/sessions/me")
        assert [r.status_code for r in responses] == [403] * len(responses)
        assert {r.json()["error"]["code"] for r in responses} == {"csrf_origin_rejected"}
        assert read.status_code == 404  # reads need no Origin
        assert await session_count(rest) == sessions_before

    async def test_elsewhere_a_signed_in_caller_is_still_the_user_alone(
        self, app: FastAPI, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        await answered_anonymously(client)
        anonymous = (await client.post("/api/v1/conversations", json={"title": "anon"})).json()
        searched = await client.post("/api/v1/search-sessions", json=SEARCH)
        assert searched.status_code == 201, searched.text
        user = make_user(settings)
        with_cookie = user.headers  # the browser adds the cookie

        listed = await client.get("/api/v1/conversations", headers=with_cookie)
        assert listed.json() == []
        hidden = await client.get(f"/api/v1/conversations/{anonymous['id']}", headers=with_cookie)
        assert hidden.status_code == 404
        said = await client.post(
            f"/api/v1/conversations/{anonymous['id']}/messages",
            headers=with_cookie,
            json={"content": "hello"},
        )
        assert said.status_code == 404
        assert said.json()["error"]["code"] == "conversation_not_found"
        created = await client.post("/api/v1/conversations", headers=with_cookie, json={})
        assert created.status_code == 201
        assert created.json()["owner"] == "user"
        stats = await client.get(
            f"/api/v1/search-sessions/{searched.json()['sessionId']}/stats", headers=with_cookie
        )
        assert stats.status_code == 404
        mine = await client.post("/api/v1/search-sessions", headers=with_cookie, json=SEARCH)
        assert mine.status_code == 201
        profile = (await client.get("/api/v1/discovery", headers=with_cookie)).json()
        assert profile["answers"] == {}

        async with browser_client(app, headers=user.headers) as bearer_only:
            own = (await bearer_only.get("/api/v1/conversations")).json()
            assert [c["id"] for c in own] == [created.json()["id"]]
            stats_by_user = await bearer_only.get(
                f"/api/v1/search-sessions/{mine.json()['sessionId']}/stats"
            )
            assert stats_by_user.status_code == 200
        # The anonymous session kept its own, for the claim to move.
        session_view = (await client.get("/api/v1/conversations")).json()
        assert [c["id"] for c in session_view] == [anonymous["id"]]
