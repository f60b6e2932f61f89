"""Claim (POST /sessions/claim) and /discovery through HTTP against the real data plane."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from autopilot_api.core.config import Settings
from autopilot_api.core.security import mint_user_token
from autopilot_api.discovery.catalogue import QUESTION_KEYS_IN_ORDER
from autopilot_api.local.dataplane import LocalDataPlane
from tests.conftest import browser_client, plane_info
from tests.fixtures.factories import (
    TestUser,
    answer,
    make_user,
    start_session,
    token_issuer,
    valid_value,
)

ASYNC = pytest.mark.asyncio(loop_scope="session")
COOKIE = "autopilot_session"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def add_session_conversation(rest: httpx.AsyncClient, token: str) -> str:
    """A conversation owned by the session (the conversations API comes later)."""
    session = (
        await rest.get("/sessions", params={"token_hash": f"eq.{token_hash(token)}"})
    ).json()[0]
    response = await rest.post(
        "/conversations",
        json={"session_id": session["id"], "title": "chat"},
        headers={"Prefer": "return=representation"},
    )
    response.raise_for_status()
    return str(response.json()[0]["id"])


async def claim(client: httpx.AsyncClient, user: TestUser, **params: str) -> httpx.Response:
    return await client.post("/api/v1/sessions/claim", headers=user.headers, params=params)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@ASYNC
class TestClaimSession:
    async def test_claim_moves_answers_and_conversations_into_the_profile(
        self, client: httpx.AsyncClient, settings: Settings, rest: httpx.AsyncClient
    ) -> None:
        token = await start_session(client)
        await client.put(
            "/api/v1/sessions/me",
            json={
                "answers": {"facility_type": answer("cold storage")},
                "roiInputs": {"laborRate": 30},
                "phase": "roi",
            },
        )
        conversation_id = await add_session_conversation(rest, token)
        user = make_user(settings)

        response = await claim(client, user)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["alreadyClaimed"] is False
        assert body["conversationsMoved"] == 1
        profile = body["profile"]
        assert profile["profileId"] == str(user.id)
        assert profile["answers"]["facility_type"]["value"] == "cold storage"
        assert profile["roiInputs"]["laborRate"] == 30
        assert profile["phase"] == "roi"

        conversation = (
            await rest.get("/conversations", params={"id": f"eq.{conversation_id}"})
        ).json()[0]
        assert conversation["user_id"] == str(user.id)
        assert conversation["session_id"] is None

        stored = (
            await rest.get("/sessions", params={"token_hash": f"eq.{token_hash(token)}"})
        ).json()[0]
        assert stored["claimed_by_profile_id"] == str(user.id)
        assert stored["claimed_at"] is not None

        profile_now = await client.get("/api/v1/discovery", headers=user.headers)
        assert profile_now.json()["answers"]["facility_type"]["value"] == "cold storage"

    async def test_claim_clears_cookie_and_the_token_no_longer_resolves(
        self, app: FastAPI, settings: Settings
    ) -> None:
        async with browser_client(app) as http:
            token = await start_session(http)
            response = await claim(http, make_user(settings))
            assert "max-age=0" in response.headers["set-cookie"].lower()
        async with browser_client(app, cookies={COOKIE: token}) as replay:
            assert (await replay.get("/api/v1/sessions/me")).status_code == 404
            write = await replay.put("/api/v1/sessions/me", json={"timeframe": "x"})
            assert write.status_code == 201
            assert write.cookies.get(COOKIE) != token

    async def test_retry_by_same_user_is_idempotent(self, app: FastAPI, settings: Settings) -> None:
        user = make_user(settings)
        async with browser_client(app) as http:
            token = await start_session(http)
            await http.put("/api/v1/sessions/me", json={"answers": {"sku_count": answer(10)}})
            first = await claim(http, user)
        async with browser_client(app, cookies={COOKIE: token}) as retry:
            second = await claim(retry, user)
        assert second.status_code == 200
        assert second.json()["alreadyClaimed"] is True
        assert second.json()["profile"] == first.json()["profile"]

    async def test_claim_by_second_user_is_refused(self, app: FastAPI, settings: Settings) -> None:
        async with browser_client(app) as http:
            token = await start_session(http)
            assert (await claim(http, make_user(settings))).status_code == 200
        async with browser_client(app, cookies={COOKIE: token}) as thief:
            response = await claim(thief, make_user(settings))
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "session_already_claimed"

    async def test_claim_without_cookie_is_404(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        response = await claim(client, make_user(settings))
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "session_not_found"

    async def test_claim_without_bearer_is_401(self, client: httpx.AsyncClient) -> None:
        await start_session(client)
        response = await client.post("/api/v1/sessions/claim")
        assert response.status_code == 401

    async def test_anonymous_supabase_user_cannot_claim(
        self, client: httpx.AsyncClient, settings: Settings, rest: httpx.AsyncClient
    ) -> None:
        token = await start_session(client)
        response = await claim(client, make_user(settings, anonymous=True))
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "anonymous_user_cannot_claim"
        stored = (
            await rest.get("/sessions", params={"token_hash": f"eq.{token_hash(token)}"})
        ).json()[0]
        assert stored["claimed_by_profile_id"] is None

    async def test_dry_run_returns_merge_and_writes_nothing(
        self, client: httpx.AsyncClient, settings: Settings, rest: httpx.AsyncClient
    ) -> None:
        token = await start_session(client)
        await client.put("/api/v1/sessions/me", json={"answers": {"sku_count": answer(7)}})
        user = make_user(settings)
        response = await claim(client, user, dryRun="true")
        assert response.status_code == 200
        assert response.json()["dryRun"] is True
        assert response.json()["profile"]["answers"]["sku_count"]["value"] == 7
        assert "set-cookie" not in response.headers
        stored = (
            await rest.get("/sessions", params={"token_hash": f"eq.{token_hash(token)}"})
        ).json()[0]
        assert stored["claimed_by_profile_id"] is None
        profiles = (await rest.get("/profiles", params={"id": f"eq.{user.id}"})).json()
        assert profiles == []
        assert (await client.get("/api/v1/sessions/me")).status_code == 200


async def seed_profile_answers(
    rest: httpx.AsyncClient, user: TestUser, answers: dict[str, Any], **fields: Any
) -> None:
    await rest.post("/profiles", json={"id": str(user.id)})
    response = await rest.post(
        "/discovery_profiles", json={"profile_id": str(user.id), "answers": answers, **fields}
    )
    response.raise_for_status()


async def seed_session_answers(
    rest: httpx.AsyncClient, token: str, answers: dict[str, Any], **fields: Any
) -> None:
    response = await rest.patch(
        "/sessions",
        params={"token_hash": f"eq.{token_hash(token)}"},
        json={"answers": answers, **fields},
    )
    response.raise_for_status()


def stored_answer(key: str, value: Any, source: str, at: datetime) -> dict[str, Any]:
    return {
        "questionId": 1,
        "key": key,
        "label": "?",
        "value": value,
        "group": "facility",
        "source": source,
        "updatedAt": iso(at),
    }


@ASYNC
class TestClaimMergeRules:
    async def test_user_answer_beats_newer_extracted_answer_either_way(
        self, client: httpx.AsyncClient, settings: Settings, rest: httpx.AsyncClient
    ) -> None:
        now = datetime.now(UTC)
        old, new = now - timedelta(days=2), now - timedelta(hours=1)
        user = make_user(settings)
        await seed_profile_answers(
            rest,
            user,
            {
                "facility_type": stored_answer("facility_type", "profile-user", "user", old),
                "sku_count": stored_answer("sku_count", "profile-extracted", "extracted", new),
            },
        )
        token = await start_session(client)
        await seed_session_answers(
            rest,
            token,
            {
                "facility_type": stored_answer(
                    "facility_type", "session-extracted", "extracted", new
                ),
                "sku_count": stored_answer("sku_count", "session-user", "user", old),
            },
        )
        answers = (await claim(client, user)).json()["profile"]["answers"]
        assert answers["facility_type"]["value"] == "profile-user"
        assert answers["sku_count"]["value"] == "session-user"

    async def test_same_source_newer_wins_and_keys_on_one_side_are_kept(
        self, client: httpx.AsyncClient, settings: Settings, rest: httpx.AsyncClient
    ) -> None:
        now = datetime.now(UTC)
        user = make_user(settings)
        await seed_profile_answers(
            rest,
            user,
            {
                "facility_type": stored_answer("facility_type", "profile-newer", "user", now),
                "sku_count": stored_answer(
                    "sku_count", "profile-older", "user", now - timedelta(days=1)
                ),
                "shifts_per_day": stored_answer("shifts_per_day", "profile-only", "extracted", now),
            },
        )
        token = await start_session(client)
        await seed_session_answers(
            rest,
            token,
            {
                "facility_type": stored_answer(
                    "facility_type", "session-older", "user", now - timedelta(days=1)
                ),
                "sku_count": stored_answer("sku_count", "session-newer", "user", now),
                "budget_range": stored_answer("budget_range", "session-only", "user", now),
            },
        )
        answers = (await claim(client, user)).json()["profile"]["answers"]
        assert answers["facility_type"]["value"] == "profile-newer"
        assert answers["sku_count"]["value"] == "session-newer"
        assert answers["shifts_per_day"]["value"] == "profile-only"
        assert answers["budget_range"]["value"] == "session-only"

    async def test_phase_furthest_index_max_products_union_roi_per_key(
        self, client: httpx.AsyncClient, settings: Settings, rest: httpx.AsyncClient
    ) -> None:
        now = datetime.now(UTC)
        shared, profile_only, session_only = (str(uuid.uuid4()) for _ in range(3))
        user = make_user(settings)
        await seed_profile_answers(
            rest,
            user,
            {},
            phase="greenlight",
            current_question_index=4,
            selected_product_ids=[profile_only, shared],
            roi_inputs={
                "laborRate": {"value": 20, "source": "user", "updatedAt": iso(now)},
                "utilization": {"value": 0.5, "source": "extracted", "updatedAt": iso(now)},
            },
        )
        token = await start_session(client)
        await seed_session_answers(
            rest,
            token,
            {},
            phase="roi",
            current_question_index=9,
            selected_product_ids=[shared, session_only],
            roi_inputs={
                "laborRate": {"value": 99, "source": "extracted", "updatedAt": iso(now)},
                "utilization": {
                    "value": 0.9,
                    "source": "user",
                    "updatedAt": iso(now - timedelta(days=1)),
                },
            },
        )
        profile = (await claim(client, user)).json()["profile"]
        assert profile["phase"] == "greenlight"
        assert profile["currentQuestionIndex"] == 9
        assert profile["selectedProductIds"] == [profile_only, shared, session_only]
        assert profile["roiInputs"]["laborRate"] == 20
        assert profile["roiInputs"]["utilization"] == 0.9


@ASYNC
class TestCleanupAfterClaim:
    async def test_claim_then_expiry_then_cleanup_keeps_profile_and_conversations(
        self, client: httpx.AsyncClient, settings: Settings, rest: httpx.AsyncClient
    ) -> None:
        claimed_token = await start_session(client)
        conversation_id = await add_session_conversation(rest, claimed_token)
        user = make_user(settings)
        await client.put("/api/v1/sessions/me", json={"answers": {"sku_count": answer(3)}})
        assert (await claim(client, user)).status_code == 200

        async with browser_client(client._transport.app) as other:  # type: ignore[attr-defined]
            abandoned_token = await start_session(other)
            abandoned_conversation = await add_session_conversation(rest, abandoned_token)

        past = iso(datetime.now(UTC) - timedelta(days=1))
        for token in (claimed_token, abandoned_token):
            await rest.patch(
                "/sessions",
                params={"token_hash": f"eq.{token_hash(token)}"},
                json={"expires_at": past},
            )
        deleted = (
            await rest.post("/rpc/cleanup_expired_sessions", json={"p_batch_size": 1000})
        ).json()
        assert deleted >= 1

        remaining = (
            await rest.get(
                "/sessions",
                params={
                    "token_hash": f"in.({token_hash(claimed_token)},{token_hash(abandoned_token)})"
                },
            )
        ).json()
        assert [row["token_hash"] for row in remaining] == [token_hash(claimed_token)]
        conversations = (
            await rest.get(
                "/conversations", params={"id": f"in.({conversation_id},{abandoned_conversation})"}
            )
        ).json()
        assert [row["id"] for row in conversations] == [conversation_id]
        profile = await client.get("/api/v1/discovery", headers=user.headers)
        assert profile.json()["answers"]["sku_count"]["value"] == 3


@ASYNC
class TestDiscoveryProfile:
    async def test_get_auto_creates_an_empty_profile(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        user = make_user(settings)
        response = await client.get("/api/v1/discovery", headers=user.headers)
        assert response.status_code == 200
        body = response.json()
        assert body["profileId"] == str(user.id)
        assert body["answers"] == {}
        assert body["phase"] == "discovery"
        assert response.headers["ETag"] == '"v1"'

    async def test_put_merges_answers_per_key(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        user = make_user(settings)
        await client.put(
            "/api/v1/discovery",
            headers=user.headers,
            json={"answers": {"facility_type": answer("manufacturing plant")}},
        )
        response = await client.put(
            "/api/v1/discovery", headers=user.headers, json={"answers": {"sku_count": answer(40)}}
        )
        assert response.status_code == 200
        assert set(response.json()["answers"]) == {"facility_type", "sku_count"}

    async def test_put_with_stale_if_match_is_412(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        user = make_user(settings)
        etag = (await client.get("/api/v1/discovery", headers=user.headers)).headers["ETag"]
        await client.put("/api/v1/discovery", headers=user.headers, json={"timeframe": "a"})
        stale = await client.put(
            "/api/v1/discovery", json={"timeframe": "b"}, headers={**user.headers, "If-Match": etag}
        )
        assert stale.status_code == 412

    async def test_requires_a_bearer_token(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/api/v1/discovery")
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"

    async def test_question_catalogue_is_public_and_cacheable(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/api/v1/discovery/questions")
        assert response.status_code == 200
        questions = response.json()
        assert [q["key"] for q in questions] == list(QUESTION_KEYS_IN_ORDER)
        assert [q["id"] for q in questions] == list(range(1, len(QUESTION_KEYS_IN_ORDER) + 1))
        assert "max-age" in response.headers["Cache-Control"]


@ASYNC
class TestBearerTokens:
    @pytest.mark.parametrize(
        "mutate",
        ["expired", "wrong_audience", "wrong_secret", "wrong_issuer", "garbage", "not_bearer"],
    )
    async def test_bad_bearer_is_401_with_no_fallback_to_cookie(
        self, client: httpx.AsyncClient, settings: Settings, mutate: str
    ) -> None:
        await start_session(client)
        secret = settings.supabase_jwt_secret
        assert secret
        user_id = uuid.uuid4()
        issuer = token_issuer(settings)
        tokens = {
            "expired": mint_user_token(
                secret, issuer=issuer, user_id=user_id, lifetime_seconds=-61
            ),
            "wrong_audience": mint_user_token(
                secret, issuer=issuer, user_id=user_id, audience="anon"
            ),
            "wrong_secret": mint_user_token("x" * 40, issuer=issuer, user_id=user_id),
            "wrong_issuer": mint_user_token(
                secret, issuer="https://other-project.supabase.co/auth/v1", user_id=user_id
            ),
            "garbage": "not.a.jwt",
        }
        header = "Basic abc" if mutate == "not_bearer" else f"Bearer {tokens[mutate]}"
        response = await client.get("/api/v1/sessions/me", headers={"Authorization": header})
        assert response.status_code == 401
        assert response.json()["error"]["category"] == "user_fixable"
        assert tokens.get(mutate, "abc") not in response.text


class TestAuthUserDeletion:
    @ASYNC
    async def test_deleting_the_auth_user_removes_profile_and_claimed_records(
        self,
        client: httpx.AsyncClient,
        settings: Settings,
        rest: httpx.AsyncClient,
        data_plane: LocalDataPlane,
    ) -> None:
        user = make_user(settings)
        token = await start_session(client)
        await add_session_conversation(rest, token)
        assert (await claim(client, user)).status_code == 200
        url = plane_info(data_plane).database_url
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "insert into auth.users (id, email) values (%s, %s)", (user.id, user.email)
            )
            conn.execute("delete from auth.users where id = %s", (user.id,))
        assert (await rest.get("/profiles", params={"id": f"eq.{user.id}"})).json() == []
        assert (
            await rest.get("/discovery_profiles", params={"profile_id": f"eq.{user.id}"})
        ).json() == []
        assert (await rest.get("/conversations", params={"user_id": f"eq.{user.id}"})).json() == []
        assert (
            await rest.get("/sessions", params={"token_hash": f"eq.{token_hash(token)}"})
        ).json() == []

    @ASYNC
    async def test_soft_deleting_the_auth_user_removes_their_data_and_their_token_sees_none(
        self,
        client: httpx.AsyncClient,
        settings: Settings,
        rest: httpx.AsyncClient,
        data_plane: LocalDataPlane,
    ) -> None:
        user = make_user(settings)
        token = await start_session(client)
        facility = valid_value("facility_type")
        stored = await client.put(
            "/api/v1/sessions/me", json={"answers": {"facility_type": answer(facility)}}
        )
        assert stored.status_code == 200
        await add_session_conversation(rest, token)
        assert (await claim(client, user)).status_code == 200
        profile = (await client.get("/api/v1/discovery", headers=user.headers)).json()
        assert profile["answers"]["facility_type"]["value"] == facility
        listed = await client.get("/api/v1/conversations", headers=user.headers)
        assert len(listed.json()) == 1

        with psycopg.connect(plane_info(data_plane).database_url, autocommit=True) as conn:
            conn.execute(
                "insert into auth.users (id, email, raw_app_meta_data) values (%s, %s, %s)",
                (user.id, user.email, '{"provider": "email", "providers": ["email"]}'),
            )
            # As supabase/auth's User.SoftDeleteUser writes it: one UPDATE scrambling the
            # email and setting deleted_at, then the metadata emptied by later UPDATEs.
            with conn.transaction():
                conn.execute(
                    "update auth.users set email = encode(sha256(convert_to(id::text || email,"
                    " 'UTF8')), 'base64'), deleted_at = now() where id = %s",
                    (user.id,),
                )
                conn.execute(
                    "update auth.users set raw_user_meta_data = '{}' where id = %s", (user.id,)
                )
                conn.execute(
                    "update auth.users set raw_app_meta_data = '{}' where id = %s", (user.id,)
                )
            kept = conn.execute(
                "select deleted_at is not null from auth.users where id = %s", (user.id,)
            ).fetchone()
        assert kept == (True,)

        assert (await rest.get("/profiles", params={"id": f"eq.{user.id}"})).json() == []
        assert (
            await rest.get("/discovery_profiles", params={"profile_id": f"eq.{user.id}"})
        ).json() == []
        assert (await rest.get("/conversations", params={"user_id": f"eq.{user.id}"})).json() == []
        assert (
            await rest.get("/sessions", params={"token_hash": f"eq.{token_hash(token)}"})
        ).json() == []
        # Their access token is still unexpired: it reaches nothing of theirs.
        after = await client.get("/api/v1/discovery", headers=user.headers)
        assert after.status_code == 200
        assert after.json()["answers"] == {}
        assert after.json()["version"] == 1
        listed = await client.get("/api/v1/conversations", headers=user.headers)
        assert listed.status_code == 200
        assert listed.json() == []

    @ASYNC
    async def test_other_updates_of_a_live_user_keep_their_data(
        self,
        client: httpx.AsyncClient,
        settings: Settings,
        rest: httpx.AsyncClient,
        data_plane: LocalDataPlane,
    ) -> None:
        user = make_user(settings)
        await start_session(client)
        assert (await claim(client, user)).status_code == 200
        with psycopg.connect(plane_info(data_plane).database_url, autocommit=True) as conn:
            conn.execute(
                "insert into auth.users (id, email) values (%s, %s)", (user.id, user.email)
            )
            conn.execute(
                "update auth.users set email = 'new@example.test', deleted_at = null,"
                " updated_at = now() where id = %s",
                (user.id,),
            )
        assert len((await rest.get("/profiles", params={"id": f"eq.{user.id}"})).json()) == 1
