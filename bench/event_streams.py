"""Live streams under attack and under a burst (issue 20, items 4 and 7), as figures.

- burst: 2,000 events for one session with 3 of its streams open, written (a) through the
  API (concurrent PUTs, each waking the feeds) and (b) straight into session_events by SQL
  followed by one PUT; the lag from the burst's last write to the moment every stream holds
  its last event, and how much had arrived while the burst went on.
- attack: the stream floods of the issue replayed from this machine (X-Forwarded-For names
  the client, TRUSTED_PROXY_IPS=127.0.0.1): one IP with 200 anonymous identities x 10
  streams; 7 IPs x 30 sessions x 10 streams; 50 IPs x 40 anonymous streams. Each is held
  while a neighbour (its own process) times GET /sessions/me, and a signed-in user and an
  anonymous visitor on fresh IPs open a stream.
The service runs as a real process (production settings) on a fresh local data plane.
Usage: python -m bench.event_streams [burst|attack]
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import json
import sys
import time
import uuid
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg

from autopilot_api.core.config import Settings
from autopilot_api.core.security import LOCAL_SUPABASE_ISSUER, mint_user_token
from bench.harness import plane_settings, service_on_fresh_data_plane
from tests.fixtures.factories import SPA_ORIGIN
from tests.fixtures.sse import sse_messages

COOKIE = "autopilot_session"
BURST = 2000
BURST_STREAMS = 3
PUT_CONCURRENCY = 8
PROBES = 60
METRICS_TOKEN = "bench-metrics-token-0123456789"

NEIGHBOUR = """
import statistics, sys, time, httpx
base, cookie, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
times, statuses = [], []
with httpx.Client(base_url=base, headers={"Cookie": cookie}, timeout=60) as http:
    for _ in range(count):
        started = time.perf_counter()
        statuses.append(http.get("/api/v1/sessions/me").status_code)
        times.append(time.perf_counter() - started)
        time.sleep(0.05)
