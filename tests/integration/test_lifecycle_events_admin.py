"""Lifecycle, audit trail, live events across two instances (Redis), and admin."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio

from autopilot_api.core.config import Settings
from autopilot_api.local.dataplane import LocalDataPlane
from tests.fixtures.factories import SPA_ORIGIN, answer, make_user, start_session
from tests.fixtures.processes import ServiceProcess, start_service
from tests.fixtures.sse import collect, sse_messages

ASYNC = pytest.mark.asyncio(loop_scope="session")
COOKIE = "autopilot_session"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def session_id_of(rest: httpx.AsyncClient, token: str) -> str:
    rows = (await rest.get("/sessions", params={"token_hash": f"eq.{token_hash(token)}"})).json()
    return str(rows[0]["id"])


async def audit_trail(rest: httpx.AsyncClient, column: str, subject: str) -> list[dict[str, Any]]:
    response = await rest.get("/session_events", params={column: f"eq.{subject}", "order": "id"})
    response.raise_for_status()
    return list(response.json())


async def to_greenlight(client: httpx.AsyncClient, path: str, **headers: str) -> None:
    for phase in ("roi", "greenlight"):
        response = await client.put(path, json={"phase": phase}, headers=headers)
        assert response.status_code in (200, 201), response.text


@ASYNC
class TestLifecycle:
    async def test_complete_only_from_greenlight(self, client: httpx.AsyncClient) -> None:
        await start_session(client)
        refused = await client.post("/api/v1/sessions/me/complete")
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "completion_not_allowed"
        assert refused.json()["error"]["details"]["requiredPhase"] == "greenlight"
        await to_greenlight(client, "/api/v1/sessions/me")
        done = await client.post("/api/v1/sessions/me/complete")
        assert done.status_code == 200
        body = done.json()
        assert body["status"] == "completed"
        assert body["completedAt"] is not None
        assert body["isRecoverable"] is False
        again = await client.post("/api/v1/sessions/me/complete")
        assert again.json()["version"] == body["version"]

    async def test_discovery_profile_completes_from_greenlight(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        user = make_user(settings)
        assert (
            await client.post("/api/v1/discovery/complete", headers=user.headers)
        ).status_code == 409
        await to_greenlight(client, "/api/v1/discovery", **user.headers)
        done = await client.post("/api/v1/discovery/complete", headers=user.headers)
        assert done.json()["status"] == "completed"

    async def test_responses_carry_display_name_recoverability_and_activity(
        self, client: httpx.AsyncClient, rest: httpx.AsyncClient, settings: Settings
    ) -> None:
        await start_session(client)
        body = (await client.put("/api/v1/sessions/me", json={"phase": "roi"})).json()
        assert body["phaseDisplayName"] == "ROI analysis"
        assert body["status"] == "active"
        assert body["isRecoverable"] is True
        assert body["lastActivityAt"] == body["lastSeenAt"]

        user = make_user(settings)
        assert (await client.get("/api/v1/discovery", headers=user.headers)).json()["isRecoverable"]
        stale = (datetime.now(UTC) - timedelta(days=8)).isoformat()
        await rest.patch(
            "/discovery_profiles",
            params={"profile_id": f"eq.{user.id}"},
            json={"updated_at": stale},
        )
        profile = (await client.get("/api/v1/discovery", headers=user.headers)).json()
        assert profile["isRecoverable"] is False
        assert profile["lastActivityAt"].startswith(stale[:16])

    async def test_every_put_is_a_checkpoint(
        self, client: httpx.AsyncClient, rest: httpx.AsyncClient
    ) -> None:
        token = await start_session(client)
        old = (datetime.now(UTC) - timedelta(minutes=30)).isoformat()
        await rest.patch(
            "/sessions",
            params={"token_hash": f"eq.{token_hash(token)}"},
            json={"last_seen_at": old},
        )
        body = (await client.put("/api/v1/sessions/me", json={"timeframe": "Q3"})).json()
        assert body["version"] == 2
        assert datetime.fromisoformat(body["lastSeenAt"]) > datetime.now(UTC) - timedelta(minutes=1)


@ASYNC
class TestAuditTrail:
    async def test_state_changes_are_recorded_by_the_sql_that_made_them(
        self, client: httpx.AsyncClient, rest: httpx.AsyncClient, settings: Settings
    ) -> None:
        token = await start_session(client)
        session_id = await session_id_of(rest, token)
        await client.put("/api/v1/sessions/me", json={"answers": {"sku_count": answer(12)}})
        await client.put("/api/v1/sessions/me", json={"phase": "greenlight"})  # refused
        await to_greenlight(client, "/api/v1/sessions/me")
        await client.post("/api/v1/sessions/me/complete")
        user = make_user(settings)
        await client.post("/api/v1/sessions/claim", headers=user.headers)

        trail = await audit_trail(rest, "session_id", session_id)
        assert [e["event_type"] for e in trail] == [
            "created",
            "updated",
            "updated",
            "phase_changed",
            "updated",
            "phase_changed",
            "completed",
            "claimed",
        ]
        assert trail[1]["payload"]["answerKeys"] == ["sku_count"]
        assert "12" not in str(trail[1]["payload"])  # keys, never values
        assert trail[3]["payload"] == {"from": "discovery", "to": "roi"}
        assert trail[0]["actor_type"] == "session"
        assert trail[-1]["actor_type"] == "user"
        assert trail[-1]["profile_id"] == str(user.id)
        assert [e["id"] for e in trail] == sorted(e["id"] for e in trail)

    async def test_deletion_and_expiry_are_recorded(
        self, client: httpx.AsyncClient, other_client: httpx.AsyncClient, rest: httpx.AsyncClient
    ) -> None:
        deleted_id = await session_id_of(rest, await start_session(client))
        await client.delete("/api/v1/sessions/me")
        expired_token = await start_session(other_client)
        expired_id = await session_id_of(rest, expired_token)
        await rest.patch(
            "/sessions",
            params={"token_hash": f"eq.{token_hash(expired_token)}"},
            json={"expires_at": (datetime.now(UTC) - timedelta(hours=1)).isoformat()},
        )
        await rest.post("/rpc/cleanup_expired_sessions", json={"p_batch_size": 1000})
        assert (await audit_trail(rest, "session_id", deleted_id))[-1]["event_type"] == "deleted"
        expired = (await audit_trail(rest, "session_id", expired_id))[-1]
        assert (expired["event_type"], expired["actor_type"]) == ("expired", "system")

    async def test_the_trail_is_append_only(
        self, client: httpx.AsyncClient, rest: httpx.AsyncClient
    ) -> None:
        session_id = await session_id_of(rest, await start_session(client))
        event_id = (await audit_trail(rest, "session_id", session_id))[0]["id"]
        changed = await rest.patch(
            "/session_events", params={"id": f"eq.{event_id}"}, json={"event_type": "deleted"}
        )
        removed = await rest.delete("/session_events", params={"id": f"eq.{event_id}"})
        assert changed.status_code >= 400
        assert removed.status_code >= 400
        assert (await audit_trail(rest, "session_id", session_id))[0]["event_type"] == "created"


@ASYNC
class TestAdmin:
    async def test_admin_sees_totals_and_pages_without_secrets(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        for _ in range(3):
            client.cookies.clear()
            await start_session(client)
            await client.put("/api/v1/sessions/me", json={"answers": {"sku_count": answer(1)}})
        admin = make_user(settings, admin=True)
        first = await client.get(
            "/api/v1/admin/sessions", params={"limit": 2}, headers=admin.headers
        )
        assert first.status_code == 200
        body = first.json()
        assert body["totals"]["total"] >= 3
        assert body["totals"]["activeRecently"] >= 3
        assert set(body["totals"]["byPhase"]) <= {"discovery", "roi", "greenlight"}
        assert len(body["sessions"]) == 2
        assert "answers" not in body["sessions"][0]
        assert "tokenHash" not in str(body)
        assert "token_hash" not in str(body)
        seen = [row["lastSeenAt"] for row in body["sessions"]]
        assert seen == sorted(seen, reverse=True)
        second = (
            await client.get(
                "/api/v1/admin/sessions",
                params={"limit": 2, "cursor": body["nextCursor"]},
                headers=admin.headers,
            )
        ).json()
        assert {r["id"] for r in second["sessions"]}.isdisjoint({r["id"] for r in body["sessions"]})
        assert second["sessions"][0]["lastSeenAt"] <= seen[-1]

    async def test_admin_cleanup_returns_the_count(
        self, client: httpx.AsyncClient, rest: httpx.AsyncClient, settings: Settings
    ) -> None:
        token = await start_session(client)
        await rest.patch(
            "/sessions",
            params={"token_hash": f"eq.{token_hash(token)}"},
            json={"expires_at": (datetime.now(UTC) - timedelta(hours=1)).isoformat()},
        )
        admin = make_user(settings, admin=True)
        response = await client.post("/api/v1/admin/sessions/cleanup", headers=admin.headers)
        assert response.status_code == 200
        assert response.json()["deleted"] >= 1

    async def test_non_admins_are_refused(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        user = make_user(settings)
        assert (await client.get("/api/v1/admin/sessions", headers=user.headers)).status_code == 403
        assert (await client.get("/api/v1/admin/sessions")).status_code == 401
        refused = await client.post("/api/v1/admin/sessions/cleanup", headers=user.headers)
        assert refused.status_code == 403

    async def test_bad_cursor_is_422(self, client: httpx.AsyncClient, settings: Settings) -> None:
        admin = make_user(settings, admin=True)
        response = await client.get(
            "/api/v1/admin/sessions", params={"cursor": "nope"}, headers=admin.headers
        )
        assert response.status_code == 422


# --- live events over real HTTP, two instances, one Redis ------------------------------------
@pytest.fixture(scope="module")
def redis_pair(
    data_plane: LocalDataPlane, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    # A long heartbeat: an event reaching the other instance quickly came through Redis,
    # not through the heartbeat's safety poll.
    log_dir = tmp_path_factory.mktemp("redis-pair")
    env = {"REDIS_URL": redis_url, "EVENTS_HEARTBEAT_SECONDS": "60"}
    first = start_service(data_plane, log_dir, **env)
    second = start_service(data_plane, log_dir, **env)
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def instances(
    redis_pair: tuple[ServiceProcess, ServiceProcess],
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    first, second = redis_pair
    timeout = httpx.Timeout(30, read=70)
    async with (
        httpx.AsyncClient(
            base_url=first.base_url, headers={"Origin": SPA_ORIGIN}, timeout=timeout
        ) as a,
        httpx.AsyncClient(
            base_url=second.base_url, headers={"Origin": SPA_ORIGIN}, timeout=timeout
        ) as b,
    ):
        yield a, b


async def cookie_for(http: httpx.AsyncClient) -> dict[str, str]:
    response = await http.post("/api/v1/sessions")
    token = response.cookies[COOKIE]
    http.cookies.clear()
    return {"Cookie": f"{COOKIE}={token}"}


@ASYNC
class TestLiveEventsAcrossInstances:
    async def test_event_written_on_one_instance_arrives_on_a_stream_held_by_the_other(
        self, instances: tuple[httpx.AsyncClient, httpx.AsyncClient]
    ) -> None:
        a, b = instances
        cookie = await cookie_for(a)
        async with b.stream("GET", "/api/v1/events", headers=cookie) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            messages = sse_messages(stream)
            hello = await anext(messages)
            assert hello.retry == 3000
            await a.put(
                "/api/v1/sessions/me",
                headers=cookie,
                json={"answers": {"sku_count": {"value": 5}}, "phase": "roi"},
            )
            received = await collect(messages, events=2, timeout=10)
        assert [m.event for m in received] == ["updated", "phase_changed"]
        assert received[0].data["payload"]["answerKeys"] == ["sku_count"]
        assert int(received[1].id or 0) > int(received[0].id or 0)

    async def test_reconnect_with_last_event_id_replays_everything_missed(
        self, instances: tuple[httpx.AsyncClient, httpx.AsyncClient], rest: httpx.AsyncClient
    ) -> None:
        a, b = instances
        cookie = await cookie_for(a)
        async with b.stream("GET", "/api/v1/events", headers=cookie) as stream:
            messages = sse_messages(stream)
            await anext(messages)
            put = await a.put("/api/v1/sessions/me", headers=cookie, json={"timeframe": "first"})
            assert put.status_code == 200, put.text
            (first,) = await collect(messages, events=1)
        for index in range(5):
            await a.put("/api/v1/sessions/me", headers=cookie, json={"timeframe": f"t{index}"})
        async with a.stream(
            "GET", "/api/v1/events", headers={**cookie, "Last-Event-ID": str(first.id)}
        ) as stream:
            replayed = await collect(sse_messages(stream), events=5)
        token = cookie["Cookie"].split("=", 1)[1]
        session_id = await session_id_of(rest, token)
        stored = [
            e["id"]
            for e in await audit_trail(rest, "session_id", session_id)
            if e["id"] > int(first.id or 0)
        ]
        assert [int(m.id or 0) for m in replayed] == stored

    async def test_a_stream_never_shows_another_callers_events(
        self, instances: tuple[httpx.AsyncClient, httpx.AsyncClient]
    ) -> None:
        a, b = instances
        mine, theirs = await cookie_for(a), await cookie_for(a)
        async with b.stream("GET", "/api/v1/events", headers=mine) as stream:
            messages = sse_messages(stream)
            await anext(messages)
            await a.put("/api/v1/sessions/me", headers=theirs, json={"timeframe": "theirs"})
            await a.put("/api/v1/sessions/me", headers=mine, json={"timeframe": "mine"})
            (event,) = await collect(messages, events=1)
        mine_now = (await a.get("/api/v1/sessions/me", headers=mine)).json()
        assert event.data["sessionId"] == mine_now["id"]

    async def test_signed_in_user_streams_with_a_ticket_that_alone_opens_only_once(
        self, instances: tuple[httpx.AsyncClient, httpx.AsyncClient], settings: Settings
    ) -> None:
        a, b = instances
        user = make_user(settings)
        ticket = (await a.post("/api/v1/events/ticket", headers=user.headers)).json()["ticket"]
        async with b.stream("GET", "/api/v1/events", params={"ticket": ticket}) as stream:
            messages = sse_messages(stream)
            await anext(messages)
            await a.put("/api/v1/discovery", headers=user.headers, json={"timeframe": "soon"})
            events = await collect(messages, events=2)
        assert [e.event for e in events] == ["created", "updated"]
        assert events[0].data["profileId"] == str(user.id)
        # The ticket alone, without the stream cookie its first use set, opens nothing.
        assert "autopilot_events" in b.cookies
        b.cookies.clear()
        reused = await b.get("/api/v1/events", params={"ticket": ticket})
        assert reused.status_code == 401
        assert reused.json()["error"]["code"] == "invalid_ticket"

    async def test_stream_without_identity_is_401(
        self, instances: tuple[httpx.AsyncClient, httpx.AsyncClient]
    ) -> None:
        response = await instances[0].get("/api/v1/events")
        assert response.status_code == 401


@pytest.fixture(scope="module")
def fast_heartbeat_service(
    data_plane: LocalDataPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    service = start_service(
        data_plane, tmp_path_factory.mktemp("heartbeat"), EVENTS_HEARTBEAT_SECONDS="0.3"
    )
    try:
        yield service
    finally:
        service.stop()


@ASYNC
class TestHeartbeat:
    async def test_idle_stream_sends_heartbeat_comments(
        self, fast_heartbeat_service: ServiceProcess
    ) -> None:
        async with httpx.AsyncClient(
            base_url=fast_heartbeat_service.base_url, headers={"Origin": SPA_ORIGIN}
        ) as http:
            cookie = await cookie_for(http)
            async with http.stream("GET", "/api/v1/events", headers=cookie) as stream:
                messages = sse_messages(stream)
                comments: list[str] = []
                while len(comments) < 3:
                    comments += (await anext(messages)).comments
        assert comments[0] == "connected"
        assert comments.count("heartbeat") >= 2


@ASYNC
class TestSharedRateLimit:
    async def test_session_creation_limit_is_shared_across_instances_through_redis(
        self, data_plane: LocalDataPlane, redis_url: str, tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        log_dir = tmp_path_factory.mktemp("limited")
        # A unique client IP per run: the Redis counters outlive this test.
        env = {
            "REDIS_URL": redis_url,
            "SESSION_CREATE_LIMIT_PER_HOUR": "3",
            "TRUSTED_PROXY_IPS": "127.0.0.1",
        }
        first = start_service(data_plane, log_dir, **env)
        second = start_service(data_plane, log_dir, **env)
        # A documentation-range IPv6 /64 (never contacted: it is only a header value);
        # each request comes from another host of the same /64, which shares one budget.
        prefix = f"2001:db8:{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}"
        try:
            statuses = []
            for host, service in enumerate((first, second, first, second), start=1):
                async with httpx.AsyncClient(base_url=service.base_url) as http:
                    response = await http.post(
                        "/api/v1/sessions",
                        headers={"Origin": SPA_ORIGIN, "X-Forwarded-For": f"{prefix}::{host}"},
                    )
                    statuses.append(response.status_code)
        finally:
            first.stop()
            second.stop()
        assert statuses == [201, 201, 201, 429]
