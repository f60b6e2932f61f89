"""The data-plane HTTP client under each transport DATA_PLANE_TRANSPORT can choose.

Every behaviour is checked against real HTTP servers (the standard library's, over TCP and
TLS), never against a fake of either, and under each transport: the builtin one on
asyncio's loop and on uvloop (the loop the service runs on), and httpx's own.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from autopilot_api.core.config import load_settings
from autopilot_api.core.dataplane_transport import (
    PROXY_VARIABLES,
    ResponseTooLarge,
    TransportKind,
    choose_transport,
    create_data_plane_http_client,
)
from autopilot_api.core.supabase import (
    DataPlaneEndpoint,
    call_rpc,
    close_supabase_client,
    create_supabase_client,
)

TRICKLE_CHUNKS = 10
CHUNK_PAUSE_SECONDS = 0.1
# Each pause of the trickling body is a fifth of it; the whole body takes twice as long.
READ_TIMEOUT_SECONDS = 0.5
STALL_SECONDS = 1.5
ENDLESS_BYTES = 64 * 1024 * 1024


class _Handler(BaseHTTPRequestHandler):
    """Answers by path; records what it was sent, the connections it accepted, and how
    the connection ended."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[dict[str, Any]]] = []
    accepted: ClassVar[list[int]] = []
    endless_sent: ClassVar[list[int]] = []
    # The next request on a kept-alive connection finds it closed by the server: the close
    # comes when the request's bytes arrive, before a byte of them is read.
    drop_on_reuse: ClassVar[bool] = False
    # After each answer the server closes the connection (without saying so).
    close_after_answer: ClassVar[bool] = False
    closed_idle: ClassVar[threading.Event] = threading.Event()

    def setup(self) -> None:
        super().setup()
        type(self).accepted.append(self.client_address[1])
        self.answered = 0

    def handle_one_request(self) -> None:
        if self.answered and type(self).drop_on_reuse:
            select.select([self.connection], [], [], 5.0)
            self.close_connection = True
            return
        super().handle_one_request()
        self.answered += 1
        if type(self).close_after_answer:
            self.close_connection = True

    def finish(self) -> None:
        super().finish()
        if type(self).close_after_answer:
            self.connection.close()
            type(self).closed_idle.set()

    def _record(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        type(self).seen.append(
            {
                "method": self.command,
                "path": self.path,
                "cookie": self.headers.get("Cookie"),
                "body": body,
                "peer": self.client_address[1],
            }
        )
        return body

    def _send(self, status: int, body: bytes, **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        if "Content_Length" not in headers and "Transfer_Encoding" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_slowly(self, chunks: int, pause_before: Callable[[int], float]) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(chunks))
        self.end_headers()
        try:
            for index in range(chunks):
                time.sleep(pause_before(index))
                self.wfile.write(b"x")
        except OSError:  # the client gave up
            self.close_connection = True

    def _send_endless(self) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        part = b"x" * 65536
        sent = 0
        try:
            while sent < ENDLESS_BYTES:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                sent += len(part)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True
        type(self).endless_sent.append(sent)

    def do_GET(self) -> None:
        self._record()
        if self.path == "/cookie":
            self._send(200, b"", Set_Cookie="tracker=1; Path=/")
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b'{"a":', b" [1, 2", b", 3]}"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/gzip":
            self._send(200, gzip.compress(b'{"zipped": true}'), Content_Encoding="gzip")
        elif self.path == "/until-close":
            # No length and no chunking: the body ends when the connection does.
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b'{"whole": "body"}')
            self.close_connection = True
        elif self.path == "/close":
            self._send(200, b"{}", Connection="close")
            self.close_connection = True
        elif self.path == "/slow":
            threading.Event().wait(1.0)
            self._send(200, b"{}")
        elif self.path == "/trickle":
            self._send_slowly(TRICKLE_CHUNKS, lambda index: CHUNK_PAUSE_SECONDS)
        elif self.path == "/stall":
            self._send_slowly(2, lambda index: STALL_SECONDS if index else 0.0)
        elif self.path == "/big":
            self._send(200, b"x" * (200 * 1024))
        elif self.path == "/endless":
            self._send_endless()
        elif self.path == "/empty":
            self._send(204, b"")
        elif self.path == "/garbage":
            self.wfile.write(b"this is not http\r\n\r\n")
            self.close_connection = True
        elif self.path == "/hang-up":
            self.close_connection = True
        else:
            self._send(200, b'{"ok": true}', Content_Type="application/json")

    def do_HEAD(self) -> None:
        self._record()
        self._send(200, b"x" * 100)

    def do_POST(self) -> None:
        if self.path == "/no-read":
            # Takes nothing of the request: the client's write stalls once buffers fill.
            time.sleep(STALL_SECONDS)
            self.close_connection = True
            return
        body = self._record()
        self._send(200, body, Content_Type="application/json")

    def log_message(self, *args: object) -> None:
        return None


