"""The keys of a Supabase project created today: a secret key (`sb_secret_…`, sent in `apikey`
alone), asymmetric signing keys published at `<SUPABASE_URL>/auth/v1/.well-known/jwks.json`
(found without SUPABASE_JWKS_URL, and no JWT secret needed), and a key the data plane refuses
(found at start-up, and answered with a 503 naming it, not a 500, when refused later)."""

from __future__ import annotations

import http.server
import logging
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from autopilot_api.core.config import Settings
from autopilot_api.core.supabase import (
    DataPlaneEndpoint,
    close_supabase_client,
    create_supabase_client,
)
from autopilot_api.local.dataplane import LocalDataPlane
from tests.conftest import make_settings, running_app
from tests.fixtures.supabase_tokens import (
    JwksServer,
    access_token_claims,
    make_ec_key,
    signed_token,
)

ASYNC = pytest.mark.asyncio(loop_scope="session")
SECRET_KEY = "sb_secret_" + "N" * 32


class _RecordingRest:
    """A REST layer that records the headers of each request and answers as an RPC would."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._answer(b'"ok"')

            def do_GET(self) -> None:  # noqa: N802
                self._answer(b"[]")

            def _answer(self, body: bytes) -> None:
                recorder.headers.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recording_rest() -> Iterator[_RecordingRest]:
    server = _RecordingRest()
    yield server
    server.stop()


@ASYNC
@pytest.mark.parametrize(
    ("key", "authorization"),
    [
        # New keys are not JWTs: `apikey` alone; the project's gateway gives PostgREST a JWT.
        (SECRET_KEY, None),
        # The legacy service_role key is a JWT, and PostgREST reads the role from it.
        ("eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2ln", "Bearer "),
    ],
)
async def test_the_key_is_sent_as_supabase_expects_it(
    recording_rest: _RecordingRest, key: str, authorization: str | None
) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        supabase_url="https://project.supabase.co",
        supabase_secret_key=key,
        supabase_rest_url=recording_rest.url,
    )
    client = create_supabase_client(
        DataPlaneEndpoint(rest_url=recording_rest.url, service_role_key=key), settings
    )
    try:
        await client.rpc("ping", {}).execute()
        await client.table("sessions").select("id").execute()
    finally:
        await close_supabase_client(client)
    assert len(recording_rest.headers) == 2
    for sent in recording_rest.headers:
        assert sent["apikey"] == key
        if authorization is None:
            assert "authorization" not in sent
        else:
            assert sent["authorization"] == authorization + key


@ASYNC
async def test_root_sends_a_person_to_the_docs(app: Any) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as http_client:
        response = await http_client.get("/")
    assert response.status_code == 307
    assert response.headers["location"] == "/docs"


# --- signing keys from the JWKS, found from SUPABASE_URL ------------------------------------


@pytest.fixture
def auth_server() -> Iterator[tuple[JwksServer, Any]]:
    """Supabase Auth's JWKS endpoint of a project whose only signing key is ES256."""
    server = JwksServer()
    key = make_ec_key(str(uuid.uuid4()))
    server.keys = [key.jwk]
    server.start()
    yield server, key
    server.stop()


@ASYNC
async def test_es256_tokens_are_verified_from_the_jwks_at_supabase_url_with_no_jwt_secret(
    data_plane: LocalDataPlane, auth_server: tuple[JwksServer, Any]
) -> None:
    server, key = auth_server
    project_url = server.url.removesuffix("/auth/v1/.well-known/jwks.json")
    settings = make_settings(
        data_plane,
        supabase_url=project_url,
        supabase_jwt_secret=None,
    )
    # Nothing names the JWKS, and there is no JWT secret: a project with asymmetric keys only.
    assert settings.supabase_jwks_url is None
    assert settings.jwks_url == server.url
    assert settings.jwt_secrets == []
    user_id = uuid.uuid4()
    token = signed_token(key, access_token_claims(issuer=f"{project_url}/auth/v1", user_id=user_id))
    async with running_app(settings) as app:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="https://testserver"
        ) as http_client:
            profile = await http_client.get(
                "/api/v1/discovery", headers={"Authorization": f"Bearer {token}"}
            )
    assert profile.status_code == 200, profile.text
    assert profile.json()["profileId"] == str(user_id)
    assert server.requests == 1


# --- a key the data plane refuses later ---------------------------------------------------


@pytest.fixture
def own_plane(tmp_path: Path) -> Iterator[LocalDataPlane]:
    """A data plane of its own: this test rotates its JWT secret."""
    plane = LocalDataPlane(data_dir=tmp_path / "plane")
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


@ASYNC
async def test_readyz_is_503_naming_the_key_when_the_data_plane_refuses_it_later(
    own_plane: LocalDataPlane, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(own_plane)
    async with running_app(settings) as app:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="https://testserver"
        ) as http_client:
            assert (await http_client.get("/readyz")).status_code == 200
            # The project's JWT secret is rotated: the service's legacy key is now refused.
            postgrest = own_plane.postgrest
            assert postgrest is not None
            postgrest.stop()
            postgrest.env["PGRST_JWT_SECRET"] = "r" * 48
            postgrest.start()
            # A connection kept alive to the PostgREST that stopped may fail one request.
            for _ in range(5):
                probe = await http_client.get("/readyz")
                if probe.json()["error"]["code"] != "data_plane_unavailable":
                    break
            caplog.clear()
            # create_app configured logging afresh, without pytest's capturing handler.
            logging.getLogger().addHandler(caplog.handler)
            with caplog.at_level(logging.INFO):
                ready = await http_client.get("/readyz")
                created = await http_client.post(
                    "/api/v1/sessions", headers={"Origin": "https://testserver"}
                )
    assert ready.status_code == 503
    error = ready.json()["error"]
    assert error["code"] == "data_plane_key_rejected"
    assert error["category"] == "admin_required"
    logging.getLogger().removeHandler(caplog.handler)
    assert "PGRST301" in error["message"]
    assert "SUPABASE_SECRET_KEY" in error["message"]
    assert "Retry-After" not in ready.headers
    # Every request that needs the data plane says the same, never a 500.
    assert created.status_code == 503
    assert created.json()["error"]["code"] == "data_plane_key_rejected"
    # One line per request, no traceback.
    assert not [r for r in caplog.records if r.exc_info]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]
    assert all("data_plane_key_rejected" in r.getMessage() for r in warnings)
