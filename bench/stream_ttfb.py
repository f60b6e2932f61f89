"""Server time to the first streamed byte of a chat reply, against an instant local model.

Starts the local data plane, a fake OpenAI-compatible model that answers instantly, and
the service as a real process; then, at concurrency 1, posts N streamed messages and
reports the median and p99 of the time to the first body byte and to the first delta.
Usage: python -m bench.stream_ttfb [N]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from autopilot_api.local.dataplane import LocalDataPlane
from tests.fixtures.factories import SPA_ORIGIN
from tests.fixtures.fake_openai import FakeOpenAIServer
from tests.fixtures.processes import start_service


async def measure(base_url: str, count: int) -> dict[str, float]:
    first_byte: list[float] = []
    first_delta: list[float] = []
    async with httpx.AsyncClient(base_url=base_url, headers={"Origin": SPA_ORIGIN}) as http:
        conversation = (await http.post("/api/v1/conversations", json={})).json()["id"]
        for index in range(count + 5):
            started = time.perf_counter()
            got_byte = got_delta = None
            async with http.stream(
                "POST",
                f"/api/v1/conversations/{conversation}/messages",
                json={"content": f"message {index}"},
                headers={"Accept": "text/event-stream"},
            ) as response:
                async for chunk in response.aiter_raw():
                    now = time.perf_counter()
                    got_byte = got_byte or now
                    if got_delta is None and b"event: delta" in chunk:
                        got_delta = now
            if index >= 5 and got_byte and got_delta:  # the first few warm the pools up
                first_byte.append((got_byte - started) * 1000)
                first_delta.append((got_delta - started) * 1000)

    def p99(values: list[float]) -> float:
        return sorted(values)[max(int(len(values) * 0.99) - 1, 0)]

    return {
        "n": float(len(first_byte)),
        "first_byte_p50_ms": statistics.median(first_byte),
        "first_byte_p99_ms": p99(first_byte),
        "first_delta_p50_ms": statistics.median(first_delta),
        "first_delta_p99_ms": p99(first_delta),
    }


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    work = Path(tempfile.mkdtemp(prefix="autopilot-bench-"))
    plane = LocalDataPlane(data_dir=work / "plane")
    plane.start()
    model = FakeOpenAIServer().start()
    model.instant("Sure, let's look at your facility.")
    service = start_service(
        plane,
        work,
        OPENAI_API_KEY="bench",
        OPENAI_BASE_URL=model.base_url,
        MESSAGE_RATE_LIMIT_PER_MINUTE="100000",
        # N messages go into one conversation.
        MESSAGES_MAX_PER_CONVERSATION="100000",
        LOG_LEVEL="WARNING",
    )
    try:
        print(json.dumps(asyncio.run(measure(service.base_url, count)), indent=2))  # noqa: T201
    finally:
        service.stop()
        model.stop()
        plane.stop()


if __name__ == "__main__":
    main()