class _ProxyHandler(BaseHTTPRequestHandler):
    """An HTTP proxy that answers every request itself: it records the absolute URL."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).seen.append(self.path)
        body = b'{"via": "proxy"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


def _serve(
    handler: type[BaseHTTPRequestHandler], context: ssl.SSLContext | None = None
) -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    scheme = "http"
    if context is not None:
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        scheme = "https"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"{scheme}://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def _fresh_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*PROXY_VARIABLES, "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setattr(_Handler, "seen", [])
    monkeypatch.setattr(_Handler, "accepted", [])
    monkeypatch.setattr(_Handler, "endless_sent", [])
    monkeypatch.setattr(_Handler, "closed_idle", threading.Event())
    monkeypatch.setattr(_ProxyHandler, "seen", [])


@pytest.fixture
def server() -> Iterator[str]:
    yield from _serve(_Handler)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    cert_path, key_path = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    for url in _serve(_Handler, context):
        yield url, cert_path


class _Clock:
    """A monotonic clock the test moves on (the builtin transport's idle limit reads it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Setup:
    """One transport on one event loop."""

    kind: TransportKind
    loop: str
    clock: _Clock

    def run(self, scenario: Coroutine[Any, Any, None]) -> None:
        if self.loop == "uvloop":
            uvloop.run(scenario)
        else:
            asyncio.run(scenario)

    def client(
        self,
        *,
        max_connections: int = 100,
        keepalive_seconds: float = 15.0,
        max_response_bytes: int = 1024 * 1024,
        ssl_context: ssl.SSLContext | None = None,
    ) -> httpx.AsyncClient:
        return create_data_plane_http_client(
            self.kind,
            timeout=httpx.Timeout(5.0, connect=3.0),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=keepalive_seconds,
            ),
            max_response_bytes=max_response_bytes,
            ssl_context=ssl_context,
            clock=self.clock,
        )


@pytest.fixture(
    params=[("builtin", "asyncio"), ("builtin", "uvloop"), ("httpx", "asyncio")],
    ids=["builtin-asyncio", "builtin-uvloop", "httpx"],
)
def setup(request: pytest.FixtureRequest) -> Setup:
    kind, loop = request.param
    return Setup(kind=kind, loop=loop, clock=_Clock())


def _peers() -> list[int]:
    """The client ports of the requests the server read, in order."""
    return [request["peer"] for request in _Handler.seen]


