"""Every access token Supabase Auth issues is accepted through the HTTP API; nothing else is.

The tokens have exactly the headers and claims of supabase/auth (tests/fixtures/supabase_tokens.py
says where each comes from). The service runs with production-like settings: SUPABASE_URL set,
so the issuer `<SUPABASE_URL>/auth/v1` is checked; a second HS256 secret (rotation); the JWKS
served over real HTTP.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from autopilot_api.core.config import Settings
from autopilot_api.local.dataplane import LocalDataPlane
from tests.conftest import browser_client, make_settings, plane_info, running_app
from tests.fixtures.factories import answer, start_session
from tests.fixtures.supabase_tokens import (
    JwksServer,
    SigningKey,
    access_token_claims,
    api_key_claims,
    hs256_token,
    make_ec_key,
    make_rsa_key,
    signed_token,
)

ASYNC = pytest.mark.asyncio(loop_scope="session")
PREVIOUS_SECRET = secrets.token_urlsafe(48)


class Project:
    """The keys of one Supabase project as the service is configured for it."""

    def __init__(self, settings: Settings, ec_key: SigningKey, rsa_key: SigningKey) -> None:
        assert settings.supabase_jwt_secret
        assert settings.jwt_issuer
        self.secret = settings.supabase_jwt_secret
        self.issuer = settings.jwt_issuer
        self.ec_key = ec_key
        self.rsa_key = rsa_key


@pytest.fixture(scope="module")
def jwks() -> Iterator[tuple[JwksServer, SigningKey, SigningKey]]:
    server = JwksServer()
    ec_key, rsa_key = make_ec_key(str(uuid.uuid4())), make_rsa_key(str(uuid.uuid4()))
    server.keys = [ec_key.jwk, rsa_key.jwk]
    server.start()
    yield server, ec_key, rsa_key
    server.stop()


@pytest.fixture(scope="module")
def project_settings(
    data_plane: LocalDataPlane, jwks: tuple[JwksServer, SigningKey, SigningKey]
) -> Settings:
    settings = make_settings(
        data_plane, supabase_jwks_url=jwks[0].url, supabase_jwt_secrets=[PREVIOUS_SECRET]
    )
    # Production-like: SUPABASE_URL is set, so the issuer is checked without being named.
    assert settings.supabase_jwt_issuer is None
    assert settings.jwt_issuer == f"{plane_info(data_plane).rest_url}/auth/v1"
    return settings


@pytest.fixture(scope="module")
def project(project_settings: Settings, jwks: tuple[JwksServer, SigningKey, SigningKey]) -> Project:
    return Project(project_settings, jwks[1], jwks[2])


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def project_app(project_settings: Settings) -> AsyncIterator[FastAPI]:
    async with running_app(project_settings) as application:
        yield application


@pytest_asyncio.fixture(loop_scope="session")
async def http(project_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with browser_client(project_app) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


UserToken = Callable[[Project, uuid.UUID], str]

SIGNED_IN_SHAPES: dict[str, UserToken] = {
    "legacy HS256 secret, no kid": lambda p, user: hs256_token(
        access_token_claims(issuer=p.issuer, user_id=user), p.secret
    ),
    "HS256 shared-secret signing key, with kid": lambda p, user: hs256_token(
        access_token_claims(issuer=p.issuer, user_id=user), p.secret, kid=str(uuid.uuid4())
    ),
    "HS256 signed with the rotated-out secret": lambda p, user: hs256_token(
        access_token_claims(issuer=p.issuer, user_id=user), PREVIOUS_SECRET, kid="legacy"
    ),
    "ES256 signing key from the JWKS": lambda p, user: signed_token(
        p.ec_key, access_token_claims(issuer=p.issuer, user_id=user)
    ),
    "RS256 signing key from the JWKS": lambda p, user: signed_token(
        p.rsa_key, access_token_claims(issuer=p.issuer, user_id=user)
    ),
    "aal2 user (TOTP in amr)": lambda p, user: signed_token(
        p.ec_key, access_token_claims(issuer=p.issuer, user_id=user, mfa=True)
    ),
}


@ASYNC
class TestEveryTokenSupabaseAuthIssuesIsAccepted:
    @pytest.mark.parametrize("shape", list(SIGNED_IN_SHAPES))
    async def test_signed_in_user_claims_their_session_and_reads_their_profile(
        self, http: httpx.AsyncClient, project: Project, shape: str
    ) -> None:
        user_id = uuid.uuid4()
        token = SIGNED_IN_SHAPES[shape](project, user_id)
        await start_session(http)
        await http.put("/api/v1/sessions/me", json={"answers": {"sku_count": answer(42)}})

        claimed = await http.post("/api/v1/sessions/claim", headers=bearer(token))
        assert claimed.status_code == 200, claimed.text
        profile = await http.get("/api/v1/discovery", headers=bearer(token))

        assert profile.status_code == 200, profile.text
        assert profile.json()["profileId"] == str(user_id)
        assert profile.json()["answers"]["sku_count"]["value"] == 42

    async def test_anonymous_user_is_signed_in_but_cannot_claim(
        self, http: httpx.AsyncClient, project: Project
    ) -> None:
        user_id = uuid.uuid4()
        claims = access_token_claims(issuer=project.issuer, user_id=user_id, anonymous=True)
        assert claims["email"] == ""
        assert claims["is_anonymous"] is True
        token = hs256_token(claims, project.secret, kid=str(uuid.uuid4()))
        await start_session(http)

        profile = await http.get("/api/v1/discovery", headers=bearer(token))
        claimed = await http.post("/api/v1/sessions/claim", headers=bearer(token))

        assert profile.status_code == 200, profile.text
        assert profile.json()["profileId"] == str(user_id)
        assert claimed.status_code == 403
        assert claimed.json()["error"]["code"] == "anonymous_user_cannot_claim"

    async def test_hs256_tokens_with_made_up_kids_cause_no_jwks_fetch(
        self,
        http: httpx.AsyncClient,
        project: Project,
        jwks: tuple[JwksServer, SigningKey, SigningKey],
    ) -> None:
        server = jwks[0]
        before = server.requests
        for n in range(5):
            claims = access_token_claims(issuer=project.issuer, user_id=uuid.uuid4())
            forged = hs256_token(claims, "x" * 48, kid=f"made-up-{n}")
            genuine = hs256_token(claims, project.secret, kid=f"made-up-{n}")
            assert (await http.get("/api/v1/discovery", headers=bearer(forged))).status_code == 401
            assert (await http.get("/api/v1/discovery", headers=bearer(genuine))).status_code == 200
        assert server.requests == before


@ASYNC
class TestShapesSupabaseNeverIssuesAsUserTokensAreRefused:
    @pytest.mark.parametrize("key", ["anon_key", "service_role_key"])
    async def test_the_data_planes_own_api_keys_are_not_a_user(
        self, http: httpx.AsyncClient, data_plane: LocalDataPlane, key: str
    ) -> None:
        token = getattr(plane_info(data_plane), key)

        response = await http.get("/api/v1/discovery", headers=bearer(token))

        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_token"

    @pytest.mark.parametrize("role", ["anon", "service_role"])
    async def test_api_keys_shaped_as_supabase_issues_them_are_not_a_user(
        self, http: httpx.AsyncClient, project: Project, role: str
    ) -> None:
        response = await http.get(
            "/api/v1/discovery", headers=bearer(hs256_token(api_key_claims(role), project.secret))
        )

        assert response.status_code == 401

    @pytest.mark.parametrize("role", ["service_role", "anon", "supabase_admin"])
    async def test_a_role_other_than_authenticated_is_refused(
        self, http: httpx.AsyncClient, project: Project, role: str
    ) -> None:
        claims = access_token_claims(issuer=project.issuer, user_id=uuid.uuid4())
        claims["role"] = role
        await start_session(http)

        for token in (hs256_token(claims, project.secret), signed_token(project.ec_key, claims)):
            response = await http.post("/api/v1/sessions/claim", headers=bearer(token))
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_token"

    @pytest.mark.parametrize(
        "issuer",
        ["https://otherprojectref0000.supabase.co/auth/v1", "supabase", "", None],
    )
    async def test_another_issuer_is_refused_in_production_settings(
        self, http: httpx.AsyncClient, project: Project, issuer: str | None
    ) -> None:
        claims = access_token_claims(issuer=project.issuer, user_id=uuid.uuid4())
        if issuer is None:
            del claims["iss"]
        else:
            claims["iss"] = issuer

        for token in (hs256_token(claims, project.secret), signed_token(project.rsa_key, claims)):
            response = await http.get("/api/v1/discovery", headers=bearer(token))
            assert response.status_code == 401
