"""Live event streams are bounded: per subject and per instance, one shared read per write,
and a stream ends with the credential that opened it. All through real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio

from autopilot_api.core.config import Settings
from autopilot_api.core.security import mint_user_token
from autopilot_api.local.dataplane import LocalDataPlane
from tests.fixtures.factories import SPA_ORIGIN, make_user, token_issuer
from tests.fixtures.processes import ServiceProcess, start_service
from tests.fixtures.sse import SseMessage, collect, sse_messages

ASYNC = pytest.mark.asyncio(loop_scope="session")
COOKIE = "autopilot_session"
METRICS_TOKEN = secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def service(data_plane: LocalDataPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # A long heartbeat: nothing reads or ends a stream on a timer during a test.
    process = start_service(
        data_plane,
        tmp_path_factory.mktemp("stream-limits"),
        EVENTS_HEARTBEAT_SECONDS="60",
        EVENTS_MAX_STREAMS_PER_SUBJECT="10",
        METRICS_TOKEN=METRICS_TOKEN,
    )
    try:
        yield process.base_url
    finally:
        process.stop()


@pytest.fixture(scope="module")
def small_service(
    data_plane: LocalDataPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    process = start_service(
        data_plane,
        tmp_path_factory.mktemp("stream-cap"),
        EVENTS_MAX_STREAMS="3",
        # The instance cap alone: anonymous streams may take all of it here.
        EVENTS_ANONYMOUS_STREAMS_SHARE="1",
    )
    try:
        yield process
    finally:
        process.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def http(service: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=service,
        headers={"Origin": SPA_ORIGIN},
        timeout=httpx.Timeout(30, read=70),
        limits=httpx.Limits(max_connections=50),
    ) as client:
        yield client


async def cookie_for(http: httpx.AsyncClient) -> dict[str, str]:
    response = await http.post("/api/v1/sessions")
    assert response.status_code == 201, response.text
    token = response.cookies[COOKIE]
    http.cookies.clear()
    return {"Cookie": f"{COOKIE}={token}"}


async def open_stream(
    stack: contextlib.AsyncExitStack, http: httpx.AsyncClient, headers: dict[str, str]
) -> AsyncIterator[SseMessage]:
    response = await stack.enter_async_context(
        http.stream("GET", "/api/v1/events", headers=headers)
    )
    assert response.status_code == 200
    messages = sse_messages(response)
    hello = await anext(messages)
    assert hello.comments == ["connected"]
    return messages


async def rest_of_stream(messages: AsyncIterator[SseMessage], timeout: float) -> list[SseMessage]:
    """Everything up to the stream's end; fails if it has not ended within `timeout`."""

    async def drain() -> list[SseMessage]:
        return [m async for m in messages if m.event is not None]

    return await asyncio.wait_for(drain(), timeout=timeout)


async def event_reads(http: httpx.AsyncClient) -> float:
    scrape = await http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert scrape.status_code == 200
    found = re.search(r"^autopilot_event_reads_total (\S+)$", scrape.text, re.MULTILINE)
    assert found, "the event read counter is exported"
    return float(found.group(1))


@ASYNC
class TestStreamCaps:
    async def test_eleventh_stream_of_a_subject_ends_the_oldest_and_is_served(
        self, http: httpx.AsyncClient
    ) -> None:
        cookie = await cookie_for(http)
        async with contextlib.AsyncExitStack() as stack:
            streams = [await open_stream(stack, http, cookie) for _ in range(11)]
            assert await rest_of_stream(streams[0], timeout=5) == []
            put = await http.put("/api/v1/sessions/me", headers=cookie, json={"timeframe": "x"})
            assert put.status_code == 200, put.text
            for messages in (streams[1], streams[10]):
                (event,) = await collect(messages, events=1)
                assert event.event == "updated"

    async def test_instance_cap_answers_503_with_retry_after(
        self, small_service: ServiceProcess
    ) -> None:
        async with httpx.AsyncClient(
            base_url=small_service.base_url, headers={"Origin": SPA_ORIGIN}, timeout=30
        ) as http:
            cookies = [await cookie_for(http) for _ in range(4)]
            async with contextlib.AsyncExitStack() as stack:
                # Held: a dropped reader would close its connection.
                held = [await open_stream(stack, http, cookie) for cookie in cookies[:3]]
                refused = await http.get("/api/v1/events", headers=cookies[3], timeout=10)
                assert refused.status_code == 503
                assert refused.headers["retry-after"] == "5"
                assert refused.json()["error"]["code"] == "too_many_streams"
                assert len(held) == 3
            # Closed streams free their places.
            async with contextlib.AsyncExitStack() as stack:
                await open_stream(stack, http, cookies[3])


