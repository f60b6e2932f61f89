"""The live feed keeps up under a burst and sends a late commit once, over real HTTP.

A burst of 2,000 events for one subject, written straight into `session_events` (as the SQL
functions do, one transaction each) with a PUT now and then to wake the feeds through the
real write path: every open stream of that subject receives every event, in id order, none
twice. How fast it catches up is measured by `bench/event_streams.py`, not asserted here;
the wait after the burst is only bounded by half the late-commit window, which the feed that
re-read the window's oldest 500 rows on every poll needed to pass before it moved on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import psycopg
import pytest
import pytest_asyncio

from autopilot_api.local.dataplane import LocalDataPlane
from tests.conftest import plane_info
from tests.fixtures.factories import SPA_ORIGIN
from tests.fixtures.processes import start_service
from tests.fixtures.sse import SseMessage, collect, sse_messages

ASYNC = pytest.mark.asyncio(loop_scope="session")
COOKIE = "autopilot_session"
BURST = 2000
STREAMS = 3
HANG_GUARD_SECONDS = 240
# After the burst's last write (see above): far from the goal of about a second, and half
# of the 30 s for which a burst's first rows stay in the late-commit window.
AFTER_BURST_GUARD_SECONDS = 15

RECORD = "select autopilot_private.record_event(%s::uuid, null, 'updated', 'system', 'burst', %s)"


@pytest.fixture(scope="module")
def base_url(data_plane: LocalDataPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Events written by SQL publish no wake-up: the feeds find them at their heartbeat poll.
    process = start_service(
        data_plane, tmp_path_factory.mktemp("stream-burst"), EVENTS_HEARTBEAT_SECONDS="0.5"
    )
    try:
        yield process.base_url
    finally:
        process.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=base_url,
        headers={"Origin": SPA_ORIGIN},
        timeout=httpx.Timeout(30, read=HANG_GUARD_SECONDS),
    ) as client:
        yield client


async def new_session(http: httpx.AsyncClient) -> tuple[uuid.UUID, dict[str, str]]:
    response = await http.post("/api/v1/sessions")
    assert response.status_code == 201, response.text
    token = response.cookies[COOKIE]
    http.cookies.clear()
    return uuid.UUID(response.json()["id"]), {"Cookie": f"{COOKIE}={token}"}


async def open_stream(
    stack: contextlib.AsyncExitStack, http: httpx.AsyncClient, headers: dict[str, str]
) -> AsyncIterator[SseMessage]:
    response = await stack.enter_async_context(
        http.stream("GET", "/api/v1/events", headers=headers)
    )
    assert response.status_code == 200, await response.aread()
    messages = sse_messages(response)
    assert (await anext(messages)).comments == ["connected"]
    return messages


def stored_ids(database_url: str, session_id: uuid.UUID) -> list[int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "select id from autopilot.session_events where session_id = %s order by id",
            (session_id,),
        ).fetchall()
    return [int(row[0]) for row in rows]


def write_burst(database_url: str, session_id: uuid.UUID, count: int, *, start: int) -> None:
    """`count` events, each committed on its own, as fast as one connection goes."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        for index in range(start, start + count):
            conn.execute(RECORD, (session_id, json.dumps({"burst": index})))