class TestTransport:
    def test_calls_reuse_one_connection(self, setup: Setup, server: str) -> None:
        async def scenario() -> None:
            async with setup.client() as http:
                for index in range(5):
                    response = await http.post(f"{server}/rpc/f", content=b'{"n": %d}' % index)
                    assert response.json() == {"n": index}

        setup.run(scenario())
        assert len(set(_peers())) == 1
        assert [request["body"] for request in _Handler.seen] == [
            b'{"n": %d}' % index for index in range(5)
        ]

    def test_concurrent_calls_get_their_own_answers(self, setup: Setup, server: str) -> None:
        async def scenario() -> None:
            async with setup.client(max_connections=4) as http:
                bodies = [b'{"n": %d}' % index for index in range(40)]
                responses = await asyncio.gather(
                    *(http.post(f"{server}/rpc/f", content=body) for body in bodies)
                )
                assert [response.content for response in responses] == bodies

        setup.run(scenario())
        assert len(_Handler.accepted) <= 4

    def test_reads_chunked_gzip_and_until_close_bodies(self, setup: Setup, server: str) -> None:
        async def scenario() -> None:
            async with setup.client() as http:
                assert (await http.get(f"{server}/chunked")).json() == {"a": [1, 2, 3]}
                assert (await http.get(f"{server}/gzip")).json() == {"zipped": True}
                assert (await http.get(f"{server}/until-close")).json() == {"whole": "body"}
                assert (await http.get(f"{server}/empty")).status_code == 204
                head = await http.head(f"{server}/anything")
                assert head.status_code == 200
                assert head.headers["content-length"] == "100"
                assert head.content == b""
                # The connection is still good after a HEAD and a 204.
                assert (await http.get(f"{server}/ok")).json() == {"ok": True}

        setup.run(scenario())
        # One connection before the body read until close, one after it.
        assert len(set(_peers())) == 2

    def test_a_connection_the_server_closes_is_not_reused(self, setup: Setup, server: str) -> None:
        async def scenario() -> None:
            async with setup.client() as http:
                assert (await http.get(f"{server}/close")).status_code == 200
                assert (await http.get(f"{server}/ok")).status_code == 200

        setup.run(scenario())
        assert len(set(_peers())) == 2

    def test_an_idle_connection_is_reused_until_the_idle_limit_only(
        self, setup: Setup, server: str
    ) -> None:
        keepalive = 15.0

        async def wait(seconds: float) -> None:
            if setup.kind == "builtin":
                setup.clock.now += seconds
            else:  # httpcore reads time.monotonic() itself: wait, on a limit of 1 s
                await asyncio.sleep(seconds / keepalive)

        async def scenario() -> None:
            limit = keepalive if setup.kind == "builtin" else 1.0
            async with setup.client(keepalive_seconds=limit) as http:
                await http.get(f"{server}/ok")
                await wait(keepalive * 0.5)
                await http.get(f"{server}/ok")  # reused
                await wait(keepalive * 1.5)
                await http.get(f"{server}/ok")  # a new connection

        setup.run(scenario())
        first, second, third = _peers()
        assert first == second != third

    @pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
    def test_an_idle_connection_the_server_closed_is_not_used(
        self, setup: Setup, request: pytest.FixtureRequest, tls: bool
    ) -> None:
        """The server closes a kept-alive connection (without saying so) and the event loop
        has not run since: the check before reuse sees it, and a POST, which is never sent
        twice, goes on a new connection."""
        context = None
        if tls:
            url, cert_path = request.getfixturevalue("tls_server")
            context = ssl.create_default_context(cafile=str(cert_path))
        else:
            url = request.getfixturevalue("server")
        _Handler.close_after_answer = True

        async def scenario() -> None:
            async with setup.client(ssl_context=context) as http:
                await http.post(f"{url}/rpc/f", content=b"1")
                # Blocking on purpose: the loop must not see the close before the call.
                assert _Handler.closed_idle.wait(5.0)
                time.sleep(0.05)
                assert (await http.post(f"{url}/rpc/f", content=b"2")).content == b"2"

        try:
            setup.run(scenario())
        finally:
            _Handler.close_after_answer = False
        assert [request["body"] for request in _Handler.seen] == [b"1", b"2"]
        assert len(set(_peers())) == 2

    def test_a_reused_connection_closed_under_a_get_is_retried_once(
        self, setup: Setup, server: str
    ) -> None:
        """The server closes the kept-alive connection as the next request arrives (after
        the check before reuse). The builtin transport sends a GET once more on a new
        connection; httpx's retries nothing, and the call fails cleanly."""
        _Handler.drop_on_reuse = True

        async def scenario() -> None:
            async with setup.client() as http:
                await http.get(f"{server}/ok")
                if setup.kind == "builtin":
                    assert (await http.get(f"{server}/ok")).json() == {"ok": True}
                else:
                    with pytest.raises(httpx.TransportError):
                        await http.get(f"{server}/ok")

        try:
            setup.run(scenario())
        finally:
            _Handler.drop_on_reuse = False
        resent = setup.kind == "builtin"
        assert len(_Handler.accepted) == (2 if resent else 1)
        assert len(_Handler.seen) == (2 if resent else 1)

    def test_a_reused_connection_closed_under_a_post_is_not_retried(
        self, setup: Setup, server: str
    ) -> None:
        """A POST may have run when its connection drops without an answer: it fails
        cleanly and is never sent again."""
        _Handler.drop_on_reuse = True

        async def scenario() -> None:
            async with setup.client() as http:
                await http.post(f"{server}/rpc/f", content=b"1")
                with pytest.raises(httpx.TransportError) as caught:
                    await http.post(f"{server}/rpc/f", content=b"2")
                assert caught.value.request.url.path == "/rpc/f"
                # The next call is served, on a new connection.
                assert (await http.post(f"{server}/rpc/f", content=b"3")).content == b"3"

        try:
            setup.run(scenario())
        finally:
            _Handler.drop_on_reuse = False
        assert [request["body"] for request in _Handler.seen] == [b"1", b"3"]
        assert len(_Handler.accepted) == 2

    def test_a_body_that_keeps_coming_never_times_out_as_a_whole(
        self, setup: Setup, server: str
    ) -> None:
        async def scenario() -> None:
            async with setup.client() as http:
                response = await http.get(
                    f"{server}/trickle", timeout=httpx.Timeout(5.0, read=READ_TIMEOUT_SECONDS)
                )
                assert response.content == b"x" * TRICKLE_CHUNKS

        setup.run(scenario())

    def test_a_body_that_stalls_is_a_read_timeout(self, setup: Setup, server: str) -> None:
        async def scenario() -> None:
            async with setup.client() as http:
                with pytest.raises(httpx.ReadTimeout) as caught:
                    await http.get(
                        f"{server}/stall", timeout=httpx.Timeout(5.0, read=READ_TIMEOUT_SECONDS)
                    )
                assert caught.value.request.url.path == "/stall"
                assert (await http.get(f"{server}/ok")).json() == {"ok": True}

        setup.run(scenario())
        # The connection the timeout abandoned was not reused.
        assert len(set(_peers())) == 2

    def test_a_request_the_server_does_not_take_is_a_write_timeout(
        self, setup: Setup, server: str
    ) -> None:
        async def scenario() -> None:
            async with setup.client() as http:
                with pytest.raises(httpx.WriteTimeout):
                    await http.post(
                        f"{server}/no-read",
                        content=b"x" * (16 * 1024 * 1024),
                        timeout=httpx.Timeout(5.0, read=READ_TIMEOUT_SECONDS, write=0.5),
                    )

        setup.run(scenario())

    def test_a_slow_answer_is_a_read_timeout_and_the_connection_is_dropped(
        self, setup: Setup, server: str
    ) -> None:
        async def scenario() -> None:
            async with setup.client() as http:
                with pytest.raises(httpx.ReadTimeout):
                    await http.get(f"{server}/slow", timeout=httpx.Timeout(5.0, read=0.2))
                # The late answer to the abandoned call never reaches the next one.
                await asyncio.sleep(1.0)
                assert (await http.get(f"{server}/ok")).json() == {"ok": True}

        setup.run(scenario())
        assert len(set(_peers())) == 2

    def test_an_answer_over_the_size_cap_fails_and_closes_its_connection(
        self, setup: Setup, server: str
    ) -> None:
        async def scenario() -> None:
            async with setup.client(max_response_bytes=64 * 1024) as http:
                assert (await http.get(f"{server}/ok")).json() == {"ok": True}
                with pytest.raises(ResponseTooLarge) as caught:
                    await http.get(f"{server}/big")
                assert "DATA_PLANE_MAX_RESPONSE_BYTES (65536)" in str(caught.value)
                assert caught.value.request.url.path == "/big"
                assert (await http.get(f"{server}/ok")).json() == {"ok": True}

        setup.run(scenario())
        first, big, after = _peers()
        assert first == big != after

    def test_an_endless_answer_is_not_buffered(self, setup: Setup, server: str) -> None:
        async def scenario() -> None:
            async with setup.client(max_response_bytes=64 * 1024) as http:
                with pytest.raises(ResponseTooLarge):
                    await http.get(f"{server}/endless")

        setup.run(scenario())
        deadline = time.monotonic() + 10
        while not _Handler.endless_sent and time.monotonic() < deadline:
            time.sleep(0.05)
        # The client closed the connection: the server could not send it all.
        assert _Handler.endless_sent
        assert _Handler.endless_sent[0] < ENDLESS_BYTES

    def test_a_refused_connection_is_a_connect_error(self, setup: Setup) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]

        async def scenario() -> None:
            async with setup.client() as http:
                with pytest.raises(httpx.ConnectError):
                    await http.get(f"http://127.0.0.1:{port}/rpc/f")

        setup.run(scenario())

    @pytest.mark.parametrize("path", ["/garbage", "/hang-up"])
    def test_a_broken_answer_is_a_protocol_error(
        self, setup: Setup, server: str, path: str
    ) -> None:
        async def scenario() -> None:
            async with setup.client() as http:
                with pytest.raises(httpx.RemoteProtocolError):
                    await http.get(f"{server}{path}")
                assert (await http.get(f"{server}/ok")).status_code == 200

        setup.run(scenario())
        # A fresh connection that broke is not retried, even for a GET.
        assert [request["path"] for request in _Handler.seen] == [path, "/ok"]

    def test_a_cancelled_call_leaves_no_connection_behind(self, setup: Setup, server: str) -> None:
        async def scenario() -> None:
            async with setup.client() as http:
                call = asyncio.ensure_future(http.get(f"{server}/slow"))
                await asyncio.sleep(0.2)
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
                assert (await http.get(f"{server}/ok")).json() == {"ok": True}

        setup.run(scenario())
        assert len(set(_peers())) == 2

    def test_no_free_connection_is_a_pool_timeout(self, setup: Setup, server: str) -> None:
        async def scenario() -> None:
            async with setup.client(max_connections=1) as http:
                slow = asyncio.ensure_future(http.get(f"{server}/slow"))
                await asyncio.sleep(0.1)
                with pytest.raises(httpx.PoolTimeout):
                    await http.get(f"{server}/ok", timeout=httpx.Timeout(5.0, pool=0.1))
                assert (await slow).status_code == 200

        setup.run(scenario())

    def test_a_header_with_a_line_break_is_refused_before_sending(
        self, setup: Setup, server: str
    ) -> None:
        async def scenario() -> None:
            async with setup.client() as http:
                request = http.build_request("GET", f"{server}/ok")
                request.headers["X-Evil"] = "a\r\nX-Injected: 1"
                with pytest.raises(httpx.LocalProtocolError):
                    await http.send(request)

        setup.run(scenario())
        assert _Handler.seen == []

    def test_tls_is_verified(self, setup: Setup, tls_server: tuple[str, Path]) -> None:
        url, cert_path = tls_server

        async def scenario() -> None:
            trusting = ssl.create_default_context(cafile=str(cert_path))
            async with setup.client(ssl_context=trusting) as http:
                assert (await http.post(f"{url}/rpc/f", content=b"[1]")).json() == [1]
                assert (await http.post(f"{url}/rpc/f", content=b"[2]")).json() == [2]
            # The default roots (certifi's, as httpx uses) do not know this certificate.
            async with setup.client() as http:
                with pytest.raises(httpx.ConnectError):
                    await http.get(f"{url}/ok")

        setup.run(scenario())
        assert len(set(_peers())) == 1


