"""Time of one `discovered` call that appends 1,000 new ids to a search session already
holding 100,000 (the service as a real process on the local data plane).
Usage: python -m bench.discovered_append [ROUNDS]
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import httpx

from bench.harness import service_on_fresh_data_plane
from tests.fixtures.factories import SPA_ORIGIN

HELD = 100_000
APPENDED = 1_000
CHUNK = 10_000


def measure(base_url: str, rounds: int) -> dict[str, float]:
    timings = []
    with httpx.Client(base_url=base_url, headers={"Origin": SPA_ORIGIN}, timeout=60) as http:
        for round_index in range(rounds):
            http.cookies.clear()
            sid = http.post(
                "/api/v1/search-sessions", json={"searchQuery": {}, "companies": ["x"]}
            ).json()["sessionId"]
            for start in range(0, HELD, CHUNK):
                http.post(
                    f"/api/v1/search-sessions/{sid}/discovered",
                    json={"employeeIds": list(range(start, start + CHUNK))},
                )
            new_ids = list(range(HELD, HELD + APPENDED))
            started = time.perf_counter()
            response = http.post(
                f"/api/v1/search-sessions/{sid}/discovered", json={"employeeIds": new_ids}
            )
            timings.append((time.perf_counter() - started) * 1000)
            assert response.json()["totalDiscovered"] == HELD + APPENDED, response.text
            del round_index
    return {
        "held_ids": HELD,
        "ids_appended": APPENDED,
        "rounds": rounds,
        "ms_median": statistics.median(timings),
        "ms_max": max(timings),
    }


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with service_on_fresh_data_plane() as (_, service):
        print(json.dumps(measure(service.base_url, rounds), indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
