"""The heavy versions of test_server_limits.py and test_edge_proxy.py, run by
`make check-reliability` (SERVER_LIMITS_HEAVY=1), printing the figures: 10 connections
pipelining 200,000 requests each straight at the API, and through the edge with its production
defaults, 1,000 slowloris connections and one address opening more connections than nginx's
worker_connections. Skipped in `make test`."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Iterator

import httpx
import pytest

from autopilot_api.local.dataplane import LocalDataPlane
from tests.fixtures.nginx import EdgeProxy, NginxTools, start_edge
from tests.fixtures.processes import ServiceProcess, start_service
from tests.integration.test_server_limits import MIB, pipeline_and_never_read

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("SERVER_LIMITS_HEAVY") != "1", reason="heavy: make check-reliability"
    ),
]
ASYNC = pytest.mark.asyncio(loop_scope="session")
HEAD = b"GET /healthz HTTP/1.1\r\nHost: t\r\n"
ATTACKER, BYSTANDER = "127.0.0.81", "127.0.0.82"


@pytest.fixture(scope="module")
def service(
    data_plane: LocalDataPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    process = start_service(
        data_plane, tmp_path_factory.mktemp("heavy"), TRUSTED_PROXY_IPS="127.0.0.1"
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def edge(
    nginx: NginxTools, service: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EdgeProxy]:
    # deploy/nginx/defaults.env as shipped, on a free port in front of this service.
    proxy = start_edge(
        nginx, service.base_url.removeprefix("http://"), tmp_path_factory.mktemp("heavy-edge")
    )
    yield proxy
    proxy.stop()


async def bystander_latencies(edge: EdgeProxy, seconds: float) -> list[float | str]:
    """GET /healthz from another address every 0.2 s: seconds taken, or what failed."""
    found: list[float | str] = []
    transport = httpx.AsyncHTTPTransport(local_address=BYSTANDER)
    async with httpx.AsyncClient(base_url=edge.base_url, transport=transport, timeout=5) as http:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                status = (await http.get("/healthz")).status_code
                found.append(time.monotonic() - started if status == 200 else str(status))
            except httpx.HTTPError as exc:
                found.append(type(exc).__name__)
            await asyncio.sleep(0.2)
    return found


def summary(latencies: list[float | str]) -> str:
    served = [value for value in latencies if isinstance(value, float)]
    failed = [value for value in latencies if isinstance(value, str)]
    p50 = statistics.median(served) * 1000 if served else float("nan")
    return f"{len(served)}/{len(latencies)} answered 200 (p50 {p50:.1f} ms), failures {failed}"


def test_pipelining_heavy(service: ServiceProcess) -> None:
    grown, sent, other = pipeline_and_never_read(
        service, connections=10, requests=200_000, seconds=20
    )
    print(  # noqa: T201
        f"\npipelining: 10 connections x 200,000 GETs never read (sent {sum(sent)}): "
        f"RSS +{grown / MIB:.1f} MiB; another client: {other}"
    )
    assert grown < 64 * MIB
    assert other == 200


@ASYNC
async def test_slowloris_through_the_edge(edge: EdgeProxy) -> None:
    count = 1000
    conns = [
        await asyncio.open_connection("127.0.0.1", edge.port, local_addr=(ATTACKER, 0))
        for _ in range(count)
    ]
    for _, writer in conns:
        writer.write(HEAD)
    started = time.monotonic()

    async def dribble() -> dict[int, int]:
        open_at: dict[int, int] = {}
        while time.monotonic() - started < 15:
            for _, writer in conns:
                if not writer.is_closing():
                    try:
                        writer.write(b"X")
                    except (ConnectionResetError, BrokenPipeError):
                        writer.close()
            await asyncio.sleep(1)
            still = 0
            for reader, writer in conns:
                try:
                    await asyncio.wait_for(reader.read(1024), 0.001)
                except TimeoutError:
                    pass
                except OSError:
                    writer.close()
                if not reader.at_eof() and not writer.is_closing():
                    still += 1
            open_at[round(time.monotonic() - started)] = still
        return open_at

    open_at, latencies = await asyncio.gather(dribble(), bystander_latencies(edge, 15))
    for _, writer in conns:
        writer.close()
    figures = ", ".join(f"{t} s: {n}" for t, n in sorted(open_at.items()))
    print(  # noqa: T201
        f"\nslowloris via the edge: {count} connections, a header byte a second; still open "
        f"at {figures}; another address: {summary(latencies)}"
    )
    assert open_at[max(open_at)] == 0
    assert all(isinstance(value, float) for value in latencies)


@ASYNC
async def test_more_connections_than_the_edge_has(edge: EdgeProxy) -> None:
    # More than worker_connections (4096): nginx closes the idle ones it can reuse.
    count = 6000
    conns = []
    for _ in range(count):
        try:
            conns.append(
                await asyncio.open_connection("127.0.0.1", edge.port, local_addr=(ATTACKER, 0))
            )
        except OSError:
            break
    latencies = await bystander_latencies(edge, 5)
    closed = 0
    for reader, _ in conns:
        try:
            await asyncio.wait_for(reader.read(1024), 0.0001)
        except (TimeoutError, ConnectionResetError):
            pass
        closed += reader.at_eof()
    for _, writer in conns:
        writer.close()
    print(  # noqa: T201
        f"\nheld connections via the edge: {len(conns)} idle connections from one address, "
        f"{closed} closed by nginx; another address: {summary(latencies)}"
    )
    assert all(isinstance(value, float) for value in latencies)