@ASYNC
class TestSharedRead:
    async def test_streams_of_a_subject_share_one_read_per_write_and_get_every_id_in_order(
        self, http: httpx.AsyncClient
    ) -> None:
        cookie = await cookie_for(http)
        async with contextlib.AsyncExitStack() as stack:
            streams = [await open_stream(stack, http, cookie) for _ in range(6)]
            before = await event_reads(http)
            # One write at a time: each wakes the feed once, and one read serves six streams.
            for index in range(3):
                put = await http.put(
                    "/api/v1/sessions/me", headers=cookie, json={"timeframe": f"one-{index}"}
                )
                assert put.status_code == 200, put.text
                got = await asyncio.gather(*(collect(s, events=1) for s in streams))
                assert len({m[0].id for m in got}) == 1
            assert await event_reads(http) - before == 3

            # A burst: at most one read per write, never one per stream.
            before = await event_reads(http)
            burst = 10
            puts = await asyncio.gather(
                *(
                    http.put("/api/v1/sessions/me", headers=cookie, json={"timeframe": f"b{i}"})
                    for i in range(burst)
                )
            )
            assert all(p.status_code == 200 for p in puts), [p.text for p in puts]
            got = await asyncio.gather(*(collect(s, events=burst) for s in streams))
            reads = await event_reads(http) - before
            assert 1 <= reads <= burst, reads
        ids = [[int(m.id or 0) for m in messages] for messages in got]
        assert all(each == ids[0] for each in ids)
        assert ids[0] == sorted(set(ids[0]))

    async def test_a_reconnect_replays_then_joins_the_live_feed_without_gaps_or_duplicates(
        self, http: httpx.AsyncClient
    ) -> None:
        cookie = await cookie_for(http)
        async with contextlib.AsyncExitStack() as stack:
            watcher = await open_stream(stack, http, cookie)
            await http.put("/api/v1/sessions/me", headers=cookie, json={"timeframe": "a"})
            (first,) = await collect(watcher, events=1)
            for index in range(3):
                await http.put(
                    "/api/v1/sessions/me", headers=cookie, json={"timeframe": f"m{index}"}
                )
            missed = await collect(watcher, events=3)
            resumed = await open_stream(stack, http, {**cookie, "Last-Event-ID": str(first.id)})
            replayed = await collect(resumed, events=3)
            await http.put("/api/v1/sessions/me", headers=cookie, json={"timeframe": "live"})
            (live,) = await collect(resumed, events=1)
            (live_too,) = await collect(watcher, events=1)
        assert [m.id for m in replayed] == [m.id for m in missed]
        assert live.id == live_too.id
        assert int(live.id or 0) > int(replayed[-1].id or 0)


@ASYNC
class TestStreamEndsWithItsCredential:
    async def test_bearer_stream_closes_when_the_token_expires(
        self, http: httpx.AsyncClient, settings: Settings
    ) -> None:
        assert settings.supabase_jwt_secret
        token = mint_user_token(
            settings.supabase_jwt_secret,
            issuer=token_issuer(settings),
            user_id=make_user(settings).id,
            email="short@example.test",
            lifetime_seconds=3,
        )
        opened = time.monotonic()
        async with contextlib.AsyncExitStack() as stack:
            messages = await open_stream(stack, http, {"Authorization": f"Bearer {token}"})
            await rest_of_stream(messages, timeout=8)
        # exp is whole seconds: 2 to 3 s after minting, and the stream ends right then.
        assert 1.5 <= time.monotonic() - opened <= 4.5

    async def test_ticket_stream_closes_when_the_token_it_was_traded_for_expires(
        self, http: httpx.AsyncClient, settings: Settings
    ) -> None:
        assert settings.supabase_jwt_secret
        token = mint_user_token(
            settings.supabase_jwt_secret,
            issuer=token_issuer(settings),
            user_id=make_user(settings).id,
            email="ticket@example.test",
            lifetime_seconds=3,
        )
        opened = time.monotonic()
        issued = await http.post(
            "/api/v1/events/ticket", headers={"Authorization": f"Bearer {token}"}
        )
        assert issued.status_code == 201, issued.text
        ticket = issued.json()["ticket"]
        async with http.stream("GET", "/api/v1/events", params={"ticket": ticket}) as stream:
            messages = sse_messages(stream)
            assert (await anext(messages)).comments == ["connected"]
            await rest_of_stream(messages, timeout=8)
        assert 1.5 <= time.monotonic() - opened <= 4.5

    async def test_session_stream_delivers_deleted_then_closes(
        self, http: httpx.AsyncClient
    ) -> None:
        cookie = await cookie_for(http)
        async with contextlib.AsyncExitStack() as stack:
            messages = await open_stream(stack, http, cookie)
            deleted = await http.delete("/api/v1/sessions/me", headers=cookie)
            assert deleted.status_code == 204, deleted.text
            events = await rest_of_stream(messages, timeout=10)
        assert [e.event for e in events] == ["deleted"]

    async def test_session_stream_delivers_claimed_then_closes(
        self, http: httpx.AsyncClient, settings: Settings
    ) -> None:
        cookie = await cookie_for(http)
        user = make_user(settings)
        async with contextlib.AsyncExitStack() as stack:
            messages = await open_stream(stack, http, cookie)
            claimed = await http.post("/api/v1/sessions/claim", headers={**cookie, **user.headers})
            assert claimed.status_code == 200, claimed.text
            events = await rest_of_stream(messages, timeout=10)
        assert [e.event for e in events] == ["claimed"]
