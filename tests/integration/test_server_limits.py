"""The served process's own limits (issue 15 item 3), against a real `autopilot-api serve`:
header size (431), header-read timeout (408) from a request's first byte only, and the
connection cap that evicts idle keep-alives first and does not count event streams.
The heavy versions are scripts/check_server_limits.py, run by `make check-reliability`."""

from __future__ import annotations

import asyncio
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from autopilot_api.local.dataplane import LocalDataPlane
from tests.fixtures.factories import SPA_ORIGIN
from tests.fixtures.processes import ServiceProcess, start_service
from tests.fixtures.sse import sse_messages

COOKIE = "autopilot_session"
HEADER_TIMEOUT = 2
MAX_CONNECTIONS = 6
GET = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.fixture(scope="module")
def service(
    data_plane: LocalDataPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    process = start_service(
        data_plane,
        tmp_path_factory.mktemp("limits"),
        HEADER_READ_TIMEOUT_SECONDS=str(HEADER_TIMEOUT),
        MAX_HEADER_BYTES="16384",
        KEEPALIVE_TIMEOUT_SECONDS="75",
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def capped(
    data_plane: LocalDataPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    process = start_service(
        data_plane,
        tmp_path_factory.mktemp("capped"),
        MAX_CONNECTIONS=str(MAX_CONNECTIONS),
        EVENTS_HEARTBEAT_SECONDS="0.3",
    )
    yield process
    process.stop()


def connect(service: ServiceProcess, timeout: float = 10) -> socket.socket:
    port = int(service.base_url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return sock


def read_response(sock: socket.socket) -> bytes:
    """One response's head and (short) body, or what came before the close."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_oversize_header_gets_431_and_memory_stays_flat(service: ServiceProcess) -> None:
    # In one piece: measured once the head is complete.
    sock = connect(service)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert read_response(sock).startswith(b"HTTP/1.1 431 ")
    assert closed_by_peer(sock)
    sock.close()

    # Unfinished heads of 4 MiB each, sent in pieces: refused long before their end.
    before = rss_bytes(service.process.pid)
    answers = []
    for _ in range(4):
        sock = connect(service)
        sent = 0
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ")
        try:
            # Until the answer comes (the server reads and drops what follows it for a while).
            while sent < 4 * 1024 * 1024 and not select.select([sock], [], [], 0)[0]:
                sock.sendall(b"b" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        answers.append((read_response(sock), sent))
        sock.close()
    grown = rss_bytes(service.process.pid) - before
    assert all(answer.startswith(b"HTTP/1.1 431 ") for answer, _ in answers), answers
    # Answered after at most the limit plus one read of the transport (256 KiB).
    assert all(sent < 4 * 1024 * 1024 for _, sent in answers)
    assert grown < 8 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MiB"


def test_a_head_just_under_the_limit_is_served(service: ServiceProcess) -> None:
    sock = connect(service)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Fill: " + b"a" * 15000 + b"\r\n\r\n")
    assert read_response(sock).startswith(b"HTTP/1.1 200 ")
    sock.close()


def test_slowloris_is_closed_by_the_header_timeout(service: ServiceProcess) -> None:
    sock = connect(service)
    started = time.monotonic()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
    answer = b""
    try:
        # A header byte every second, as a slowloris client does, for at most 10 s.
        for _ in range(10):
            sock.sendall(b"X")
            sock.settimeout(1.0)
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            break
    except (BrokenPipeError, ConnectionResetError):
        pass
    elapsed = time.monotonic() - started
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert HEADER_TIMEOUT - 0.5 <= elapsed <= HEADER_TIMEOUT + 3, elapsed


def test_idle_keepalive_is_not_cut_by_the_header_timeout(service: ServiceProcess) -> None:
    # Idle after a response, and idle before any byte at all: both under the keep-alive timeout.
    used = connect(service)
    used.sendall(GET)
    assert read_response(used).startswith(b"HTTP/1.1 200 ")
    fresh = connect(service)
    time.sleep(HEADER_TIMEOUT * 2)
    for sock in (used, fresh):
        sock.sendall(GET)
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        sock.close()


@pytest.mark.asyncio(loop_scope="session")
async def test_connection_cap_evicts_idle_first_and_spares_event_streams(
    capped: ServiceProcess,
) -> None:
    async with httpx.AsyncClient(base_url=capped.base_url, headers={"Origin": SPA_ORIGIN}) as http:
        created = await http.post("/api/v1/sessions")
        assert created.status_code == 201
        cookie = {"Cookie": f"{COOKIE}={created.cookies[COOKIE]}"}
    held: list[socket.socket] = []
    async with (
        httpx.AsyncClient(base_url=capped.base_url, timeout=10) as streams,
        streams.stream("GET", "/api/v1/events", headers=cookie) as stream,
    ):
        assert stream.status_code == 200
        messages = sse_messages(stream)
        await asyncio.wait_for(anext(messages), 5)
        try:
            idle = connect(capped)
            idle.sendall(GET)
            assert read_response(idle).startswith(b"HTTP/1.1 200 ")
            # Busy connections (a head being sent) up to the cap, the idle one included.
            for _ in range(MAX_CONNECTIONS - 1):
                held.append(connect(capped))
                held[-1].sendall(b"GET /healthz HTTP/1.1\r\n")
            await asyncio.sleep(0.2)
            # One more: the idle keep-alive is closed to make room, and the new one served.
            held.append(connect(capped))
            held[-1].sendall(b"GET /healthz HTTP/1.1\r\n")
            await asyncio.sleep(0.2)
            assert closed_by_peer(idle)
            idle.close()
            # Nothing idle left: refused cleanly.
            refused = connect(capped)
            refused.sendall(GET)
            answer = read_response(refused)
            assert answer.startswith(b"HTTP/1.1 503 "), answer
            assert b"retry-after: 1" in answer.lower()
            assert closed_by_peer(refused)
            refused.close()
            # The event stream, not counted, still flows at the cap.
            await asyncio.wait_for(anext(messages), 5)
            await asyncio.wait_for(anext(messages), 5)
        finally:
            for sock in held:
                sock.close()
        # Room again once the server has seen the busy connections go.
        deadline = time.monotonic() + 5
        while True:
            sock = connect(capped)
            sock.sendall(GET)
            answer = read_response(sock)
            sock.close()
            if answer.startswith(b"HTTP/1.1 200 ") or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
