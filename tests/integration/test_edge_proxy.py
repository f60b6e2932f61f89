"""The edge (deploy/nginx) with a real nginx in front of a real `autopilot-api serve`: slow
headers, slow bodies, one address holding many connections or sending too many requests — and
another client still served each time; event streams unbuffered; the client's address as the
API sees it, which a client cannot spoof; nginx's own answers in the API's error envelope.

Clients use source addresses of their own on the loopback (127.0.0.x; Linux routes all of
127/8 there), so that per-address limits apply to the attacker and not to the bystander. The
timeouts are shortened in the rendered configuration; the production defaults are in
deploy/nginx/defaults.env."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from autopilot_api.local.dataplane import LocalDataPlane, free_port
from tests.fixtures.factories import SPA_ORIGIN
from tests.fixtures.fake_openai import FakeOpenAIServer, Reply
from tests.fixtures.nginx import EdgeProxy, NginxTools, start_edge
from tests.fixtures.processes import ServiceProcess, start_service
from tests.fixtures.sse import sse_messages
from tests.integration.test_conversations import extraction_json

ASYNC = pytest.mark.asyncio(loop_scope="session")
COOKIE = "autopilot_session"
HEADER_TIMEOUT = 2
BODY_TIMEOUT = 2
CONNECTIONS_PER_IP = 4
SESSIONS_PER_IP_PER_HOUR = 3
EDGE = {
    "CLIENT_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
    "CLIENT_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
    "LIMIT_CONN_PER_IP": str(CONNECTIONS_PER_IP),
    "LIMIT_REQ_PER_IP_PER_SECOND": "1000",
    "LIMIT_REQ_BURST": "1000",
}

EdgeFactory = Callable[..., EdgeProxy]


@pytest.fixture(scope="module")
def service(
    data_plane: LocalDataPlane,
    fake_openai: FakeOpenAIServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    process = start_service(
        data_plane,
        tmp_path_factory.mktemp("edge-api"),
        # nginx connects from 127.0.0.1: the only proxy the API believes.
        TRUSTED_PROXY_IPS="127.0.0.1",
        SESSION_CREATE_LIMIT_PER_HOUR=str(SESSIONS_PER_IP_PER_HOUR),
        EVENTS_HEARTBEAT_SECONDS="0.5",
        OPENAI_API_KEY="test-key",
        OPENAI_BASE_URL=fake_openai.base_url,
        OPENAI_MAX_RETRIES="0",
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def edges(
    nginx: NginxTools, service: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EdgeFactory]:
    started: list[EdgeProxy] = []

    def start(upstream: str | None = None, **settings: str) -> EdgeProxy:
        edge = start_edge(
            nginx,
            upstream or service.base_url.removeprefix("http://"),
            tmp_path_factory.mktemp("edge"),
            **{**EDGE, **settings},
        )
        started.append(edge)
        return edge

    yield start
    for edge in started:
        edge.stop()


@pytest.fixture(scope="module")
def edge(edges: EdgeFactory) -> EdgeProxy:
    return edges()


def connect(edge: EdgeProxy, source: str) -> socket.socket:
    return socket.create_connection(
        ("127.0.0.1", edge.port), timeout=10, source_address=(source, 0)
    )


def client(edge: EdgeProxy, source: str, **kwargs: Any) -> httpx.Client:
    return httpx.Client(
        base_url=edge.base_url,
        transport=httpx.HTTPTransport(local_address=source),
        headers={"Origin": SPA_ORIGIN},
        timeout=10,
        **kwargs,
    )


def async_client(edge: EdgeProxy, source: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=edge.base_url,
        transport=httpx.AsyncHTTPTransport(local_address=source),
        headers={"Origin": SPA_ORIGIN},
        timeout=10,
    )


def healthz(edge: EdgeProxy, source: str) -> int | str:
    try:
        with client(edge, source) as http:
            return http.get("/healthz").status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


def closed_by_peer(sock: socket.socket) -> bool:
    """Without waiting: has the other side closed (or reset) this connection?"""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(65536) == b""
    except OSError:
        return True


def log_lines(edge: EdgeProxy, source: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in edge.access_log.splitlines() if line]
    return [line for line in lines if line["remote_addr"] == source]


def assert_envelope(response: httpx.Response, status: int, code: str, category: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"code", "message", "category", "details"}
    assert (error["code"], error["category"]) == (code, category)
    assert response.headers["x-request-id"]


def test_slow_headers_are_cut_while_another_address_is_served(edge: EdgeProxy) -> None:
    attacker, bystander = "127.0.0.11", "127.0.0.12"
    slow = [connect(edge, attacker) for _ in range(50)]
    for sock in slow:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
    started = time.monotonic()
    closed_after: dict[int, float] = {}
    served: list[int | str] = []
    try:
        # A header byte from each every half second, as a slowloris client sends them.
        while len(closed_after) < len(slow) and time.monotonic() - started < HEADER_TIMEOUT + 5:
            for index, sock in enumerate(slow):
                if index in closed_after:
                    continue
                try:
                    sock.send(b"X")
                except OSError:
                    closed_after[index] = time.monotonic() - started
                    continue
                if closed_by_peer(sock):
                    closed_after[index] = time.monotonic() - started
            served.append(healthz(edge, bystander))
            time.sleep(0.5)
    finally:
        for sock in slow:
            sock.close()
    print(  # noqa: T201
        f"\nslow headers: 50 connections cut after {min(closed_after.values()):.1f}-"
        f"{max(closed_after.values()):.1f} s (client_header_timeout {HEADER_TIMEOUT} s); "
        f"another address meanwhile: {served}"
    )
    assert len(closed_after) == len(slow)
    # The timer runs from the head's first byte and is not reset by later ones.
    assert HEADER_TIMEOUT - 0.5 <= min(closed_after.values())
    assert max(closed_after.values()) <= HEADER_TIMEOUT + 2
    assert served
    assert all(status == 200 for status in served), served


def test_slow_body_is_cut_while_another_address_is_served(edge: EdgeProxy) -> None:
    attacker, bystander = "127.0.0.21", "127.0.0.22"
    head = (
        f"POST /api/v1/sessions HTTP/1.1\r\nHost: t\r\nOrigin: {SPA_ORIGIN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 64\r\n\r\n{"
    )
    slow = [connect(edge, attacker) for _ in range(CONNECTIONS_PER_IP)]
    for sock in slow:
        sock.sendall(head.encode())
    started = time.monotonic()
    closed_after: dict[int, float] = {}
    served: list[int | str] = []
    try:
        # One body byte from each every 3 s: slower than client_body_timeout between reads.
        next_byte = started + 3
        while len(closed_after) < len(slow) and time.monotonic() - started < BODY_TIMEOUT + 5:
            for index, sock in enumerate(slow):
                if index not in closed_after and closed_by_peer(sock):
                    closed_after[index] = time.monotonic() - started
            if time.monotonic() >= next_byte:
                next_byte += 3
                for index, sock in enumerate(slow):
                    if index not in closed_after:
                        try:
                            sock.send(b" ")
                        except OSError:
                            closed_after[index] = time.monotonic() - started
            served.append(healthz(edge, bystander))
            time.sleep(0.25)
        with client(edge, bystander) as http:
            created = http.post("/api/v1/sessions").status_code
    finally:
        for sock in slow:
            sock.close()
    cut = log_lines(edge, attacker)
    print(  # noqa: T201
        f"\nslow body: {len(slow)} bodies at 1 byte / 3 s cut after "
        f"{min(closed_after.values()):.1f}-{max(closed_after.values()):.1f} s "
        f"(client_body_timeout {BODY_TIMEOUT} s), logged {sorted({c['status'] for c in cut})}, "
        f"upstream {sorted({c['upstream_status'] for c in cut})}; another address meanwhile: "
        f"{len(served)} x {sorted(set(map(str, served)))}, POST /sessions {created}"
    )
    assert len(closed_after) == len(slow)
    assert BODY_TIMEOUT - 0.5 <= min(closed_after.values())
    assert max(closed_after.values()) <= BODY_TIMEOUT + 2
    assert served
    assert all(status == 200 for status in served), served
    assert created == 201
    # nginx reads a body whole before the API sees the request: the API never saw these.
    assert [(c["status"], c["upstream_status"]) for c in cut] == [(408, "")] * len(slow)


def test_one_address_holding_many_connections_leaves_room_for_others(
    edges: EdgeFactory,
) -> None:
    attacker, bystander = "127.0.0.31", "127.0.0.32"
    # Bodies announced and never sent hold their requests open (for 30 s here).
    edge = edges(CLIENT_BODY_TIMEOUT_SECONDS="30")
    head = (
        f"POST /api/v1/sessions HTTP/1.1\r\nHost: t\r\nOrigin: {SPA_ORIGIN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 10\r\n\r\n"
    )
    holding = [connect(edge, attacker) for _ in range(3 * CONNECTIONS_PER_IP)]
    idle = [connect(edge, attacker) for _ in range(300)]
    try:
        for sock in holding:
            sock.sendall(head.encode())
        time.sleep(0.5)
        refused = []
        for sock in holding:
            if select.select([sock], [], [], 0)[0]:
                refused.append(sock.recv(65536))
        served = healthz(edge, bystander)
        with client(edge, bystander) as http:
            created = http.post("/api/v1/sessions").status_code
        with client(edge, attacker) as http:
            attacker_again = http.get("/healthz")
    finally:
        for sock in holding + idle:
            sock.close()
    print(  # noqa: T201
        f"\nmany connections: one address opened {len(holding)} requests and {len(idle)} idle "
        f"connections: {len(holding) - len(refused)} held (limit {CONNECTIONS_PER_IP}), "
        f"{len(refused)} answered 429; another address: GET {served}, POST /sessions {created}"
    )
    assert len(refused) == len(holding) - CONNECTIONS_PER_IP
    assert all(answer.startswith(b"HTTP/1.1 429 ") for answer in refused), refused
    assert all(b'"code":"rate_limited"' in answer for answer in refused)
    assert served == 200
    assert created == 201
    assert_envelope(attacker_again, 429, "rate_limited", "temporary")
    assert attacker_again.headers["retry-after"] == "1"


def test_requests_over_the_rate_get_429_and_another_address_does_not(
    edges: EdgeFactory,
) -> None:
    attacker, bystander = "127.0.0.41", "127.0.0.42"
    edge = edges(LIMIT_REQ_PER_IP_PER_SECOND="1", LIMIT_REQ_BURST="2")
    with client(edge, attacker) as http:
        answers = [http.get("/healthz") for _ in range(10)]
    statuses = [answer.status_code for answer in answers]
    # One a second, and two more at once: the first 3 pass, then about one a second.
    assert statuses[:3] == [200, 200, 200], statuses
    assert statuses.count(429) >= 5, statuses
    assert set(statuses) == {200, 429}, statuses
    limited = next(answer for answer in answers if answer.status_code == 429)
    assert_envelope(limited, 429, "rate_limited", "temporary")
    assert limited.headers["retry-after"] == "1"
    assert limited.json()["error"]["details"] == {"retryAfterSeconds": 1}
    assert healthz(edge, bystander) == 200


def test_a_client_cannot_name_another_address(edge: EdgeProxy) -> None:
    spoofer, other = "127.0.0.51", "127.0.0.52"
    statuses = []
    with client(edge, spoofer) as http:
        for n in range(SESSIONS_PER_IP_PER_HOUR + 1):
            spoofed = {"X-Forwarded-For": f"203.0.113.{n}, 198.51.100.{n}"}
            statuses.append(http.post("/api/v1/sessions", headers=spoofed))
            http.cookies.clear()
    # The API counts session creation per client address: every spoofed header was replaced
    # by the address nginx saw, so the spoofer spent its own budget...
    assert [s.status_code for s in statuses] == [201] * SESSIONS_PER_IP_PER_HOUR + [429]
    assert_envelope(statuses[-1], 429, "rate_limited", "temporary")
    assert "your address" not in statuses[-1].json()["error"]["message"]  # the API's, not nginx's
    # ...and the API tells the addresses behind the proxy apart: another one still may.
    with client(edge, other) as http:
        assert http.post("/api/v1/sessions").status_code == 201


def test_sizes_request_ids_and_a_missing_api_answer_in_the_envelope(
    edge: EdgeProxy, edges: EdgeFactory
) -> None:
    source = "127.0.0.71"
    with client(edge, source) as http:
        assert http.get("/healthz", headers={"X-Fill": "a" * 15000}).status_code == 200
        too_large = http.get("/healthz", headers={"X-Fill": "a" * 20000})
        assert_envelope(too_large, 431, "header_too_large", "user_fixable")
        assert too_large.json()["error"]["details"] == {"maxBytes": 16384}

        body = http.post(
            "/api/v1/sessions",
            content=b"{" + b" " * (1024 * 1024) + b"}",
            headers={"Content-Type": "application/json"},
        )
        assert_envelope(body, 413, "payload_too_large", "user_fixable")
        assert body.json()["error"]["details"] == {"maxBytes": 1024 * 1024}

        # A sane X-Request-ID goes through to the API and back; another is replaced by one
        # nginx makes, which the API then uses too.
        assert (
            http.get("/healthz", headers={"X-Request-ID": "edge-1"}).headers["x-request-id"]
            == "edge-1"
        )
        replaced = http.get("/healthz", headers={"X-Request-ID": "not sane!"})
        assert replaced.headers["x-request-id"] != "not sane!"
        assert len(replaced.headers["x-request-id"]) == 32
        lines = log_lines(edge, source)
        assert lines[-1]["request_id"] == replaced.headers["x-request-id"]

    nowhere = edges(upstream=f"127.0.0.1:{free_port()}")
    with client(nowhere, source) as http:
        down = http.get("/healthz")
    assert_envelope(down, 503, "temporarily_unavailable", "temporary")
    assert down.headers["retry-after"] == "5"


@ASYNC
async def test_event_stream_through_the_edge_is_not_buffered(edge: EdgeProxy) -> None:
    async with async_client(edge, "127.0.0.61") as http:
        created = await http.post("/api/v1/sessions")
        assert created.status_code == 201
        cookie = {"Cookie": f"{COOKIE}={created.cookies[COOKIE]}"}
        http.cookies.clear()
        async with http.stream("GET", "/api/v1/events", headers=cookie) as stream:
            assert stream.status_code == 200
            messages = sse_messages(stream)
            # A few bytes each, seconds before the stream ends (EVENTS_MAX_STREAM_SECONDS,
            # 600): a buffering proxy would hold them.
            hello = await asyncio.wait_for(anext(messages), 5)
            assert hello.comments == ["connected"]
            heartbeat = await asyncio.wait_for(anext(messages), 5)
            assert heartbeat.comments


@ASYNC
async def test_chat_reply_streams_through_the_edge_as_it_is_made(
    edge: EdgeProxy, openai_server: FakeOpenAIServer
) -> None:
    openai_server.responder = lambda request: (
        Reply(json_content=extraction_json([])) if "response_format" in request else None
    )
    words = ["Which ", "kind ", "of ", "facility ", "is ", "it?"]
    openai_server.default = Reply(chunks=words, chunk_delay_seconds=0.4)
    async with async_client(edge, "127.0.0.62") as http:
        opened = await http.post("/api/v1/conversations", json={})
        assert opened.status_code == 201, opened.text
        arrived: list[tuple[str, float]] = []
        async with http.stream(
            "POST",
            f"/api/v1/conversations/{opened.json()['id']}/messages",
            json={"content": "hello"},
            headers={"Accept": "text/event-stream"},
        ) as stream:
            assert stream.status_code == 200
            async for message in sse_messages(stream):
                if message.event:
                    arrived.append((message.event, time.monotonic()))
    deltas = [at for event, at in arrived if event == "delta"]
    done = next(at for event, at in arrived if event == "done")
    # The first word reached the client while the model was still producing the others.
    assert len(deltas) == len(words)
    assert done - deltas[0] >= 0.4 * (len(words) - 2)
