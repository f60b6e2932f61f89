"""The data-plane HTTP client: supabase-py's httpx client, with its own request building
and transport. Checked against httpx itself (the same requests) and against real HTTP
servers (the standard library's, over TCP and TLS), never against a fake of either."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from autopilot_api.core.config import load_settings
from autopilot_api.core.dataplane_transport import DataPlaneTransport, transport_stats
from autopilot_api.core.supabase import (
    DataPlaneEndpoint,
    DataPlaneHttpClient,
    close_supabase_client,
    create_supabase_client,
)


class _Handler(BaseHTTPRequestHandler):
    """Answers by path; records what it was sent and on which connection."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[dict[str, Any]]] = []

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
        body = self._record()
        self._send(200, body, Content_Type="application/json")

    def log_message(self, *args: object) -> None:
        return None


def _serve(context: ssl.SSLContext | None = None) -> Iterator[str]:
    _Handler.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    scheme = "http"
    if context is not None:
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        scheme = "https"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{scheme}://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server() -> Iterator[str]:
    yield from _serve()


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
    for url in _serve(context):
        yield url, cert_path


def _idle(http: httpx.AsyncClient) -> int:
    return sum(transport_stats(http._transport).values())


def _client(**transport: Any) -> DataPlaneHttpClient:
    return DataPlaneHttpClient(
        timeout=httpx.Timeout(5.0, connect=3.0), transport=DataPlaneTransport(**transport)
    )


# --- requests: the same as httpx's -----------------------------------------------------------
POSTGREST_HEADERS = httpx.Headers(
    {
        "X-Client-Info": "supabase-py/2",
        "apikey": "service-key",
        "Authorization": "Bearer service-key",
        "Accept-Profile": "autopilot",
        "Content-Profile": "autopilot",
    }
)
REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    # What postgrest-py sends: an RPC with a JSON body and empty query parameters.
    (
        "POST",
        "http://127.0.0.1:3000/rpc/resolve_session",
        {
            "content": b'{"p_token_hash": "ab"}',
            "params": httpx.QueryParams(),
            "headers": POSTGREST_HEADERS,
        },
    ),
    ("POST", "http://127.0.0.1:3000/rpc/no_args", {"content": None, "headers": POSTGREST_HEADERS}),
    ("GET", "https://project.supabase.co/rest/v1/rpc/f", {"headers": {"Accept": "text/csv"}}),
    ("HEAD", "http://localhost:3000/sessions", {"headers": [("Prefer", "count=exact")]}),
    (
        "PATCH",
        "http://127.0.0.1:3000/sessions",
        {
            "content": b"{}",
            "headers": [("X-Dup", "1"), ("x-dup", "2"), ("user-agent", "ours")],
            "timeout": 2.5,
        },
    ),
    ("PUT", "http://127.0.0.1:3000/x", {"content": b"", "headers": {"Content-Length": "0"}}),
    # Not built here, handed to httpx: query strings, parameters, json=, relative URLs.
    ("GET", "http://127.0.0.1:3000/sessions?id=eq.1", {"headers": POSTGREST_HEADERS}),
    ("GET", "http://127.0.0.1:3000/sessions", {"params": {"select": "id"}}),
    ("POST", "http://127.0.0.1:3000/rpc/f", {"json": {"a": 1}}),
    ("POST", "/rpc/f", {"content": b"{}"}),
]


class TestBuildRequest:
    @pytest.mark.parametrize(("method", "url", "kwargs"), REQUESTS)
    def test_builds_the_request_httpx_would(
        self, method: str, url: str, kwargs: dict[str, Any]
    ) -> None:
        ours = DataPlaneHttpClient(base_url="http://127.0.0.1:3000", timeout=httpx.Timeout(7.0))
        reference = httpx.AsyncClient(base_url="http://127.0.0.1:3000", timeout=httpx.Timeout(7.0))
        for _ in range(2):  # the second time from the parsed-URL cache
            built = ours.build_request(method, url, **kwargs)
            expected = reference.build_request(method, url, **kwargs)
            assert built.method == expected.method
            assert built.url == expected.url
            assert built.headers.raw == expected.headers.raw
            assert built.read() == expected.read()
            assert built.extensions == expected.extensions