@ASYNC
async def test_a_burst_of_2000_events_reaches_every_stream_in_order_once(
    http: httpx.AsyncClient, data_plane: LocalDataPlane
) -> None:
    database_url = plane_info(data_plane).database_url
    session_id, cookie = await new_session(http)
    before = set(stored_ids(database_url, session_id))
    async with contextlib.AsyncExitStack() as stack:
        streams = [await open_stream(stack, http, cookie) for _ in range(STREAMS)]
        readers = [
            asyncio.create_task(collect(s, events=BURST + 4, timeout=HANG_GUARD_SECONDS))
            for s in streams
        ]
        # Four slices, each followed by a write through the API: its wake-up reaches the
        # feeds mid-burst, as a real writer's would.
        for part in range(4):
            await asyncio.to_thread(
                write_burst, database_url, session_id, BURST // 4, start=part * BURST // 4
            )
            put = await http.put(
                "/api/v1/sessions/me", headers=cookie, json={"timeframe": f"slice {part}"}
            )
            assert put.status_code == 200, put.text
        received = await asyncio.wait_for(
            asyncio.gather(*readers), timeout=AFTER_BURST_GUARD_SECONDS
        )
    expected = [i for i in stored_ids(database_url, session_id) if i not in before]
    assert len(expected) == BURST + 4
    for messages in received:
        assert [int(m.id or 0) for m in messages] == expected
    bursts = [m.data["payload"]["burst"] for m in received[0] if "burst" in m.data["payload"]]
    assert bursts == list(range(BURST))


@ASYNC
async def test_a_late_commit_below_the_feeds_position_is_sent_once(
    http: httpx.AsyncClient, data_plane: LocalDataPlane
) -> None:
    """A transaction holds an event (its id taken) while later ones commit and are sent;
    when it commits, every stream gets it, once, and the feed goes on after it."""
    database_url = plane_info(data_plane).database_url
    session_id, cookie = await new_session(http)
    async with contextlib.AsyncExitStack() as stack:
        streams = [await open_stream(stack, http, cookie) for _ in range(2)]
        late = await asyncio.to_thread(psycopg.connect, database_url)
        stack.callback(late.close)
        await asyncio.to_thread(late.execute, RECORD, (session_id, json.dumps({"late": True})))
        row = await asyncio.to_thread(
            lambda: late.execute("select currval('autopilot.session_events_id_seq')").fetchone()
        )
        assert row is not None
        late_id = int(row[0])
        await asyncio.to_thread(write_burst, database_url, session_id, 3, start=0)
        first = await asyncio.gather(*(collect(s, events=3) for s in streams))
        await asyncio.to_thread(late.commit)
        second = await asyncio.gather(*(collect(s, events=1) for s in streams))
        await asyncio.to_thread(write_burst, database_url, session_id, 1, start=3)
        third = await asyncio.gather(*(collect(s, events=1) for s in streams))
        # Nothing else follows: no second copy of the late event.
        put = await http.put("/api/v1/sessions/me", headers=cookie, json={"timeframe": "end"})
        assert put.status_code == 200, put.text
        fourth = await asyncio.gather(*(collect(s, events=1) for s in streams))
    for index in range(len(streams)):
        burst = [m.data["payload"].get("burst") for m in first[index]]
        assert burst == [0, 1, 2]
        (late_event,) = second[index]
        assert late_event.data["payload"] == {"late": True}
        assert int(late_event.id or 0) == late_id < int(first[index][0].id or 0)
        assert third[index][0].data["payload"] == {"burst": 3}
        assert fourth[index][0].data["actor"]["type"] == "session"


@ASYNC
class TestLastEventIdInTheQuery:
    async def test_an_id_past_bigint_is_refused_like_the_header(
        self, http: httpx.AsyncClient
    ) -> None:
        _, cookie = await new_session(http)
        for params, headers in (
            ({"lastEventId": str(2**64)}, {}),
            ({}, {"Last-Event-ID": str(2**64)}),
        ):
            response = await http.get("/api/v1/events", params=params, headers=headers | cookie)
            assert response.status_code == 422, response.text
            error = response.json()["error"]
            assert error["code"] == "validation_error"
            (detail,) = error["details"]
            assert detail["field"] in {"query lastEventId", "header Last-Event-ID"}

    async def test_the_largest_bigint_still_opens_a_stream(self, http: httpx.AsyncClient) -> None:
        _, cookie = await new_session(http)
        async with http.stream(
            "GET", "/api/v1/events", params={"lastEventId": str(2**63 - 1)}, headers=cookie
        ) as response:
            assert response.status_code == 200
            assert (await anext(sse_messages(response))).comments == ["connected"]
