"""What the served process bounds on its own, against a real `autopilot-api serve`: memory per
connection when a client pipelines requests and never reads the answers. Header size and time,
slow bodies and connection floods are the edge's (nginx: tests/integration/test_edge_proxy.py).
The heavy versions are in test_server_limits_heavy.py, run by `make check-reliability`."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from autopilot_api.local.dataplane import LocalDataPlane
from tests.fixtures.processes import ServiceProcess, start_service

MIB = 1024 * 1024
PIPELINED = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.fixture(scope="module")
def service(
    data_plane: LocalDataPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    process = start_service(data_plane, tmp_path_factory.mktemp("limits"))
    yield process
    process.stop()


def port(service: ServiceProcess) -> int:
    return int(service.base_url.rsplit(":", 1)[1])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def pipeline_and_never_read(
    service: ServiceProcess, *, connections: int, requests: int, seconds: float
) -> tuple[int, list[int], int | str]:
    """`connections` clients each send `requests` pipelined GETs and read none of the answers.
    Returns the server's peak RSS growth while they send, the requests each got into the
    socket, and what another client got meanwhile."""
    pid = service.process.pid
    before = peak = rss_bytes(pid)
    senders = []
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", port(service)))
        sock.setblocking(False)
        senders.append([sock, PIPELINED * requests, 0])
    other: int | str = "not tried"
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and any(off < len(data) for _, data, off in senders):
            for sender in senders:
                sock, data, offset = sender
                if offset < len(data):
                    try:
                        sender[2] += sock.send(data[offset : offset + 65536])
                    except BlockingIOError:
                        pass
            peak = max(peak, rss_bytes(pid))
            time.sleep(0.005)
        # The server may still be reading what the sockets hold: watch it a while longer.
        settle = time.monotonic() + 2
        while time.monotonic() < settle:
            peak = max(peak, rss_bytes(pid))
            time.sleep(0.05)
        try:
            other = httpx.get(f"{service.base_url}/healthz", timeout=10).status_code
        except httpx.HTTPError as exc:
            other = type(exc).__name__
        peak = max(peak, rss_bytes(pid))
    finally:
        for sock, _, _ in senders:
            sock.close()
    return peak - before, [offset // len(PIPELINED) for _, _, offset in senders], other


def test_pipelining_clients_that_never_read_keep_memory_bounded(service: ServiceProcess) -> None:
    grown, sent, other = pipeline_and_never_read(
        service, connections=3, requests=50_000, seconds=10
    )
    print(  # noqa: T201
        f"\npipelining: 3 connections x 50,000 GETs never read ({sent} in the sockets): "
        f"RSS +{grown / MIB:.1f} MiB; another client: {other}"
    )
    # Before the fix uvicorn parsed every request it was sent into a queue of pending
    # request/response cycles (+388 MiB here, never returned to the system).
    assert grown < 30 * MIB, f"RSS grew by {grown / MIB:.1f} MiB"
    assert other == 200
    # Still serving once they are gone.
    assert httpx.get(f"{service.base_url}/healthz", timeout=10).status_code == 200