# --- the transport, against real servers ---------------------------------------------------------
class TestDataPlaneTransport:
    @pytest.mark.asyncio
    async def test_calls_reuse_one_connection(self, server: str) -> None:
        async with _client() as http:
            for index in range(5):
                response = await http.post(f"{server}/rpc/f", content=b'{"n": %d}' % index)
                assert response.json() == {"n": index}
            assert transport_stats(http._transport) == {server: 1}
        assert len({request["peer"] for request in _Handler.seen}) == 1
        assert [request["body"] for request in _Handler.seen] == [
            b'{"n": %d}' % index for index in range(5)
        ]

    @pytest.mark.asyncio
    async def test_concurrent_calls_get_their_own_answers(self, server: str) -> None:
        async with _client(max_connections=4) as http:
            bodies = [b'{"n": %d}' % index for index in range(40)]
            responses = await asyncio.gather(
                *(http.post(f"{server}/rpc/f", content=body) for body in bodies)
            )
            assert [response.content for response in responses] == bodies
            assert _idle(http) <= 4

    @pytest.mark.asyncio
    async def test_reads_chunked_gzip_and_until_close_bodies(self, server: str) -> None:
        async with _client() as http:
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

    @pytest.mark.asyncio
    async def test_a_connection_the_server_closes_is_not_reused(self, server: str) -> None:
        async with _client() as http:
            assert (await http.get(f"{server}/close")).status_code == 200
            assert _idle(http) == 0
            assert (await http.get(f"{server}/ok")).status_code == 200
        assert len({request["peer"] for request in _Handler.seen}) == 2

    @pytest.mark.asyncio
    async def test_an_idle_connection_past_its_expiry_is_replaced(self, server: str) -> None:
        async with _client(keepalive_expiry=0.05) as http:
            await http.get(f"{server}/ok")
            await asyncio.sleep(0.2)
            await http.get(f"{server}/ok")
        assert len({request["peer"] for request in _Handler.seen}) == 2

    @pytest.mark.asyncio
    async def test_a_slow_answer_is_a_read_timeout_and_the_connection_is_dropped(
        self, server: str
    ) -> None:
        async with _client() as http:
            with pytest.raises(httpx.ReadTimeout) as caught:
                await http.get(f"{server}/slow", timeout=httpx.Timeout(5.0, read=0.2))
            assert caught.value.request.url.path == "/slow"
            assert _idle(http) == 0
            # The late answer to the abandoned call never reaches the next one.
            await asyncio.sleep(1.0)
            assert (await http.get(f"{server}/ok")).json() == {"ok": True}

    @pytest.mark.asyncio
    async def test_a_refused_connection_is_a_connect_error(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        async with _client() as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(f"http://127.0.0.1:{port}/rpc/f")

    @pytest.mark.asyncio
    @pytest.mark.parametrize("path", ["/garbage", "/hang-up"])
    async def test_a_broken_answer_is_a_protocol_error(self, server: str, path: str) -> None:
        async with _client() as http:
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get(f"{server}{path}")
            assert (await http.get(f"{server}/ok")).status_code == 200

    @pytest.mark.asyncio
    async def test_a_cancelled_call_leaves_no_connection_behind(self, server: str) -> None:
        async with _client() as http:
            call = asyncio.ensure_future(http.get(f"{server}/slow"))
            await asyncio.sleep(0.2)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert _idle(http) == 0
            assert (await http.get(f"{server}/ok")).json() == {"ok": True}

    @pytest.mark.asyncio
    async def test_no_free_connection_is_a_pool_timeout(self, server: str) -> None:
        async with _client(max_connections=1) as http:
            slow = asyncio.ensure_future(http.get(f"{server}/slow"))
            await asyncio.sleep(0.1)
            with pytest.raises(httpx.PoolTimeout):
                await http.get(f"{server}/ok", timeout=httpx.Timeout(5.0, pool=0.1))
            assert (await slow).status_code == 200

    @pytest.mark.asyncio
    async def test_a_header_with_a_line_break_is_refused_before_sending(self, server: str) -> None:
        async with _client() as http:
            request = http.build_request("GET", f"{server}/ok")
            request.headers["X-Evil"] = "a\r\nX-Injected: 1"
            with pytest.raises(httpx.LocalProtocolError):
                await http.send(request)
        assert _Handler.seen == []

    @pytest.mark.asyncio
    async def test_tls_is_verified(self, tls_server: tuple[str, Path]) -> None:
        url, cert_path = tls_server
        trusting = ssl.create_default_context(cafile=str(cert_path))
        async with _client(ssl_context=trusting) as http:
            assert (await http.post(f"{url}/rpc/f", content=b"[1]")).json() == [1]
        # The default roots (certifi's, as httpx uses) do not know this certificate.
        async with _client() as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(f"{url}/ok")


@pytest.mark.asyncio
async def test_a_cookie_set_by_the_server_is_never_sent_back(server: str) -> None:
    settings = load_settings(
        _env_file=None, supabase_url=server, supabase_service_role_key="service-key"
    )
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
    assert [request["cookie"] for request in _Handler.seen] == [None, None]
