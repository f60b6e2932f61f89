"""The target for live streams on one instance (make check-reliability, not make test):
300 subjects x 5 streams = 1,500 streams all served and receiving, 30 writes/s spread over
the subjects, and another visitor's GET /sessions/me p50 under 2x its idle value."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from autopilot_api.local.dataplane import LocalDataPlane
from tests.fixtures.factories import SPA_ORIGIN
from tests.fixtures.processes import start_service
from tests.fixtures.sse import sse_messages

ASYNC = pytest.mark.asyncio(loop_scope="session")
SUBJECTS = int(os.environ.get("EVENTS_SCALE_SUBJECTS", "300"))
PER_SUBJECT = int(os.environ.get("EVENTS_SCALE_PER_SUBJECT", "5"))
WRITES_PER_SECOND = 30
SECONDS = 10

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("EVENTS_SCALE") != "1", reason="make check-reliability runs this"
    ),
]


# The neighbour runs in its own process: the 1,500 stream readers of this one would
# otherwise slow its client, not the server.
NEIGHBOUR = """
import statistics, sys, time, httpx
base, cookie, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
times = []
with httpx.Client(base_url=base, headers={"Cookie": cookie}, timeout=60) as http:
    for _ in range(count):
        started = time.perf_counter()
        assert http.get("/api/v1/sessions/me").status_code == 200
        times.append(time.perf_counter() - started)
        time.sleep(0.05)
print(statistics.median(times))
"""


async def neighbour_p50(base_url: str, cookie: dict[str, str], count: int) -> float:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        NEIGHBOUR,
        base_url,
        cookie["Cookie"],
        str(count),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    return float(out)


@ASYNC
async def test_1500_streams_30_writes_a_second_and_a_quiet_neighbour(
    data_plane: LocalDataPlane, tmp_path: Path
) -> None:
    # Every stream comes from this one address and is anonymous: the per-IP and anonymous
    # caps (test_event_stream_fair_share.py) would refuse most of them.
    service = start_service(
        data_plane,
        tmp_path,
        EVENTS_HEARTBEAT_SECONDS="60",
        EVENTS_MAX_STREAMS_PER_IP=str(SUBJECTS * PER_SUBJECT),
        EVENTS_ANONYMOUS_STREAMS_SHARE="1",
    )
    limits = httpx.Limits(max_connections=SUBJECTS * PER_SUBJECT + 50)
    timeout = httpx.Timeout(60, read=120)
    received: Counter[int] = Counter()
    try:
        async with (
            httpx.AsyncClient(
                base_url=service.base_url,
                headers={"Origin": SPA_ORIGIN},
                limits=limits,
                timeout=timeout,
            ) as http,
            httpx.AsyncClient(
                base_url=service.base_url, headers={"Origin": SPA_ORIGIN}, timeout=timeout
            ) as neighbour,
        ):
            cookies = []
            for _ in range(SUBJECTS):
                response = await http.post("/api/v1/sessions")
                cookies.append(
                    {"Cookie": f"autopilot_session={response.cookies['autopilot_session']}"}
                )
                http.cookies.clear()
            mine = await neighbour.post("/api/v1/sessions")
            assert mine.status_code == 201
            me = {"Cookie": f"autopilot_session={mine.cookies['autopilot_session']}"}
            neighbour.cookies.clear()
            idle = await neighbour_p50(service.base_url, me, 40)

            statuses: Counter[int] = Counter()
            async with contextlib.AsyncExitStack() as stack:

                async def hold(index: int) -> None:
                    response = await stack.enter_async_context(
                        http.stream("GET", "/api/v1/events", headers=cookies[index % SUBJECTS])
                    )
                    statuses[response.status_code] += 1
                    if response.status_code != 200:
                        return
                    messages = sse_messages(response)
                    await anext(messages)
                    tasks.append(asyncio.create_task(read(index, messages)))

                async def read(index: int, messages: object) -> None:
                    async for message in messages:  # type: ignore[attr-defined]
                        if message.event is not None:
                            received[index] += 1

                tasks: list[asyncio.Task[None]] = []
                opened = time.perf_counter()
                for start in range(0, SUBJECTS * PER_SUBJECT, 100):
                    await asyncio.gather(
                        *(hold(i) for i in range(start, min(start + 100, SUBJECTS * PER_SUBJECT)))
                    )
                open_seconds = time.perf_counter() - opened

                async def write() -> None:
                    for tick in range(SECONDS * WRITES_PER_SECOND):
                        cookie = cookies[tick % SUBJECTS]
                        asyncio.create_task(
                            http.put(
                                "/api/v1/sessions/me",
                                headers=cookie,
                                json={"timeframe": f"w{tick}"},
                            )
                        )
                        await asyncio.sleep(1 / WRITES_PER_SECOND)

                writer = asyncio.create_task(write())
                busy = await neighbour_p50(service.base_url, me, 100)
                await writer
                await asyncio.sleep(3)
                for task in tasks:
                    task.cancel()
        written = min(SECONDS * WRITES_PER_SECOND, SUBJECTS)
        streams_with_events = sum(1 for i in range(SUBJECTS * PER_SUBJECT) if received[i] > 0)
        print(  # noqa: T201 - make check-reliability shows the figures
            f"\nstreams: {dict(statuses)} opened in {open_seconds:.1f} s; "
            f"streams that received events: {streams_with_events} "
            f"(subjects written: {written} x {PER_SUBJECT}); "
            f"neighbour GET /sessions/me p50 idle {idle * 1000:.1f} ms, "
            f"busy {busy * 1000:.1f} ms ({busy / idle:.2f}x)"
        )
        assert statuses == {200: SUBJECTS * PER_SUBJECT}
        assert streams_with_events == written * PER_SUBJECT
        assert busy < 2 * idle
    finally:
        service.stop()
