"""Storage per visitor, as figures.

- Issue 15, item 4: the metadata row after 200 PUTs and what it costs the visitor's reads;
  a discovered append and an unfetched page on a search session at the id cap (and at 600k,
  refused over the cap), with the table's size.
- Issue 20, item 2: one anonymous visitor filling everything it can own to the default
  caps, with random content (4-byte characters where the limit counts
  characters), then the bytes it added to the database (tables, TOAST and indexes, after
  VACUUM FULL on both sides), table by table, against the bound README "Operations"
  states (`bound_bytes` below, computed the same way).

The service runs as a real process on a fresh local data plane; the rate limits are lifted
(they bound how fast, the caps how much, and the caps are what is measured).
Usage: python -m bench.storage_bounds [BIG_IDS | visitor]
"""

from __future__ import annotations

import json
import random
import statistics
import string
import sys
import time
import uuid
from typing import Any

import httpx
import psycopg

from autopilot_api.core.config import Settings
from autopilot_api.discovery.catalogue import QUESTION_BY_KEY, ROI_INPUT_KEYS
from autopilot_api.discovery.kinds import MAX_TEXT_ANSWER_CHARS
from bench.harness import service_on_fresh_data_plane
from tests.fixtures.factories import SPA_ORIGIN, valid_value

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


# --- one anonymous visitor at the caps (issue 20) ------------------------------------------
# Worst-case bytes per unit, as README "Operations" counts them (disk: row, TOAST, indexes).
ROW_BYTES = 1_024  # a message's or key's row and index entries besides its text
BYTES_PER_ID = 300  # one discovered id: its row and two index entries (measured ~270)
REPLY_MAX_BYTES = 16_384  # an assistant reply: the model's output bound (~4,000 tokens)
# Products, timeframe, counters, ROI inputs and row overhead; and on a fresh database the
# first row of a table also fills the first pages of its six indexes.
SESSION_ROW_FIXED = 65_536
JSONB_FACTOR = 1.1  # jsonb against the JSON text it came as (headers, offsets)


def bound_bytes(settings: Settings) -> dict[str, int]:
    """What one anonymous visitor can make us store at the caps, part by part."""
    text_questions = sum(1 for q in QUESTION_BY_KEY.values() if q.kind == "text")
    answers = len(QUESTION_BY_KEY) * 512 + text_questions * MAX_TEXT_ANSWER_CHARS * 4
    session_row = int(
        (settings.session_metadata_max_bytes + answers) * JSONB_FACTOR + SESSION_ROW_FIXED
    )
    user_messages = settings.conversations_max_per_owner * settings.messages_max_per_conversation
    messages = user_messages * (settings.message_max_chars * 4 + ROW_BYTES) + user_messages * (
        REPLY_MAX_BYTES + ROW_BYTES
    )
    conversations = settings.conversations_max_per_owner * (2 * ROW_BYTES + 4 * 1_024)
    search_sessions = settings.search_sessions_max_per_owner * int(
        (settings.search_query_max_bytes + settings.max_body_bytes) * JSONB_FACTOR
        + settings.search_session_max_ids * BYTES_PER_ID
    )
    # A next-batch outcome holds at most 100 names of 200 four-byte characters.
    keys = settings.idempotency_keys_max_per_caller * (100 * 200 * 4 + ROW_BYTES)
    parts = {
        "session_row": session_row,
        "conversations": conversations,
        "messages_and_replies": messages,
        "search_sessions": search_sessions,
        "idempotency_keys": keys,
    }
    parts["total"] = sum(parts.values())
    return parts


_ASCII = string.ascii_letters + string.digits


def _ascii(count: int) -> str:
    return "".join(random.choices(_ASCII, k=count))


def _wide(count: int) -> str:
    """`count` characters of four bytes each in UTF-8, in no order a compressor can use."""
    return "".join(chr(0x1F300 + random.randrange(0x2FF)) for _ in range(count))


def _database_bytes(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
                " where n.nspname = 'autopilot' and c.relkind = 'r'"
            ).fetchall()
        ]
        # Live data only: the versions each PUT left behind are vacuum's, not the visitor's.
        for table in tables:
            conn.execute(f"vacuum full autopilot.{table}")
        return {
            table: int(
                conn.execute(  # type: ignore[index]
                    "select pg_total_relation_size(%s::regclass)", (f"autopilot.{table}",)
                ).fetchone()[0]
            )
            for table in tables
        }


