"""TokenVerifier: Supabase access tokens, HS256 via the shared secret(s), ES256/RS256 via JWKS.

Tokens are built with exactly the headers and claims Supabase Auth issues
(tests/fixtures/supabase_tokens.py says where in its source each comes from). The JWKS is
served over real HTTP by a small server in a thread, so fetching, caching and refetch
rate-limiting are observed by counting the requests that server received.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from jose import jwt

from autopilot_api.core.errors import TemporaryError, UnauthorizedError
from autopilot_api.core.security import (
    AuthUnavailableError,
    InvalidTokenError,
    TokenVerifier,
    VerifiedToken,
    mint_user_token,
)
from tests.fixtures.supabase_tokens import (
    PROJECT_ISSUER,
    JwksServer,
    SigningKey,
    access_token_claims,
    api_key_claims,
    make_ec_key,
    make_rsa_key,
    signed_token,
)
from tests.fixtures.supabase_tokens import hs256_token as _hs256_token

SECRET = "test-jwt-secret-with-at-least-32-characters"
PREVIOUS_SECRET = "the-secret-before-rotation-also-32-chars-long"
ISSUER = PROJECT_ISSUER
USER_ID = uuid.UUID("3f1c7d2a-9b8e-4c5d-a6f7-0123456789ab")


# --- token construction ------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def user_claims(**overrides: Any) -> dict[str, Any]:
    """A user's access-token claims as Supabase issues them; an override of None removes one."""
    claims = access_token_claims(issuer=ISSUER, user_id=USER_ID, app_metadata={"role": "admin"})
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def hs256_token(claims: dict[str, Any], secret: str = SECRET, *, kid: str | None = None) -> str:
    return _hs256_token(claims, secret, kid=kid)


