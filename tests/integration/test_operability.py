"""Operability of a real service process: JSON logs with request ids, and a graceful
shutdown that lets an in-flight streamed reply finish."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from autopilot_api.local.dataplane import LocalDataPlane
from tests.fixtures.factories import SPA_ORIGIN
from tests.fixtures.fake_openai import FakeOpenAIServer, Reply
from tests.fixtures.processes import ServiceProcess, client_limits, start_service


@pytest.fixture
def service(
    data_plane: LocalDataPlane,
    fake_openai: FakeOpenAIServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    process = start_service(
        data_plane,
        tmp_path_factory.mktemp("ops"),
        LOG_LEVEL="INFO",
        OPENAI_API_KEY="test-key",
        OPENAI_BASE_URL=fake_openai.base_url,
        SHUTDOWN_TIMEOUT_SECONDS="10",
    )
    try:
        yield process
    finally:
        process.stop()


def test_every_request_logs_one_json_line_with_its_request_id(service: ServiceProcess) -> None:
    response = httpx.get(f"{service.base_url}/healthz", headers={"X-Request-ID": "ops-test-1"})
    assert response.headers["X-Request-ID"] == "ops-test-1"
    deadline = time.monotonic() + 5
    lines: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        lines = [
            json.loads(line)
            for line in service.log_path.read_text().splitlines()
            if line.startswith("{")
        ]
        if any(line.get("request_id") == "ops-test-1" for line in lines):
            break
        time.sleep(0.1)
    (entry,) = [line for line in lines if line.get("request_id") == "ops-test-1"]
    assert entry["method"] == "GET"
    assert entry["path"] == "/healthz"
    assert entry["status"] == 200
    assert isinstance(entry["duration_ms"], float)
    assert all("level" in line and "time" in line for line in lines)


def test_sigterm_lets_an_in_flight_stream_finish(
    service: ServiceProcess, openai_server: FakeOpenAIServer
) -> None:
    openai_server.default = Reply(
        chunks=["one ", "two ", "three ", "four"], chunk_delay_seconds=0.4
    )
    with httpx.Client(
        base_url=service.base_url, headers={"Origin": SPA_ORIGIN}, timeout=30
    ) as http:
        conversation = http.post("/api/v1/conversations", json={}).json()["id"]
        events: list[str] = []
        with http.stream(
            "POST",
            f"/api/v1/conversations/{conversation}/messages",
            json={"content": "hi"},
            headers={"Accept": "text/event-stream"},
        ) as stream:
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    events.append(line.removeprefix("event: "))
                    if line == "event: delta" and events.count("delta") == 1:
                        service.process.send_signal(signal.SIGTERM)
                if line.startswith("data: ") and events and events[-1] == "done":
                    done = json.loads(line.removeprefix("data: "))
    assert events.count("delta") == 4
    assert events[-1] == "done"
    assert done["message"]["content"] == "one two three four"
    assert done["message"]["status"] == "complete"
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert service.process.wait(timeout=15) in (0, -signal.SIGTERM)
    assert "Application shutdown complete." in service.log_path.read_text()


@pytest.mark.slow  # idles 6 seconds
def test_an_idle_keep_alive_connection_is_still_open_after_6_seconds(
    service: ServiceProcess,
) -> None:
    """Uvicorn's default closes idle connections after 5 s, exactly httpx's default expiry
    (and far below a load balancer's 60 s): a reused connection then raced the close."""
    with httpx.Client(base_url=service.base_url, limits=client_limits()) as http:
        first = http.get("/healthz")
        first_port = first.extensions["network_stream"].get_extra_info("client_addr")
        time.sleep(6)
        second = http.get("/healthz")
        second_port = second.extensions["network_stream"].get_extra_info("client_addr")
    assert first.status_code == second.status_code == 200
    # The same TCP connection served both: the server kept it open.
    assert second_port == first_port