def _fill_session(http: httpx.Client) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    answers = {}
    for key, question in QUESTION_BY_KEY.items():
        value: Any = valid_value(key)
        if question.kind == "text":
            value = _wide(MAX_TEXT_ANSWER_CHARS)
        answers[key] = {"value": value}
    roi = dict.fromkeys(ROI_INPUT_KEYS, 0.5)
    http.put(
        "/api/v1/sessions/me",
        json={
            "answers": answers,
            "roiInputs": roi,
            "timeframe": _ascii(200),
            "selectedProductIds": [str(uuid.uuid4()) for _ in range(100)],
        },
    ).raise_for_status()
    index = 0
    while True:  # metadata: 8 KB a PUT until the merged cap refuses
        response = http.put("/api/v1/sessions/me", json={"metadata": {f"k{index}": _ascii(8000)}})
        if response.status_code != 200:
            statuses["metadata_refused"] = response.status_code
            break
        index += 1
    statuses["metadata_puts"] = index
    return statuses


def _fill_conversations(http: httpx.Client, settings: Settings) -> dict[str, Any]:
    refused: dict[str, Any] = {}
    for _ in range(settings.conversations_max_per_owner):
        conversation = http.post("/api/v1/conversations").json()["id"]
        path = f"/api/v1/conversations/{conversation}/messages"
        for _ in range(settings.messages_max_per_conversation):
            http.post(path, json={"content": _wide(settings.message_max_chars)}).raise_for_status()
        refused.setdefault(
            "message_past_cap", http.post(path, json={"content": "one more"}).json()["error"]
        )
    refused["conversation_past_cap"] = http.post("/api/v1/conversations").json()["error"]
    return refused


def _fill_search_sessions(http: httpx.Client, settings: Settings) -> dict[str, Any]:
    refused: dict[str, Any] = {}
    # As many ~100-character names as fit in a body of MAX_BODY_BYTES.
    names = [_ascii(98) for _ in range(settings.max_body_bytes // 104 - 100)]
    query = {"q": _ascii(settings.search_query_max_bytes - 9)}
    keys_left = settings.idempotency_keys_max_per_caller
    for _ in range(settings.search_sessions_max_per_owner):
        created = http.post(
            "/api/v1/search-sessions",
            json={"searchQuery": query, "companies": names, "batchSize": 50},
        )
        created.raise_for_status()
        base = f"/api/v1/search-sessions/{created.json()['sessionId']}"
        for _ in range(0, settings.search_session_max_ids, CHUNK):
            ids = random.sample(range(2**53 - 1), CHUNK)
            http.post(f"{base}/discovered", json={"employeeIds": ids}).raise_for_status()
        total_batches = created.json()["totalBatches"]
        for _ in range(min(keys_left, total_batches - 1)):
            http.post(
                f"{base}/next-batch", headers={"Idempotency-Key": _ascii(200)}
            ).raise_for_status()
            keys_left -= 1
    refused["search_session_past_cap"] = http.post(
        "/api/v1/search-sessions", json={"searchQuery": {}, "companies": ["x"]}
    ).json()["error"]
    return refused


def visitor_figures() -> dict[str, Any]:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    lifted = {
        "SESSION_WRITE_LIMIT_PER_MINUTE": "1000000",
        "WRITE_LIMIT_PER_MINUTE": "1000000",
        "MESSAGE_RATE_LIMIT_PER_MINUTE": "1000000",
        "CONVERSATION_CREATE_LIMIT_PER_HOUR": "1000000",
        "SEARCH_SESSION_CREATE_LIMIT_PER_HOUR": "1000000",
    }
    with service_on_fresh_data_plane(**lifted) as (plane, svc):
        assert plane.info is not None
        database_url = plane.info.database_url
        before = _database_bytes(database_url)
        started = time.perf_counter()
        with httpx.Client(base_url=svc.base_url, headers={"Origin": SPA_ORIGIN}, timeout=120) as h:
            session = _fill_session(h)
            conversations = _fill_conversations(h, settings)
            searches = _fill_search_sessions(h, settings)
        fill_seconds = round(time.perf_counter() - started, 1)
        after = _database_bytes(database_url)
        with psycopg.connect(database_url) as conn:
            rows = dict(
                conn.execute(
                    "select 'messages', count(*) from autopilot.messages union all"
                    " select 'discovered_ids', count(*) from autopilot.search_session_ids"
                    " union all select 'idempotency_keys', count(*)"
                    " from autopilot.idempotency_keys union all"
                    " select 'session_events', count(*) from autopilot.session_events"
                ).fetchall()
            )
    grown = {table: after[table] - before.get(table, 0) for table in after}
    measured = sum(grown.values())
    bound = bound_bytes(settings)
    return {
        "fill_seconds": fill_seconds,
        "session": session,
        "refusals_at_the_caps": {**conversations, **searches},
        "rows": rows,
        "bytes_added_by_table": {k: v for k, v in sorted(grown.items()) if v},
        "bytes_added_total": measured,
        "bound_bytes": bound,
        "within_bound": measured <= bound["total"],
    }


def main() -> None:
    if sys.argv[1:] == ["visitor"]:
        print(json.dumps({"anonymous_visitor_at_the_caps": visitor_figures()}, indent=2))  # noqa: T201
        return
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
    figures["anonymous_visitor_at_the_caps"] = visitor_figures()
    print(json.dumps(figures, indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
