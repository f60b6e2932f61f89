"""The reconnect rule of a ticket-opened event stream, over real HTTP.

A browser's EventSource reconnects to the URL it was opened with (the spent ticket in it)
and can add nothing but Last-Event-ID and its cookies. The ticket's first use sets a stream
cookie; a reconnect needs the spent ticket AND a live stream cookie of the same user. The
ticket alone, someone else's cookie, or the cookie alone open nothing."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from typing import TYPE_CHECKING

import httpx
import pytest
import pytest_asyncio

from autopilot_api.core.config import Settings
from autopilot_api.core.security import hash_session_token, mint_user_token
from autopilot_api.local.dataplane import LocalDataPlane
from autopilot_api.services.event_service import STREAM_CREDENTIAL_GRACE_SECONDS
from tests.fixtures.factories import SPA_ORIGIN, make_user, token_issuer
from tests.fixtures.processes import ServiceProcess, start_service
from tests.fixtures.sse import SseMessage, collect, sse_messages

if TYPE_CHECKING:
    from tests.fixtures.factories import TestUser

ASYNC = pytest.mark.asyncio(loop_scope="session")
STREAM_COOKIE = "autopilot_events"
MAX_STREAM_SECONDS = 30


@pytest.fixture(scope="module")
def service(
    data_plane: LocalDataPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    process = start_service(
        data_plane,
        tmp_path_factory.mktemp("stream-cookie"),
        EVENTS_MAX_STREAM_SECONDS=str(MAX_STREAM_SECONDS),
    )
    try:
        yield process
    finally:
        process.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def http(service: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    # No cookie jar worth the name: every request states the cookies it sends.
    async with httpx.AsyncClient(
        base_url=service.base_url,
        headers={"Origin": SPA_ORIGIN},
        timeout=httpx.Timeout(10, read=MAX_STREAM_SECONDS + 10),
    ) as client:
        yield client


def stream_cookie_of(response: httpx.Response) -> SimpleCookie:
    cookies = SimpleCookie()
    for header in response.headers.get_list("set-cookie"):
        cookies.load(header)
    return cookies


async def ticket_for(http: httpx.AsyncClient, user: TestUser) -> str:
    response = await http.post("/api/v1/events/ticket", headers=user.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["ticket"])


async def open_stream(
    http: httpx.AsyncClient, ticket: str, **headers: str
) -> tuple[httpx.Response, SseMessage]:
    """Opens the stream, reads its first frame, leaves."""
    async with http.stream(
        "GET", "/api/v1/events", params={"ticket": ticket}, headers=headers
    ) as r:
        assert r.status_code == 200, (await r.aread()).decode()
        return r, await anext(sse_messages(r))


async def refused(http: httpx.AsyncClient, ticket: str | None, **headers: str) -> dict[str, str]:
    params = {"ticket": ticket} if ticket is not None else {}
    response = await http.get("/api/v1/events", params=params, headers=headers)
    assert response.status_code == 401, response.text
    error: dict[str, str] = response.json()["error"]
    return error


@ASYNC
class TestTicketReconnect:
    async def test_first_use_sets_an_http_only_stream_cookie_on_the_events_path(
        self, http: httpx.AsyncClient, settings: Settings
    ) -> None:
        ticket = await ticket_for(http, make_user(settings))
        response, connected = await open_stream(http, ticket)
        cookie = stream_cookie_of(response)[STREAM_COOKIE]
        assert connected.comments == ["connected"]
        assert connected.id == "0"  # a stream dropped before its first event resumes here
        assert cookie["path"] == "/api/v1/events"
        assert cookie["httponly"] is True
        assert cookie["samesite"].lower() == "lax"
        lifetime = MAX_STREAM_SECONDS + STREAM_CREDENTIAL_GRACE_SECONDS
        assert lifetime - 5 <= int(cookie["max-age"]) <= lifetime
        assert len(cookie.value) == 64
        assert cookie.value != ticket

    async def test_spent_ticket_reconnects_only_with_its_users_stream_cookie(
        self, http: httpx.AsyncClient, settings: Settings, rest: httpx.AsyncClient
    ) -> None:
        user, other = make_user(settings), make_user(settings)
        ticket = await ticket_for(http, user)
        first, _ = await open_stream(http, ticket)
        mine = stream_cookie_of(first)[STREAM_COOKIE].value
        other_first, _ = await open_stream(http, await ticket_for(http, other))
        theirs = stream_cookie_of(other_first)[STREAM_COOKIE].value

        # The browser is away; writes land in the gap.
        for index in range(4):
            put = await http.put(
                "/api/v1/discovery", headers=user.headers, json={"timeframe": f"t{index}"}
            )
            assert put.status_code in (200, 201), put.text
        stored = (
            await rest.get(
                "/session_events",
                params={"profile_id": f"eq.{user.id}", "select": "id", "order": "id"},
            )
        ).json()
        ids = [row["id"] for row in stored]
        assert len(ids) == 5  # created, then an update per write

        assert (await refused(http, ticket))["code"] == "invalid_ticket"
        assert (await refused(http, ticket, Cookie=f"{STREAM_COOKIE}={theirs}"))[
            "code"
        ] == "invalid_ticket"
        # The cookie alone is no identity, and it opens no ticket but its user's.
        await refused(http, None, Cookie=f"{STREAM_COOKIE}={mine}")
        await refused(http, "not-a-ticket", Cookie=f"{STREAM_COOKIE}={mine}")

        async with http.stream(
            "GET",
            "/api/v1/events",
            params={"ticket": ticket},
            headers={"Cookie": f"{STREAM_COOKIE}={mine}", "Last-Event-ID": str(ids[0])},
        ) as again:
            assert again.status_code == 200
            renewed = stream_cookie_of(again)[STREAM_COOKIE]
            replayed = await collect(sse_messages(again), events=4)
        assert [int(m.id or 0) for m in replayed] == ids[1:]
        assert {m.data["profileId"] for m in replayed} == {str(user.id)}
        assert renewed.value == mine
        assert int(renewed["max-age"]) > MAX_STREAM_SECONDS

        # Stored hashed, bound to the user, expiring no later than the access token.
        rows = (
            await rest.get(
                "/event_stream_credentials",
                params={"credential_hash": f"eq.{hash_session_token(mine)}"},
            )
        ).json()
        assert [row["profile_id"] for row in rows] == [str(user.id)]
        assert datetime.fromisoformat(rows[0]["not_after"]) <= datetime.now(UTC) + timedelta(
            hours=1
        )

    async def test_an_expired_stream_cookie_or_token_ends_the_reconnects(
        self, http: httpx.AsyncClient, settings: Settings, rest: httpx.AsyncClient
    ) -> None:
        user = make_user(settings)
        ticket = await ticket_for(http, user)
        first, _ = await open_stream(http, ticket)
        mine = f"{STREAM_COOKIE}={stream_cookie_of(first)[STREAM_COOKIE].value}"
        await open_stream(http, ticket, Cookie=mine)

        past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
        expired = await rest.patch(
            "/event_stream_credentials",
            params={"profile_id": f"eq.{user.id}"},
            json={"expires_at": past},
        )
        assert expired.status_code == 204, expired.text
        await refused(http, ticket, Cookie=mine)

        # A fresh ticket of the same user, whose token then "expires".
        ticket = await ticket_for(http, user)
        first, _ = await open_stream(http, ticket)
        mine = f"{STREAM_COOKIE}={stream_cookie_of(first)[STREAM_COOKIE].value}"
        ticket_hash = hash_session_token(ticket)
        ended = await rest.patch(
            "/event_tickets",
            params={"ticket_hash": f"eq.{ticket_hash}"},
            json={"expires_at": past, "not_after": past},
        )
        assert ended.status_code == 204, ended.text
        await refused(http, ticket, Cookie=mine)

    async def test_a_stream_ends_when_the_access_token_that_opened_it_expires(
        self, http: httpx.AsyncClient, settings: Settings, data_plane: LocalDataPlane
    ) -> None:
        assert settings.supabase_jwt_secret
        token = mint_user_token(
            settings.supabase_jwt_secret,
            issuer=token_issuer(settings),
            user_id=uuid.uuid4(),
            email="short@example.test",
            lifetime_seconds=3,
        )
        ticket = (
            await http.post("/api/v1/events/ticket", headers={"Authorization": f"Bearer {token}"})
        ).json()["ticket"]
        started = time.monotonic()
        by_ticket, by_bearer = await asyncio.gather(
            http.get("/api/v1/events", params={"ticket": ticket}),
            http.get("/api/v1/events", headers={"Authorization": f"Bearer {token}"}),
        )
        # Both ended well before EVENTS_MAX_STREAM_SECONDS: the token's exp came first.
        assert time.monotonic() - started < MAX_STREAM_SECONDS / 2
        assert by_ticket.status_code == 200
        assert int(stream_cookie_of(by_ticket)[STREAM_COOKIE]["max-age"]) <= 3
        assert by_bearer.status_code == 200
        assert by_bearer.text.startswith(": connected")

    async def test_a_new_event_source_resumes_from_the_last_event_id_in_its_url(
        self, http: httpx.AsyncClient, settings: Settings, rest: httpx.AsyncClient
    ) -> None:
        user = make_user(settings)
        for index in range(3):
            put = await http.put(
                "/api/v1/discovery", headers=user.headers, json={"timeframe": f"t{index}"}
            )
            assert put.status_code in (200, 201), put.text
        stored = await rest.get(
            "/session_events",
            params={"profile_id": f"eq.{user.id}", "select": "id", "order": "id"},
        )
        ids = [row["id"] for row in stored.json()]
        assert len(ids) == 4

        ticket = await ticket_for(http, user)
        url_params = {"ticket": ticket, "lastEventId": str(ids[1])}
        async with http.stream("GET", "/api/v1/events", params=url_params) as first:
            assert first.status_code == 200
            cookie = stream_cookie_of(first)[STREAM_COOKIE].value
            replayed = await collect(sse_messages(first), events=2)
        assert [int(m.id or 0) for m in replayed] == ids[2:]

        # The browser's own reconnect to that URL sends a newer Last-Event-ID: it wins.
        async with http.stream(
            "GET",
            "/api/v1/events",
            params=url_params,
            headers={"Cookie": f"{STREAM_COOKIE}={cookie}", "Last-Event-ID": str(ids[2])},
        ) as again:
            assert again.status_code == 200
            (only,) = await collect(sse_messages(again), events=1)
        assert int(only.id or 0) == ids[3]
