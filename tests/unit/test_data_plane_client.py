"""The data-plane HTTP client (supabase-py's httpx client over aiohttp) keeps no cookies."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from autopilot_api.core.config import load_settings
from autopilot_api.core.supabase import (
    DataPlaneEndpoint,
    close_supabase_client,
    create_supabase_client,
)


class _SetsCookies(BaseHTTPRequestHandler):
    seen: list[str | None] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.headers.get("Cookie"))
        self.send_response(200)
        self.send_header("Set-Cookie", "tracker=1; Path=/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def server() -> Iterator[str]:
    _SetsCookies.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _SetsCookies)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


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
            response = await http.get(f"{server}/rpc/x")
            assert response.headers["set-cookie"] == "tracker=1; Path=/"
        assert len(http.cookies) == 0
    finally:
        await close_supabase_client(client)
    assert _SetsCookies.seen == [None, None]