# --- the client the service makes ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ["builtin", "httpx"])
def test_a_cookie_set_by_the_server_is_never_sent_back(server: str, kind: str) -> None:
    settings = load_settings(
        _env_file=None,
        supabase_url=server,
        supabase_service_role_key="service-key",
        data_plane_transport=kind,
    )

    async def scenario() -> None:
        client = create_supabase_client(DataPlaneEndpoint(server, "service-key"), settings)
        http = client.options.httpx_client
        assert http is not None
        try:
            for _ in range(2):
                response = await http.get(f"{server}/cookie")
                assert response.headers["set-cookie"] == "tracker=1; Path=/"
            assert len(http.cookies) == 0
        finally:
            await close_supabase_client(client)

    asyncio.run(scenario())
    assert [request["cookie"] for request in _Handler.seen] == [None, None]


@pytest.mark.parametrize(
    ("setting", "environ", "chosen"),
    [
        ("auto", {}, "builtin"),
        ("auto", {"NO_PROXY": "*"}, "builtin"),
        ("auto", {"HTTPS_PROXY": "http://proxy:3128"}, "httpx"),
        ("auto", {"http_proxy": "http://proxy:3128"}, "httpx"),
        ("auto", {"All_Proxy": "socks5://proxy:1080"}, "httpx"),
        ("auto", {"HTTPS_PROXY": ""}, "builtin"),
        ("httpx", {}, "httpx"),
        ("builtin", {"HTTPS_PROXY": "http://proxy:3128"}, "builtin"),
    ],
)
def test_a_proxy_in_the_environment_selects_httpx(
    setting: Any, environ: dict[str, str], chosen: str
) -> None:
    assert choose_transport(setting, environ)[0] == chosen


def test_with_a_proxy_set_the_service_reaches_the_data_plane_through_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """HTTP_PROXY names a proxy: the data-plane calls go through it (the data plane's own
    address refuses connections, so nothing reaches it directly)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        unreachable = f"http://127.0.0.1:{probe.getsockname()[1]}"
    proxies = _serve(_ProxyHandler)
    monkeypatch.setenv("HTTP_PROXY", next(proxies))
    settings = load_settings(
        _env_file=None, supabase_url=unreachable, supabase_service_role_key="service-key"
    )

    async def scenario() -> None:
        client = create_supabase_client(DataPlaneEndpoint(unreachable, "service-key"), settings)
        try:
            assert await call_rpc(client, "resolve_session", {"p": 1}) == {"via": "proxy"}
        finally:
            await close_supabase_client(client)

    try:
        with caplog.at_level(logging.INFO, logger="autopilot_api.core.supabase"):
            asyncio.run(scenario())
    finally:
        proxies.close()
    assert _ProxyHandler.seen == [f"{unreachable}/rpc/resolve_session"]
    assert "data-plane transport: httpx (HTTP_PROXY set" in caplog.text
