"""One client cannot take the live streams everyone shares, over real HTTP.

Per client address (behind TRUSTED_PROXY_IPS, IPv6 by /64) a cap answered with 429; the
anonymous streams, which cost nothing to open, capped as a group so signed-in users always
find room; a subject that reconnects at a cap replaces its own stream, never another's; and
a stream whose client reads nothing gives its place back on time although the write blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import psycopg
import pytest
import pytest_asyncio

from autopilot_api.core.config import Settings
from autopilot_api.local.dataplane import LocalDataPlane
from tests.conftest import plane_info
from tests.fixtures.factories import SPA_ORIGIN, make_user
from tests.fixtures.processes import ServiceProcess, start_service
from tests.fixtures.sse import SseMessage, sse_messages

ASYNC = pytest.mark.asyncio(loop_scope="session")
COOKIE = "autopilot_session"
METRICS_TOKEN = secrets.token_urlsafe(24)
PER_ADDRESS = 3
INSTANCE = 8
# Half of INSTANCE: at most 4 anonymous streams.
ANONYMOUS_SHARE = "0.5"
# Only a bound on a hung test; nothing here asserts how fast a place comes back.
HANG_GUARD_SECONDS = 90


@pytest.fixture(scope="module")
def service(data_plane: LocalDataPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process = start_service(
        data_plane,
        tmp_path_factory.mktemp("stream-fair-share"),
        # The test speaks for many client addresses through X-Forwarded-For.
        TRUSTED_PROXY_IPS="127.0.0.1",
        EVENTS_HEARTBEAT_SECONDS="60",
        EVENTS_MAX_STREAMS=str(INSTANCE),
        EVENTS_MAX_STREAMS_PER_IP=str(PER_ADDRESS),
        EVENTS_ANONYMOUS_STREAMS_SHARE=ANONYMOUS_SHARE,
    )
    try:
        yield process.base_url
    finally:
        process.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def http(service: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=service,
        headers={"Origin": SPA_ORIGIN},
        timeout=httpx.Timeout(30, read=HANG_GUARD_SECONDS),
    ) as client:
        yield client


def address(index: int) -> str:
    return f"198.51.100.{index}"


async def anonymous(http: httpx.AsyncClient) -> dict[str, str]:
    response = await http.post("/api/v1/sessions")
    assert response.status_code == 201, response.text
    token = response.cookies[COOKIE]
    http.cookies.clear()
    return {"Cookie": f"{COOKIE}={token}"}


class Held:
    """Streams kept open: a reader dropped (garbage-collected) closes its connection."""

    def __init__(self, stack: contextlib.AsyncExitStack, http: httpx.AsyncClient) -> None:
        self.stack = stack
        self.http = http
        self.streams: list[AsyncIterator[SseMessage]] = []

    async def open(self, headers: dict[str, str], ip: str) -> AsyncIterator[SseMessage]:
        response = await self.stack.enter_async_context(
            self.http.stream("GET", "/api/v1/events", headers={**headers, "X-Forwarded-For": ip})
        )
        assert response.status_code == 200, (await response.aread()).decode()
        messages = sse_messages(response)
        assert (await anext(messages)).comments == ["connected"]
        self.streams.append(messages)
        return messages


async def refused(http: httpx.AsyncClient, headers: dict[str, str], ip: str) -> httpx.Response:
    async with http.stream(
        "GET", "/api/v1/events", headers={**headers, "X-Forwarded-For": ip}
    ) as response:
        assert response.status_code != 200, "the stream was expected to be refused"
        await response.aread()
    return response


async def ended(messages: AsyncIterator[SseMessage]) -> list[SseMessage]:
    """The rest of a stream the server ends (fails the test if it does not)."""

    async def drain() -> list[SseMessage]:
        return [m async for m in messages if m.event is not None]

    return await asyncio.wait_for(drain(), timeout=HANG_GUARD_SECONDS)


@ASYNC
class TestPerAddress:
    async def test_over_its_cap_an_address_gets_429_and_other_addresses_are_served(
        self, http: httpx.AsyncClient, settings: Settings
    ) -> None:
        async with contextlib.AsyncExitStack() as stack:
            held = Held(stack, http)
            for _ in range(PER_ADDRESS):
                await held.open(await anonymous(http), address(1))
            response = await refused(http, await anonymous(http), address(1))
            assert response.status_code == 429
            assert int(response.headers["retry-after"]) >= 1
            error = response.json()["error"]
            assert error["code"] == "too_many_streams_from_ip"
            assert error["category"] == "temporary"
            # A signed-in user at that address is under the same cap...
            user = make_user(settings)
            assert (await refused(http, user.headers, address(1))).status_code == 429
            # ...and another address, anonymous or signed in, is not.
            await held.open(await anonymous(http), address(2))
            await held.open(user.headers, address(3))
        # Closed streams give their places back.
        async with contextlib.AsyncExitStack() as stack:
            await Held(stack, http).open(await anonymous(http), address(1))

    async def test_ipv6_clients_are_counted_by_their_64(self, http: httpx.AsyncClient) -> None:
        async with contextlib.AsyncExitStack() as stack:
            held = Held(stack, http)
            for host in range(1, PER_ADDRESS + 1):
                await held.open(await anonymous(http), f"2001:db8:1:2::{host:x}")
            same_64 = await refused(http, await anonymous(http), "2001:db8:1:2:ffff::9")
            assert same_64.status_code == 429
            await held.open(await anonymous(http), "2001:db8:1:3::1")

    async def test_a_subject_at_the_cap_replaces_its_own_oldest_stream(
        self, http: httpx.AsyncClient
    ) -> None:
        """A browser reconnecting before its dead stream is noticed is not refused: it
        takes that subject's own oldest place at the address, nobody else's."""
        mine, other = await anonymous(http), await anonymous(http)
        async with contextlib.AsyncExitStack() as stack:
            held = Held(stack, http)
            first = await held.open(mine, address(4))
            second = await held.open(mine, address(4))
            neighbour = await held.open(other, address(4))
            reconnect = await held.open(mine, address(4))
            assert await ended(first) == []
            put = await http.put(
                "/api/v1/sessions/me",
                headers={**mine, "X-Forwarded-For": address(4)},
                json={"timeframe": "after the reconnect"},
            )
            assert put.status_code == 200, put.text
            for live in (second, reconnect):
                event = await anext(m async for m in live if m.event is not None)
                assert event.event == "updated"
            put = await http.put(
                "/api/v1/sessions/me",
                headers={**other, "X-Forwarded-For": address(4)},
                json={"timeframe": "the neighbour's"},
            )
            assert put.status_code == 200, put.text
            event = await anext(m async for m in neighbour if m.event is not None)
            assert event.event == "updated"


@ASYNC
class TestAnonymousShare:
    async def test_anonymous_streams_cannot_fill_the_instance(
        self, http: httpx.AsyncClient, settings: Settings
    ) -> None:
        anonymous_cap = int(INSTANCE * float(ANONYMOUS_SHARE))
        async with contextlib.AsyncExitStack() as stack:
            held = Held(stack, http)
            # Many addresses, one stream each: the per-address cap never binds.
            for index in range(anonymous_cap):
                await held.open(await anonymous(http), address(10 + index))
            response = await refused(http, await anonymous(http), address(30))
            assert response.status_code == 503
            assert response.headers["retry-after"]
            assert response.json()["error"]["code"] == "too_many_anonymous_streams"
            # Supabase's anonymous users cost nothing either: they count as anonymous.
            guest = make_user(settings, anonymous=True)
            assert (await refused(http, guest.headers, address(31))).status_code == 503
            # Signed-in users find the rest of the instance.
            users = [make_user(settings) for _ in range(INSTANCE - anonymous_cap)]
            for index, user in enumerate(users):
                await held.open(user.headers, address(40 + index))
            # Only now is the instance full, for everyone.
            response = await refused(http, make_user(settings).headers, address(50))
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "too_many_streams"


# --- a client that never reads ------------------------------------------------------------


@dataclass
class StalledClient:
    """A raw socket with a tiny receive buffer that reads its stream's first frame, then
    nothing."""

    sock: socket.socket

    @classmethod
    async def open(cls, base_url: str, cookie: dict[str, str]) -> StalledClient:
        host, port = base_url.removeprefix("http://").split(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, (host, int(port)))
        request = (
            f"GET /api/v1/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Accept: text/event-stream\r\nCookie: {cookie['Cookie']}\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        # The head and the first frame only (the stream is open and holds its place), then
        # nothing more.
        head = b""
        while b"connected" not in head:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1024), HANG_GUARD_SECONDS)
            assert chunk, "the server closed the stream"
            head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head
        return cls(sock)

    def close(self) -> None:
        self.sock.close()


def write_big_events(database_url: str, session_id: uuid.UUID, *, count: int, size: int) -> None:
    payload = json.dumps({"filler": "x" * size})
    with psycopg.connect(database_url, autocommit=True) as conn:
        for _ in range(count):
            conn.execute(
                "select autopilot_private.record_event("
                "%s::uuid, null, 'updated', 'system', 'test', %s)",
                (session_id, payload),
            )


async def streams_cut(http: httpx.AsyncClient, reason: str) -> float:
    scrape = await http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert scrape.status_code == 200
    found = re.search(
        rf'^autopilot_event_streams_cut_total{{reason="{reason}"}} (\S+)$', scrape.text, re.M
    )
    return float(found.group(1)) if found else 0.0


@pytest.fixture(
    scope="module",
    params=[
        # The send deadline: the client stopped reading long before the stream's end.
        {"EVENTS_SEND_TIMEOUT_SECONDS": "2", "EVENTS_MAX_STREAM_SECONDS": "3600"},
        # The stream's end: a blocked write does not carry it past EVENTS_MAX_STREAM_SECONDS.
        pytest.param(
            {"EVENTS_SEND_TIMEOUT_SECONDS": "300", "EVENTS_MAX_STREAM_SECONDS": "8"},
            marks=pytest.mark.slow,  # waits out the stream's 8 seconds
        ),
    ],
    ids=["send-timeout", "stream-lifetime"],
)
def stall_service(
    request: pytest.FixtureRequest,
    data_plane: LocalDataPlane,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    process = start_service(
        data_plane,
        tmp_path_factory.mktemp("stream-stall"),
        EVENTS_HEARTBEAT_SECONDS="0.5",
        # One stream per address: the stalled client's place is observable as a 429.
        EVENTS_MAX_STREAMS_PER_IP="1",
        METRICS_TOKEN=METRICS_TOKEN,
        **request.param,
    )
    try:
        yield process
    finally:
        process.stop()


@ASYNC
async def test_a_client_that_never_reads_gives_its_place_back(
    stall_service: ServiceProcess, data_plane: LocalDataPlane
) -> None:
    database_url = plane_info(data_plane).database_url
    async with httpx.AsyncClient(
        base_url=stall_service.base_url, headers={"Origin": SPA_ORIGIN}, timeout=30
    ) as http:
        created = await http.post("/api/v1/sessions")
        assert created.status_code == 201, created.text
        stalled_cookie = {"Cookie": f"{COOKIE}={created.cookies[COOKIE]}"}
        stalled_session = uuid.UUID(created.json()["id"])
        http.cookies.clear()
        probe_cookie = await anonymous(http)
        cut_before = await streams_cut(http, "stalled")

        client = await StalledClient.open(stall_service.base_url, stalled_cookie)
        try:
            # Its stream holds the address's one place...
            async def probe() -> int:
                async with http.stream("GET", "/api/v1/events", headers=probe_cookie) as response:
                    return response.status_code

            async def until(status: int) -> None:
                while await probe() != status:
                    await asyncio.sleep(0.2)

            assert await probe() == 429
            # ...while far more than its socket buffers hold is written to it.
            await asyncio.to_thread(
                write_big_events, database_url, stalled_session, count=80, size=50_000
            )
            # The write blocks; the deadline ends the stream and frees the place anyway.
            await asyncio.wait_for(until(200), timeout=HANG_GUARD_SECONDS)
        finally:
            client.close()
        assert await streams_cut(http, "stalled") == cut_before + 1