def raw_token(header: dict[str, Any], claims: dict[str, Any], sign: bytes | None) -> str:
    """A token assembled by hand, for forgeries jose refuses to produce (alg none, HS/RS)."""
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    if sign is None:
        return f"{signing_input}."
    signature = hmac.new(sign, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


@pytest.fixture(scope="module")
def ec_key() -> SigningKey:
    return make_ec_key("ec-key-1")


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return make_rsa_key("rsa-key-1")


@pytest.fixture
def jwks_server(ec_key: SigningKey, rsa_key: SigningKey) -> Iterator[JwksServer]:
    server = JwksServer()
    server.keys = [ec_key.jwk, rsa_key.jwk]
    server.start()
    yield server
    server.stop()


@pytest_asyncio.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


class SteppedClock:
    """The verifier's clock (for its JWKS cache and refetch interval), moved by the test."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_verifier(
    http_client: httpx.AsyncClient,
    jwks_url: str | None,
    *,
    issuer: str | None = None,
    secrets: tuple[str, ...] = (SECRET,),
    clock: SteppedClock | None = None,
    **options: int,
) -> TokenVerifier:
    return TokenVerifier(
        jwt_secrets=secrets,
        jwks_url=jwks_url,
        issuer=issuer,
        http_client=http_client,
        clock=clock or SteppedClock(),
        **options,
    )


def unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def assert_refused(verifier: TokenVerifier, token: str) -> None:
    with pytest.raises(InvalidTokenError) as caught:
        await verifier.verify(token)
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_token"
    assert token not in str(caught.value)


# --- tests ---------------------------------------------------------------------------------


class TestValidTokensAreAccepted:
    @pytest.mark.asyncio
    async def test_legacy_hs256_token_without_kid_is_accepted(
        self, http_client: httpx.AsyncClient
    ) -> None:
        verifier = make_verifier(http_client, None)
        claims = user_claims()
        token = hs256_token(claims)
        assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}

        verified = await verifier.verify(token)

        assert verified == VerifiedToken(
            user_id=USER_ID,
            email="ada@example.com",
            is_anonymous=False,
            app_role="admin",
            claims=claims,
        )

    @pytest.mark.asyncio
    async def test_hs256_token_of_a_shared_secret_signing_key_with_kid_is_accepted(
        self, http_client: httpx.AsyncClient, jwks_server: JwksServer
    ) -> None:
        verifier = make_verifier(http_client, jwks_server.url)
        token = hs256_token(user_claims(), kid=str(uuid.uuid4()))
        assert set(jwt.get_unverified_header(token)) == {"alg", "typ", "kid"}

        verified = await verifier.verify(token)

        assert verified.user_id == USER_ID
        # HMAC keys are never published in the JWKS: the kid is not looked up there.
        assert jwks_server.requests == 0

    @pytest.mark.asyncio
    async def test_hs256_token_with_kid_is_accepted_with_no_jwks_configured(
        self, http_client: httpx.AsyncClient
    ) -> None:
        verifier = make_verifier(http_client, None)

        verified = await verifier.verify(hs256_token(user_claims(), kid="legacy-secret"))

        assert verified.user_id == USER_ID

    @pytest.mark.asyncio
    async def test_hs256_token_signed_with_a_rotated_out_secret_is_accepted(
        self, http_client: httpx.AsyncClient
    ) -> None:
        verifier = make_verifier(http_client, None, secrets=(SECRET, PREVIOUS_SECRET))

        old = await verifier.verify(hs256_token(user_claims(), secret=PREVIOUS_SECRET))
        new = await verifier.verify(hs256_token(user_claims(), secret=SECRET, kid="new-key"))

        assert old.user_id == new.user_id == USER_ID

    @pytest.mark.asyncio
    async def test_aal2_token_with_totp_in_amr_is_accepted(
        self, http_client: httpx.AsyncClient
    ) -> None:
        verifier = make_verifier(http_client, None, issuer=ISSUER)
        claims = access_token_claims(issuer=ISSUER, user_id=USER_ID, mfa=True)

        verified = await verifier.verify(hs256_token(claims, kid="shared-secret-key"))

        assert verified.user_id == USER_ID
        assert verified.claims["aal"] == "aal2"
        assert [entry["method"] for entry in verified.claims["amr"]] == ["totp", "password"]

    @pytest.mark.asyncio
    async def test_es256_token_is_verified_against_the_jwks_served_over_http(
        self, http_client: httpx.AsyncClient, jwks_server: JwksServer, ec_key: SigningKey
    ) -> None:
        verifier = make_verifier(http_client, jwks_server.url)

        verified = await verifier.verify(signed_token(ec_key, user_claims()))

        assert verified.user_id == USER_ID
        assert verified.app_role == "admin"
        assert jwks_server.requests == 1

    @pytest.mark.asyncio
    async def test_rs256_token_is_verified_against_the_jwks_served_over_http(
        self, http_client: httpx.AsyncClient, jwks_server: JwksServer, rsa_key: SigningKey
    ) -> None:
        verifier = make_verifier(http_client, jwks_server.url)

        verified = await verifier.verify(signed_token(rsa_key, user_claims()))

        assert verified.user_id == USER_ID
        assert jwks_server.requests == 1

    @pytest.mark.asyncio
    async def test_anonymous_user_token_maps_to_anonymous_without_email_or_role(
        self, http_client: httpx.AsyncClient
    ) -> None:
        verifier = make_verifier(http_client, None, issuer=ISSUER)
        claims = access_token_claims(issuer=ISSUER, user_id=USER_ID, anonymous=True)
        assert claims["email"] == ""
        assert claims["is_anonymous"] is True

        verified = await verifier.verify(hs256_token(claims))

        assert verified.user_id == USER_ID
        assert verified.is_anonymous is True
        assert verified.email is None
        assert verified.app_role is None

    @pytest.mark.asyncio
    async def test_matching_issuer_is_accepted_when_issuer_configured(
        self, http_client: httpx.AsyncClient
    ) -> None:
        verifier = make_verifier(http_client, None, issuer=ISSUER)

        verified = await verifier.verify(hs256_token(user_claims()))

        assert verified.claims["iss"] == ISSUER


class TestForgedTokensAreRefused:
    @pytest.mark.asyncio
    async def test_alg_none_without_kid_is_refused(self, http_client: httpx.AsyncClient) -> None:
        verifier = make_verifier(http_client, None)
        token = raw_token({"alg": "none", "typ": "JWT"}, user_claims(), sign=None)

        await assert_refused(verifier, token)

    @pytest.mark.asyncio
    async def test_alg_none_with_known_kid_is_refused_without_fetching_jwks(
        self, http_client: httpx.AsyncClient, jwks_server: JwksServer, ec_key: SigningKey
    ) -> None:
        verifier = make_verifier(http_client, jwks_server.url)
        token = raw_token({"alg": "none", "kid": ec_key.kid}, user_claims(), sign=None)

        await assert_refused(verifier, token)
        assert jwks_server.requests == 0

    @pytest.mark.asyncio
    async def test_hs256_signed_with_the_ec_public_key_and_its_kid_is_refused(
        self, http_client: httpx.AsyncClient, jwks_server: JwksServer, ec_key: SigningKey
    ) -> None:
        verifier = make_verifier(http_client, jwks_server.url)
        header = {"alg": "HS256", "typ": "JWT", "kid": ec_key.kid}
        token = raw_token(header, user_claims(), sign=ec_key.public_pem)

        await assert_refused(verifier, token)

    @pytest.mark.asyncio
    async def test_hs256_signed_with_the_rsa_public_key_and_its_kid_is_refused(
        self, http_client: httpx.AsyncClient, jwks_server: JwksServer, rsa_key: SigningKey
    ) -> None:
        verifier = make_verifier(http_client, jwks_server.url)
        header = {"alg": "HS256", "typ": "JWT", "kid": rsa_key.kid}
        token = raw_token(header, user_claims(), sign=rsa_key.public_pem)

        await assert_refused(verifier, token)

    @pytest.mark.asyncio
    async def test_hs256_signed_with_the_public_key_without_kid_is_refused(
        self, http_client: httpx.AsyncClient, jwks_server: JwksServer, rsa_key: SigningKey
    ) -> None:
        verifier = make_verifier(http_client, jwks_server.url)
        token = raw_token({"alg": "HS256", "typ": "JWT"}, user_claims(), sign=rsa_key.public_pem)

        await assert_refused(verifier, token)

    @pytest.mark.asyncio
    async def test_hs256_with_a_junk_kid_is_checked_against_the_secret_without_fetching(
        self, http_client: httpx.AsyncClient, jwks_server: JwksServer, ec_key: SigningKey
    ) -> None:
        verifier = make_verifier(http_client, jwks_server.url)

        for n in range(5):
            header = {"alg": "HS256", "typ": "JWT", "kid": f"made-up-{n}"}
            accepted = raw_token(header, user_claims(), sign=SECRET.encode())
            assert (await verifier.verify(accepted)).user_id == USER_ID
            forged = raw_token(header, user_claims(), sign=b"not-the-secret-" * 3)
            await assert_refused(verifier, forged)
        # The kid of an asymmetric key does not turn HS256 into a JWKS lookup either.
        header = {"alg": "HS256", "typ": "JWT", "kid": ec_key.kid}
        assert (
            await verifier.verify(raw_token(header, user_claims(), sign=SECRET.encode()))
        ).user_id == USER_ID

        assert jwks_server.requests == 0

    @pytest.mark.asyncio
    async def test_hs256_with_kid_and_no_secret_configured_is_refused_without_fetching(
        self, http_client: httpx.AsyncClient, jwks_server: JwksServer
    ) -> None:
        verifier = make_verifier(http_client, jwks_server.url, secrets=())

        await assert_refused(verifier, hs256_token(user_claims(), kid="some-key"))
        assert jwks_server.requests == 0

    @pytest.mark.asyncio
    async def test_hs256_signed_with_a_secret_no_longer_configured_is_refused(
        self, http_client: httpx.AsyncClient
    ) -> None:
        verifier = make_verifier(http_client, None, secrets=(SECRET,))

        await assert_refused(verifier, hs256_token(user_claims(), secret=PREVIOUS_SECRET))

    @pytest.mark.asyncio
    async def test_rs256_header_with_an_ec_kid_is_refused(
        self, http_client: httpx.AsyncClient, jwks_server: JwksServer, rsa_key: SigningKey
    ) -> None:
        verifier = make_verifier(http_client, jwks_server.url)
        token = signed_token(rsa_key, user_claims(), kid="ec-key-1")

        await assert_refused(verifier, token)

    @pytest.mark.asyncio
    async def test_es256_token_without_kid_is_refused(
        self, http_client: httpx.AsyncClient, jwks_server: JwksServer, ec_key: SigningKey
    ) -> None:
        verifier = make_verifier(http_client, jwks_server.url)
        token = str(jwt.encode(user_claims(), ec_key.private_pem, algorithm="ES256"))

        await assert_refused(verifier, token)

    @pytest.mark.asyncio
    async def test_es256_token_signed_by_another_key_under_a_known_kid_is_refused(
        self, http_client: httpx.AsyncClient, jwks_server: JwksServer, ec_key: SigningKey
    ) -> None:
        verifier = make_verifier(http_client, jwks_server.url)
        impostor = make_ec_key(ec_key.kid)

        await assert_refused(verifier, signed_token(impostor, user_claims()))

    @pytest.mark.asyncio
    async def test_hs256_token_signed_with_another_secret_is_refused(
        self, http_client: httpx.AsyncClient
    ) -> None:
        verifier = make_verifier(http_client, None)
        token = hs256_token(user_claims(), secret="another-secret-of-sufficient-length-xx")

        await assert_refused(verifier, token)

    @pytest.mark.asyncio
    async def test_unknown_kid_is_refused(
        self, http_client: httpx.AsyncClient, jwks_server: JwksServer, ec_key: SigningKey
    ) -> None:
        verifier = make_verifier(http_client, jwks_server.url)

        await assert_refused(verifier, signed_token(ec_key, user_claims(), kid="no-such-kid"))
        assert jwks_server.requests == 1


class TestShapesSupabaseNeverIssuesAsUserTokensAreRefused:
    @pytest.mark.asyncio
    @pytest.mark.parametrize("role", ["anon", "service_role"])
    async def test_the_projects_api_keys_are_not_user_tokens(
        self, http_client: httpx.AsyncClient, role: str
    ) -> None:
        verifier = make_verifier(http_client, None)

        await assert_refused(verifier, hs256_token(api_key_claims(role)))

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        "role", ["anon", "service_role", "supabase_admin", "postgres", "", None, 7]
    )
    async def test_a_role_other_than_authenticated_is_refused(
        self, http_client: httpx.AsyncClient, role: object
    ) -> None:
        verifier = make_verifier(http_client, None, issuer=ISSUER)

        await assert_refused(verifier, hs256_token(user_claims(role=role)))

    @pytest.mark.asyncio
    async def test_a_service_role_token_with_user_claims_is_refused_via_jwks_too(
        self, http_client: httpx.AsyncClient, jwks_server: JwksServer, ec_key: SigningKey
    ) -> None:
        verifier = make_verifier(http_client, jwks_server.url)

        await assert_refused(verifier, signed_token(ec_key, user_claims(role="service_role")))


class TestClaimsAreEnforced:
    @pytest.mark.asyncio
    async def test_wrong_audience_is_refused(self, http_client: httpx.AsyncClient) -> None:
        verifier = make_verifier(http_client, None)

        await assert_refused(verifier, hs256_token(user_claims(aud="anon")))

    @pytest.mark.asyncio
    async def test_missing_audience_is_refused(self, http_client: httpx.AsyncClient) -> None:
        verifier = make_verifier(http_client, None)

        await assert_refused(verifier, hs256_token(user_claims(aud=None)))

    @pytest.mark.asyncio
    async def test_missing_exp_is_refused(self, http_client: httpx.AsyncClient) -> None:
        verifier = make_verifier(http_client, None)

        await assert_refused(verifier, hs256_token(user_claims(exp=None)))

    @pytest.mark.asyncio
    async def test_missing_exp_is_refused_for_jwks_tokens_too(
        self, http_client: httpx.AsyncClient, jwks_server: JwksServer, ec_key: SigningKey
    ) -> None:
        verifier = make_verifier(http_client, jwks_server.url)

        await assert_refused(verifier, signed_token(ec_key, user_claims(exp=None)))

    @pytest.mark.asyncio
    async def test_missing_sub_is_refused(self, http_client: httpx.AsyncClient) -> None:
        verifier = make_verifier(http_client, None)

        await assert_refused(verifier, hs256_token(user_claims(sub=None)))

    @pytest.mark.asyncio
    async def test_non_uuid_sub_is_refused(self, http_client: httpx.AsyncClient) -> None:
        verifier = make_verifier(http_client, None)

        await assert_refused(verifier, hs256_token(user_claims(sub="user-42")))

    @pytest.mark.asyncio
    async def test_wrong_issuer_is_refused_when_issuer_configured(
        self, http_client: httpx.AsyncClient
    ) -> None:
        verifier = make_verifier(http_client, None, issuer=ISSUER)

        await assert_refused(verifier, hs256_token(user_claims(iss="https://evil.test/auth/v1")))

    @pytest.mark.asyncio
    async def test_missing_issuer_is_refused_when_issuer_configured(
        self, http_client: httpx.AsyncClient
    ) -> None:
        verifier = make_verifier(http_client, None, issuer=ISSUER)

        await assert_refused(verifier, hs256_token(user_claims(iss=None)))


class TestExpiryAllowsOnlyTheLeeway:
    @pytest.mark.asyncio
    async def test_token_expired_61_seconds_ago_is_refused(
        self, http_client: httpx.AsyncClient
    ) -> None:
        verifier = make_verifier(http_client, None)
        expired = int(time.time()) - 61

        await assert_refused(verifier, hs256_token(user_claims(exp=expired)))

    @pytest.mark.asyncio
    async def test_token_expired_30_seconds_ago_is_accepted_within_leeway(
        self, http_client: httpx.AsyncClient
    ) -> None:
        verifier = make_verifier(http_client, None)
        expired = int(time.time()) - 30

        verified = await verifier.verify(hs256_token(user_claims(exp=expired)))

        assert verified.user_id == USER_ID

    def test_leeway_above_60_seconds_is_rejected_at_construction(
        self, http_client: httpx.AsyncClient
    ) -> None:
        with pytest.raises(ValueError, match="leeway"):
            make_verifier(http_client, None, leeway_seconds=61)

    def test_jwks_cache_above_10_minutes_is_rejected_at_construction(
        self, http_client: httpx.AsyncClient
    ) -> None:
        with pytest.raises(ValueError, match="jwks_cache_seconds"):
            make_verifier(http_client, None, jwks_cache_seconds=601)


class TestMalformedInputIsRefused:
    @pytest.mark.asyncio
    async def test_oversize_token_is_refused_even_if_validly_signed(
        self, http_client: httpx.AsyncClient
    ) -> None:
        verifier = make_verifier(http_client, None)
        token = hs256_token(user_claims(padding="x" * 8192))
        assert len(token) > 8192

        await assert_refused(verifier, token)

    @pytest.mark.asyncio
    async def test_token_of_exactly_the_size_limit_is_still_accepted(
        self, http_client: httpx.AsyncClient
    ) -> None:
        verifier = make_verifier(http_client, None)
        base = len(hs256_token(user_claims(padding="")))
        # Base64 grows in steps of 4 chars per 3 bytes; 3 * n padding bytes adds exactly 4 * n.
        token = hs256_token(user_claims(padding="x" * ((8192 - base) // 4 * 3)))
        assert 8192 - 4 < len(token) <= 8192

        verified = await verifier.verify(token)

        assert verified.user_id == USER_ID

    @pytest.mark.asyncio
    @pytest.mark.parametrize("garbage", ["not-a-jwt", "a.b.c", "", "...", "eyJhbGciOi.x.y"])
    async def test_garbage_string_is_refused(
        self, http_client: httpx.AsyncClient, garbage: str
    ) -> None:
        verifier = make_verifier(http_client, None)

        with pytest.raises(InvalidTokenError):
            await verifier.verify(garbage)


class TestJwksCaching:
    @pytest.mark.asyncio
    async def test_second_verification_uses_cached_keys_without_fetching(
        self,
        http_client: httpx.AsyncClient,
        jwks_server: JwksServer,
        ec_key: SigningKey,
        rsa_key: SigningKey,
    ) -> None:
        verifier = make_verifier(http_client, jwks_server.url)

        await verifier.verify(signed_token(ec_key, user_claims()))
        await verifier.verify(signed_token(ec_key, user_claims()))
        await verifier.verify(signed_token(rsa_key, user_claims()))

        assert jwks_server.requests == 1

    @pytest.mark.asyncio
    async def test_concurrent_first_verifications_share_one_fetch(
        self, http_client: httpx.AsyncClient, jwks_server: JwksServer, ec_key: SigningKey
    ) -> None:
        verifier = make_verifier(http_client, jwks_server.url)
        token = signed_token(ec_key, user_claims())

        results = await asyncio.gather(*(verifier.verify(token) for _ in range(10)))

        assert all(result.user_id == USER_ID for result in results)
        assert jwks_server.requests == 1

    @pytest.mark.asyncio
    async def test_expired_cache_is_refreshed_on_next_verification(
        self, http_client: httpx.AsyncClient, jwks_server: JwksServer, ec_key: SigningKey
    ) -> None:
        clock = SteppedClock()
        verifier = make_verifier(http_client, jwks_server.url, clock=clock, jwks_cache_seconds=600)
        token = signed_token(ec_key, user_claims())

        await verifier.verify(token)
        clock.advance(599)
        await verifier.verify(token)
        assert jwks_server.requests == 1
        clock.advance(1)
        await verifier.verify(token)

        assert jwks_server.requests == 2

    @pytest.mark.asyncio
    async def test_key_removed_from_jwks_is_refused_after_cache_expiry(
        self, http_client: httpx.AsyncClient, jwks_server: JwksServer, ec_key: SigningKey
    ) -> None:
        clock = SteppedClock()
        verifier = make_verifier(http_client, jwks_server.url, clock=clock, jwks_cache_seconds=600)
        token = signed_token(ec_key, user_claims())
        await verifier.verify(token)

        jwks_server.keys = [key for key in jwks_server.keys if key["kid"] != ec_key.kid]
        await verifier.verify(token)  # cached: still accepted until the cache expires
        clock.advance(600)

        await assert_refused(verifier, token)


class TestUnknownKidRefetchIsRateLimited:
    @pytest.mark.asyncio
    async def test_unknown_kids_within_the_interval_cause_no_refetch(
        self, http_client: httpx.AsyncClient, jwks_server: JwksServer, ec_key: SigningKey
    ) -> None:
        verifier = make_verifier(http_client, jwks_server.url)
        await verifier.verify(signed_token(ec_key, user_claims()))

        for n in range(10):
            await assert_refused(verifier, signed_token(ec_key, user_claims(), kid=f"made-up-{n}"))

        assert jwks_server.requests == 1

    @pytest.mark.asyncio
    async def test_unknown_kids_after_the_interval_cause_exactly_one_refetch(
        self, http_client: httpx.AsyncClient, jwks_server: JwksServer, ec_key: SigningKey
    ) -> None:
        clock = SteppedClock()
        verifier = make_verifier(
            http_client, jwks_server.url, clock=clock, unknown_kid_refetch_seconds=60
        )
        await verifier.verify(signed_token(ec_key, user_claims()))
        clock.advance(60)

        for n in range(5):
            await assert_refused(verifier, signed_token(ec_key, user_claims(), kid=f"made-up-{n}"))

        assert jwks_server.requests == 2

    @pytest.mark.asyncio
    async def test_key_rotated_in_is_picked_up_once_the_refetch_interval_has_passed(
        self, http_client: httpx.AsyncClient, jwks_server: JwksServer, ec_key: SigningKey
    ) -> None:
        clock = SteppedClock()
        verifier = make_verifier(
            http_client, jwks_server.url, clock=clock, unknown_kid_refetch_seconds=60
        )
        await verifier.verify(signed_token(ec_key, user_claims()))
        rotated = make_ec_key("ec-key-2")
        jwks_server.keys = [*jwks_server.keys, rotated.jwk]
        token = signed_token(rotated, user_claims())

        # Within the interval the new kid is unknown and no refetch is made.
        await assert_refused(verifier, token)
        clock.advance(59)
        await assert_refused(verifier, token)
        assert jwks_server.requests == 1

        clock.advance(1)
        verified = await verifier.verify(token)

        assert verified.user_id == USER_ID
        assert jwks_server.requests == 2


class TestJwksUnavailable:
    @pytest.mark.asyncio
    async def test_unreachable_jwks_with_no_cached_key_is_auth_unavailable(
        self, http_client: httpx.AsyncClient, ec_key: SigningKey
    ) -> None:
        url = f"http://127.0.0.1:{unused_port()}/jwks.json"
        verifier = make_verifier(http_client, url)
        token = signed_token(ec_key, user_claims())

        with pytest.raises(AuthUnavailableError) as caught:
            await verifier.verify(token)

        assert isinstance(caught.value, TemporaryError)
        assert not isinstance(caught.value, UnauthorizedError)
        assert caught.value.code == "auth_unavailable"
        assert caught.value.status_code == 503
        assert token not in str(caught.value)

    @pytest.mark.asyncio
    async def test_jwks_server_error_with_no_cached_key_is_auth_unavailable(
        self, http_client: httpx.AsyncClient, jwks_server: JwksServer, ec_key: SigningKey
    ) -> None:
        jwks_server.fail = True
        verifier = make_verifier(http_client, jwks_server.url)

        with pytest.raises(AuthUnavailableError):
            await verifier.verify(signed_token(ec_key, user_claims()))

        assert jwks_server.requests == 1

    @pytest.mark.asyncio
    async def test_cached_key_keeps_working_when_refresh_fails(
        self, http_client: httpx.AsyncClient, jwks_server: JwksServer, ec_key: SigningKey
    ) -> None:
        clock = SteppedClock()
        verifier = make_verifier(http_client, jwks_server.url, clock=clock, jwks_cache_seconds=600)
        token = signed_token(ec_key, user_claims())
        await verifier.verify(token)

        jwks_server.fail = True
        clock.advance(600)
        verified = await verifier.verify(token)

        assert verified.user_id == USER_ID
        assert jwks_server.requests == 2

    @pytest.mark.asyncio
    async def test_hs256_tokens_do_not_need_the_jwks(
        self, http_client: httpx.AsyncClient, jwks_server: JwksServer
    ) -> None:
        jwks_server.fail = True
        verifier = make_verifier(http_client, jwks_server.url)

        verified = await verifier.verify(hs256_token(user_claims()))

        assert verified.user_id == USER_ID
        assert jwks_server.requests == 0


class TestMintUserToken:
    @pytest.mark.asyncio
    async def test_minted_token_has_the_claims_and_header_supabase_issues_and_verifies(
        self, http_client: httpx.AsyncClient
    ) -> None:
        token = mint_user_token(
            SECRET,
            issuer=ISSUER,
            user_id=str(USER_ID),
            email="ada@example.com",
            app_metadata={"role": "admin"},
            lifetime_seconds=600,
        )

        verified = await make_verifier(http_client, None, issuer=ISSUER).verify(token)

        claims = verified.claims
        real = access_token_claims(issuer=ISSUER, user_id=USER_ID)
        assert set(claims) == set(real)
        assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
        assert claims["iss"] == ISSUER
        assert claims["sub"] == str(USER_ID)
        assert claims["aud"] == "authenticated"
        assert claims["role"] == "authenticated"
        assert claims["is_anonymous"] is False
        assert claims["phone"] == ""
        assert claims["aal"] == "aal1"
        assert claims["amr"] == [{"method": "password", "timestamp": claims["iat"]}]
        assert uuid.UUID(claims["session_id"])
        assert claims["app_metadata"] == {
            "provider": "email",
            "providers": ["email"],
            "role": "admin",
        }
        assert claims["exp"] - claims["iat"] == 600
        assert verified.app_role == "admin"
        assert verified.email == "ada@example.com"

    @pytest.mark.asyncio
    async def test_minted_anonymous_token_has_an_empty_email_and_no_provider(
        self, http_client: httpx.AsyncClient
    ) -> None:
        token = mint_user_token(SECRET, issuer=ISSUER, user_id=USER_ID, is_anonymous=True)

        verified = await make_verifier(http_client, None, issuer=ISSUER).verify(token)

        assert verified.claims["email"] == ""
        assert verified.claims["app_metadata"] == {}
        assert verified.claims["amr"][0]["method"] == "anonymous"
        assert verified.is_anonymous is True
        assert verified.email is None

    @pytest.mark.asyncio
    async def test_minted_token_with_another_audience_is_refused(
        self, http_client: httpx.AsyncClient
    ) -> None:
        token = mint_user_token(SECRET, issuer=ISSUER, user_id=USER_ID, audience="anon")

        await assert_refused(make_verifier(http_client, None), token)
