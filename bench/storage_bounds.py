"""Storage per visitor (issue 15, item 4), as figures: the metadata row after 200 PUTs and
what it costs the visitor's reads; a discovered append and an unfetched page on a search
session at the id cap (and at 600k, refused over the cap), with the table's size.
The service runs as a real process on a fresh local data plane.
Usage: python -m bench.storage_bounds [BIG_IDS]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import httpx
import psycopg

from bench.harness import service_on_fresh_data_plane
from tests.fixtures.factories import SPA_ORIGIN

PUTS = 200
CHUNK = 10_000
HELD = 100_000
APPENDED = 1_000
ROUNDS = 5


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _median_get(http: httpx.Client, path: str, rounds: int = 30) -> float:
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        http.get(path).raise_for_status()
        timings.append(_ms(started))
    return round(statistics.median(timings), 1)


def metadata_figures(http: httpx.Client, database_url: str) -> dict[str, Any]:
    http.cookies.clear()
    http.put("/api/v1/sessions/me", json={"metadata": {"start": 1}}).raise_for_status()
    get_before = _median_get(http, "/api/v1/sessions/me")
    statuses: dict[int, int] = {}
    first_refusal: dict[str, Any] | None = None
    for index in range(PUTS):
        response = http.put("/api/v1/sessions/me", json={"metadata": {f"k{index}": "x" * 7000}})
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if response.status_code != 200 and first_refusal is None:
            first_refusal = response.json()
    session_id = http.get("/api/v1/sessions/me").json()["id"]
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "select octet_length(metadata::text), pg_column_size(metadata)"
            " from autopilot.sessions where id = %s",
            (session_id,),
        ).fetchone()
    assert row is not None
    return {
        "puts": PUTS,
        "statuses": statuses,
        "first_refusal": first_refusal,
        "metadata_json_bytes": row[0],
        "metadata_stored_bytes": row[1],
        "get_me_ms_median_before": get_before,
        "get_me_ms_median_after": _median_get(http, "/api/v1/sessions/me"),
    }


def _fill(http: httpx.Client, sid: str, total: int) -> int:
    """Discover ids 0..total-1; returns how many were accepted (stops at the first refusal)."""
    for start in range(0, total, CHUNK):
        response = http.post(
            f"/api/v1/search-sessions/{sid}/discovered",
            json={"employeeIds": list(range(start, start + CHUNK))},
        )
        if response.status_code != 200:
            return start
    return total


def discovered_figures(http: httpx.Client, database_url: str, big: int) -> dict[str, Any]:
    appends, pages, first_appends = [], [], []
    for _ in range(ROUNDS):
        http.cookies.clear()
        sid = http.post(
            "/api/v1/search-sessions", json={"searchQuery": {}, "companies": ["x"]}
        ).json()["sessionId"]
        started = time.perf_counter()
        http.post(
            f"/api/v1/search-sessions/{sid}/discovered",
            json={"employeeIds": list(range(APPENDED))},
        ).raise_for_status()
        first_appends.append(_ms(started))
        held = _fill(http, sid, HELD - APPENDED)
        started = time.perf_counter()
        response = http.post(
            f"/api/v1/search-sessions/{sid}/discovered",
            json={"employeeIds": list(range(held, held + APPENDED))},
        )
        appends.append(_ms(started))
        assert response.status_code == 200, response.text
        started = time.perf_counter()
        http.get(f"/api/v1/search-sessions/{sid}/unfetched", params={"count": 100})
        pages.append(_ms(started))

    http.cookies.clear()
    sid = http.post("/api/v1/search-sessions", json={"searchQuery": {}, "companies": ["x"]}).json()[
        "sessionId"
    ]
    accepted = _fill(http, sid, big)
    started = time.perf_counter()
    over = http.post(f"/api/v1/search-sessions/{sid}/discovered", json={"employeeIds": [big + 1]})
    append_at_big = _ms(started)
    # The first read after the bulk of inserts, and the median of the next ones.
    stats_reads, big_pages = [], []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        http.get(f"/api/v1/search-sessions/{sid}/stats").raise_for_status()
        stats_reads.append(_ms(started))
        started = time.perf_counter()
        http.get(f"/api/v1/search-sessions/{sid}/unfetched", params={"count": 100})
        big_pages.append(_ms(started))
    with psycopg.connect(database_url) as conn:
        sizes = dict(
            conn.execute(
                "select c.relname, pg_total_relation_size(c.oid) from pg_class c"
                " join pg_namespace n on n.oid = c.relnamespace"
                " where n.nspname = 'autopilot' and c.relname like 'search_session%'"
                " and c.relkind = 'r'"
            ).fetchall()
        )
    return {
        f"append_{APPENDED}_to_0_ms_median": round(statistics.median(first_appends), 1),
        f"append_{APPENDED}_to_{HELD - APPENDED}_ms_median": round(statistics.median(appends), 1),
        f"unfetched_page_at_{HELD}_ms_median": round(statistics.median(pages), 1),
        "big_target_ids": big,
        "big_ids_accepted": accepted,
        "append_one_at_big": {
            "status": over.status_code,
            "ms": round(append_at_big, 1),
            "body": over.json() if over.status_code != 200 else None,
        },
        "stats_at_big_ms_first_then_median": [
            round(stats_reads[0], 1),
            round(statistics.median(stats_reads[1:]), 1),
        ],
        "unfetched_page_at_big_ms_first_then_median": [
            round(big_pages[0], 1),
            round(statistics.median(big_pages[1:]), 1),
        ],
        "table_bytes_after_all": sizes,
    }


def main() -> None:
    big = int(sys.argv[1]) if len(sys.argv) > 1 else 600_000
    # The rate limit is not what is measured here: 200 PUTs in a row are the point.
    with service_on_fresh_data_plane(SESSION_WRITE_LIMIT_PER_MINUTE="100000") as (plane, svc):
        assert plane.info is not None
        database_url = plane.info.database_url
        with httpx.Client(base_url=svc.base_url, headers={"Origin": SPA_ORIGIN}, timeout=120) as h:
            figures = {
                "metadata": metadata_figures(h, database_url),
                "search_session_ids": discovered_figures(h, database_url, big),
            }
    print(json.dumps(figures, indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
