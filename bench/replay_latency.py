"""Time to replay 100 missed events on a reconnect with Last-Event-ID.

Starts the local data plane and the service as a real process; for each round, a
visitor's stream sees one event and disconnects, 100 updates happen, and the stream
reconnects with Last-Event-ID: reported is the time from the reconnect request to the
100th replayed event. Usage: python -m bench.replay_latency [ROUNDS]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time

import httpx

from bench.harness import service_on_fresh_data_plane
from tests.fixtures.factories import SPA_ORIGIN
from tests.fixtures.sse import collect, sse_messages

MISSED = 100


async def one_round(http: httpx.AsyncClient) -> float:
    token = (await http.post("/api/v1/sessions")).cookies["autopilot_session"]
    http.cookies.clear()
    cookie = {"Cookie": f"autopilot_session={token}"}
    async with http.stream("GET", "/api/v1/events", headers=cookie) as stream:
        messages = sse_messages(stream)
        await anext(messages)
        await http.put("/api/v1/sessions/me", headers=cookie, json={"timeframe": "seen"})
        (seen,) = await collect(messages, events=1)
    for index in range(MISSED):
        await http.put("/api/v1/sessions/me", headers=cookie, json={"timeframe": f"t{index}"})
    started = time.perf_counter()
    async with http.stream(
        "GET", "/api/v1/events", headers={**cookie, "Last-Event-ID": str(seen.id)}
    ) as stream:
        replayed = await collect(sse_messages(stream), events=MISSED, timeout=30)
    elapsed = (time.perf_counter() - started) * 1000
    assert len(replayed) == MISSED
    return elapsed


async def measure(base_url: str, rounds: int) -> dict[str, float]:
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Origin": SPA_ORIGIN}, timeout=60
    ) as http:
        timings = [await one_round(http) for _ in range(rounds)]
    return {
        "rounds": rounds,
        "missed_events": MISSED,
        "replay_ms_median": statistics.median(timings),
        "replay_ms_max": max(timings),
    }


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with service_on_fresh_data_plane() as (_, service):
        print(json.dumps(asyncio.run(measure(service.base_url, rounds)), indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