print(statistics.median(times) * 1000, sum(s == 200 for s in statuses), len(statuses))
"""


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def cookieless_client(base_url: str, **options: Any) -> httpx.AsyncClient:
    """A client that keeps no cookies: every request names its own (sessions are made
    concurrently, and a kept cookie would make POST /sessions return the same session)."""
    client = httpx.AsyncClient(base_url=base_url, headers={"Origin": SPA_ORIGIN}, **options)
    client.cookies.jar.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return client


async def new_session(client: httpx.AsyncClient, ip: str = "127.0.0.1") -> tuple[str, str]:
    response = await client.post("/api/v1/sessions", headers={"X-Forwarded-For": ip})
    response.raise_for_status()
    return response.json()["id"], f"{COOKIE}={response.cookies[COOKIE]}"


# --- burst --------------------------------------------------------------------------------


class Watcher:
    """One stream of the session, noting when each event id arrived."""

    def __init__(self) -> None:
        self.arrived: dict[int, float] = {}

    async def follow(self, http: httpx.AsyncClient, cookie: str, ready: asyncio.Event) -> None:
        async with http.stream("GET", "/api/v1/events", headers={"Cookie": cookie}) as response:
            response.raise_for_status()
            async for message in sse_messages(response):
                if message.comments == ["connected"]:
                    ready.set()
                if message.event is not None and message.id is not None:
                    self.arrived[int(message.id)] = time.perf_counter()


async def _burst_round(
    http: httpx.AsyncClient, database_url: str, *, through: str
) -> dict[str, Any]:
    session_id, cookie = await new_session(http)
    watchers = [Watcher() for _ in range(BURST_STREAMS)]
    readies = [asyncio.Event() for _ in watchers]
    tasks = [
        asyncio.create_task(w.follow(http, cookie, ready))
        for w, ready in zip(watchers, readies, strict=True)
    ]
    await asyncio.gather(*(ready.wait() for ready in readies))
    started = time.perf_counter()
    statuses: Counter[int] = Counter()
    if through == "api":
        queue = iter(range(BURST))

        async def writer() -> None:
            for index in queue:
                put = await http.put(
                    "/api/v1/sessions/me",
                    headers={"Cookie": cookie},
                    json={"timeframe": f"{index}"},
                )
                statuses[put.status_code] += 1

        await asyncio.gather(*(writer() for _ in range(PUT_CONCURRENCY)))
    else:

        def write() -> None:
            with psycopg.connect(database_url, autocommit=True) as conn:
                for index in range(BURST):
                    conn.execute(
                        "select autopilot_private.record_event("
                        "%s::uuid, null, 'updated', 'system', 'bench', %s)",
                        (session_id, json.dumps({"burst": index})),
                    )

        await asyncio.to_thread(write)
        # One write through the API at the end: its wake-up, as a real writer's.
        put = await http.put(
            "/api/v1/sessions/me", headers={"Cookie": cookie}, json={"timeframe": "end"}
        )
        statuses[put.status_code] += 1
    ended = time.perf_counter()
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "select count(*), max(id) from autopilot.session_events where session_id = %s",
            (session_id,),
        ).fetchone()
    assert row is not None
    stored, last_id = int(row[0]), int(row[1])
    deadline = time.perf_counter() + 120
    while time.perf_counter() < deadline and not all(last_id in w.arrived for w in watchers):
        await asyncio.sleep(0.01)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    lags = [w.arrived[last_id] - ended for w in watchers if last_id in w.arrived]
    during = [sum(at <= ended for at in w.arrived.values()) for w in watchers]
    return {
        "through": through,
        "writes": dict(statuses),
        "events stored": stored,
        "burst seconds": round(ended - started, 2),
        "events per stream": [len(w.arrived) for w in watchers],
        "arrived during the burst (per stream)": during,
        "lag after the burst's last write, ms (per stream)": [_ms(lag) for lag in lags],
        "streams that got the last event": len(lags),
    }


async def burst(base_url: str, database_url: str) -> list[dict[str, Any]]:
    async with cookieless_client(
        base_url, timeout=httpx.Timeout(60, read=600), limits=httpx.Limits(max_connections=50)
    ) as http:
        return [
            await _burst_round(http, database_url, through="api"),
            await _burst_round(http, database_url, through="sql"),
        ]


# --- attack -------------------------------------------------------------------------------


async def _open_raw(
    host: str, port: int, headers: dict[str, str]
) -> tuple[int, str, asyncio.StreamWriter | None]:
    """A stream as an attacker holds one: status and error code; the writer when 200."""
    reader, writer = await asyncio.open_connection(host, port)
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    writer.write(f"GET /api/v1/events HTTP/1.1\r\nHost: {host}\r\n{lines}\r\n".encode())
    status = int((await reader.readline()).split()[1])
    if status == 200:
        return status, "", writer
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    body = await reader.readexactly(length)
    writer.close()
    return status, json.loads(body)["error"]["code"], None


async def neighbour_probe(base_url: str, cookie: str) -> tuple[float, int, int]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        NEIGHBOUR,
        base_url,
        cookie,
        str(PROBES),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    median, ok, total = out.split()
    return round(float(median), 2), int(ok), int(total)


async def attack_round(
    base_url: str,
    http: httpx.AsyncClient,
    settings: Settings,
    *,
    name: str,
    ips: int,
    identities_per_ip: int,
    streams_per_identity: int,
    neighbour_cookie: str,
    fresh_ip: str,
) -> dict[str, Any]:
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    addresses = [
        f"203.0.{i // 250}.{i % 250 + 1}" for i in range(ips) for _ in range(identities_per_ip)
    ]
    identities: list[tuple[str, str]] = []
    for batch_start in range(0, len(addresses), 20):
        some = addresses[batch_start : batch_start + 20]
        sessions = await asyncio.gather(*(new_session(http) for _ in some))
        identities.extend((ip, cookie) for ip, (_, cookie) in zip(some, sessions, strict=True))
    held: list[asyncio.StreamWriter] = []
    outcomes: Counter[str] = Counter()
    started = time.perf_counter()
    for batch_start in range(0, len(identities), 50):
        batch = identities[batch_start : batch_start + 50]
        results = await asyncio.gather(
            *(
                _open_raw(host, port, {"Cookie": cookie, "X-Forwarded-For": ip})
                for ip, cookie in batch
                for _ in range(streams_per_identity)
            )
        )
        for status, code, writer in results:
            outcomes[f"{status} {code}".strip()] += 1
            if writer is not None:
                held.append(writer)
    flood_seconds = time.perf_counter() - started
    # Admitted is not held: at its IP's cap a session's new stream replaces its own oldest.
    scrape = await http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    held_by_kind = {
        line.split('"')[1]: int(float(line.split()[-1]))
        for line in scrape.text.splitlines()
        if line.startswith("autopilot_event_streams_open{")
    }
    try:
        neighbour = asyncio.create_task(neighbour_probe(base_url, neighbour_cookie))
        token = mint_user_token(
            settings.supabase_jwt_secret or "",
            issuer=settings.jwt_issuer or LOCAL_SUPABASE_ISSUER,
            user_id=uuid.uuid4(),
            email="legit@example.test",
        )
        signed_in = await _open_raw(
            host, port, {"Authorization": f"Bearer {token}", "X-Forwarded-For": fresh_ip}
        )
        _, visitor_cookie = await new_session(http, fresh_ip)
        visitor = await _open_raw(
            host, port, {"Cookie": visitor_cookie, "X-Forwarded-For": fresh_ip}
        )
        for _, _, writer in (signed_in, visitor):
            if writer is not None:
                held.append(writer)
        p50, ok, total = await neighbour
    finally:
        for writer in held:
            writer.close()
        await asyncio.sleep(1)
    return {
        "attack": name,
        "stream attempts": sum(outcomes.values()),
        "outcomes": dict(outcomes),
        "flood seconds": round(flood_seconds, 1),
        "streams held after the flood": held_by_kind,
        "signed-in user's stream (fresh IP)": f"{signed_in[0]} {signed_in[1]}".strip(),
        "anonymous visitor's stream (fresh IP)": f"{visitor[0]} {visitor[1]}".strip(),
        "neighbour GET /sessions/me": {"p50 ms": p50, "200s": f"{ok}/{total}"},
    }


async def attack(base_url: str, settings: Settings) -> list[dict[str, Any]]:
    async with cookieless_client(base_url, timeout=60) as http:
        _, neighbour_cookie = await new_session(http, "192.0.2.200")
        quiet = await neighbour_probe(base_url, neighbour_cookie)
        figures: list[dict[str, Any]] = [
            {
                "quiet neighbour GET /sessions/me": {
                    "p50 ms": quiet[0],
                    "200s": f"{quiet[1]}/{quiet[2]}",
                }
            }
        ]
        rounds = [
            ("one IP, 200 identities x 10 streams", 1, 200, 10),
            ("7 IPs x 30 sessions x 10 streams", 7, 30, 10),
            ("50 IPs x 40 anonymous sessions", 50, 40, 1),
        ]
        for index, (name, ips, per_ip, streams) in enumerate(rounds):
            figures.append(
                await attack_round(
                    base_url,
                    http,
                    settings,
                    name=name,
                    ips=ips,
                    identities_per_ip=per_ip,
                    streams_per_identity=streams,
                    neighbour_cookie=neighbour_cookie,
                    fresh_ip=f"192.0.2.{index + 1}",
                )
            )
        return figures


def main() -> None:
    which = sys.argv[1:] or ["burst", "attack"]
    env = {
        "TRUSTED_PROXY_IPS": "127.0.0.1",
        "SESSION_WRITE_LIMIT_PER_MINUTE": "100000",
        "LOG_LEVEL": "WARNING",
        "METRICS_TOKEN": METRICS_TOKEN,
    }
    with service_on_fresh_data_plane(**env) as (plane, service):
        settings = plane_settings(plane)
        figures: dict[str, Any] = {}
        with contextlib.suppress(KeyboardInterrupt):
            if "burst" in which:
                figures["burst"] = asyncio.run(burst(service.base_url, plane.info.database_url))
            if "attack" in which:
                figures["attack"] = asyncio.run(attack(service.base_url, settings))
    print(json.dumps(figures, indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
