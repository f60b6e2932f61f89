"""The heavy versions of test_server_limits.py, run by `make check-reliability`
(SERVER_LIMITS_HEAVY=1), printing the figures: 8 unfinished 64 MiB headers, 1,000 slowloris
connections, and more held connections than MAX_CONNECTIONS. Skipped in `make test`."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

import httpx
import pytest

from autopilot_api.core.http_limits import connections_for_ulimit
from autopilot_api.local.dataplane import LocalDataPlane
from tests.fixtures.processes import ServiceProcess, start_service
from tests.integration.test_server_limits import rss_bytes

pytestmark = pytest.mark.skipif(
    os.environ.get("SERVER_LIMITS_HEAVY") != "1", reason="heavy: make check-reliability"
)
ASYNC = pytest.mark.asyncio(loop_scope="session")
HEAD = b"GET /healthz HTTP/1.1\r\nHost: t\r\n"
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def service(
    data_plane: LocalDataPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    # Default limits: MAX_HEADER_BYTES 16384, HEADER_READ_TIMEOUT_SECONDS 10, MAX_CONNECTIONS
    # from ulimit -n.
    process = start_service(data_plane, tmp_path_factory.mktemp("heavy"))
    yield process
    process.stop()


def port(service: ServiceProcess) -> int:
    return int(service.base_url.rsplit(":", 1)[1])


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def healthz(service: ServiceProcess) -> int | str:
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            return (await http.get(f"{service.base_url}/healthz")).status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


@ASYNC
async def test_header_bombs(service: ServiceProcess) -> None:
    pid = service.process.pid
    before = rss_bytes(pid)
    peak = before

    async def bomb() -> tuple[bytes, int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port(service))
        writer.write(HEAD + b"X-Bomb: ")
        sent = 0
        chunk = b"a" * (256 * 1024)
        answered = asyncio.create_task(reader.read(200))
        try:
            # Until the server answers (an attacker would go on: the server drops the rest).
            while sent < 64 * MIB and not answered.done():
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
        except (ConnectionResetError, BrokenPipeError):
            pass
        try:
            answer = await asyncio.wait_for(answered, 30)
        except (ConnectionResetError, TimeoutError):
            answer = b""
        writer.close()
        return answer, sent

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_bytes(pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    results = await asyncio.gather(*(bomb() for _ in range(8)))
    sampler.cancel()
    after = rss_bytes(pid)
    refused = sum(answer.startswith(b"HTTP/1.1 431 ") for answer, _ in results)
    taken = max(sent for _, sent in results)
    print(  # noqa: T201
        f"\nheader bombs: 8 x unfinished 64 MiB: {refused}/8 answered 431, at most "
        f"{taken / MIB:.2f} MiB sent per connection before the answer; RSS "
        f"{before / MIB:.0f} -> peak {peak / MIB:.0f} -> {after / MIB:.0f} MiB; "
        f"/healthz {await healthz(service)}"
    )
    assert refused == 8
    assert peak - before < 32 * MIB


@ASYNC
async def test_slowloris(service: ServiceProcess) -> None:
    count = 1000
    conns = [await asyncio.open_connection("127.0.0.1", port(service)) for _ in range(count)]
    for _, writer in conns:
        writer.write(HEAD)
    started = time.monotonic()
    open_at: dict[int, int] = {}
    closed = [False] * count
    # A header byte a second from each, watching which the server has closed.
    while time.monotonic() - started < 20:
        for i, (reader, writer) in enumerate(conns):
            if closed[i]:
                continue
            if reader.at_eof() or writer.is_closing():
                closed[i] = True
                continue
            try:
                writer.write(b"X")
            except (ConnectionResetError, BrokenPipeError):
                closed[i] = True
        await asyncio.sleep(1)
        for i, (reader, _) in enumerate(conns):
            if not closed[i] and reader.at_eof():
                closed[i] = True
        # StreamReader notices EOF only when read: drain what has arrived.
        for i, (reader, _) in enumerate(conns):
            if not closed[i]:
                try:
                    await asyncio.wait_for(reader.read(1024), 0.001)
                except TimeoutError:
                    pass
                except ConnectionResetError:
                    closed[i] = True
                if reader.at_eof():
                    closed[i] = True
        open_at[round(time.monotonic() - started)] = count - sum(closed)
    status = await healthz(service)
    for _, writer in conns:
        writer.close()
    figures = ", ".join(f"{t} s: {n}" for t, n in sorted(open_at.items()) if t % 5 == 0)
    print(  # noqa: T201
        f"\nslowloris: {count} connections, a header byte a second; still open at {figures}; "
        f"/healthz {status}"
    )
    assert open_at[max(open_at)] == 0


@ASYNC
async def test_held_connections(service: ServiceProcess) -> None:
    pid = service.process.pid
    cap = connections_for_ulimit()
    held = min(cap + 1000, 17000)
    before_rss, before_fds = rss_bytes(pid), open_fds(pid)
    conns = []
    for _ in range(held):
        try:
            conns.append(await asyncio.open_connection("127.0.0.1", port(service)))
        except OSError:
            break
    await asyncio.sleep(2)
    peak_fds = open_fds(pid)
    status = await healthz(service)
    evicted = 0
    for reader, _ in conns:
        try:
            await asyncio.wait_for(reader.read(1024), 0.0001)
        except (TimeoutError, ConnectionResetError):
            pass
        evicted += reader.at_eof()
    after_rss = rss_bytes(pid)
    for _, writer in conns:
        writer.close()
    print(  # noqa: T201
        f"\nheld connections: {len(conns)} idle connections opened against MAX_CONNECTIONS "
        f"{cap}: {evicted} evicted (the longest idle), server descriptors {before_fds} -> "
        f"{peak_fds}, RSS {before_rss / MIB:.0f} -> {after_rss / MIB:.0f} MiB; /healthz {status}"
    )
    assert status == 200
    assert peak_fds < cap + 500
