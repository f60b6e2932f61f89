"""Tokens: session token generation and hashing, role keys, Supabase JWT verification."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from jose import JWTError, jwk, jwt

from autopilot_api.core.errors import TemporaryError, UnauthorizedError

logger = logging.getLogger(__name__)

SESSION_TOKEN_LENGTH = 64

MAX_ACCESS_TOKEN_LENGTH = 8192
SUPABASE_AUDIENCE = "authenticated"
# Every user token Supabase Auth issues, anonymous users' included, carries this role; the
# project's API keys carry `anon` / `service_role` and are never a user's identity.
SUPABASE_USER_ROLE = "authenticated"
# The issuer of the Supabase CLI's local stack (`supabase start`), for locally minted tokens.
LOCAL_SUPABASE_ISSUER = "http://127.0.0.1:54321/auth/v1"
MAX_LEEWAY_SECONDS = 60
# exp, nbf, iat: 9999-12-31T23:59:59Z, the last second a datetime can hold.
MAX_NUMERIC_DATE = 253_402_300_799
_NUMERIC_DATE_CLAIMS = ("exp", "nbf", "iat")
MAX_JWKS_CACHE_SECONDS = 600
JWKS_FETCH_TIMEOUT_SECONDS = 5.0

# The algorithm is derived from the key type, never taken from the token header.
_ALGORITHM_FOR_KTY = {"EC": "ES256", "RSA": "RS256"}
_PUBLIC_MEMBERS_FOR_KTY = {"EC": ("kty", "crv", "x", "y"), "RSA": ("kty", "n", "e")}


def generate_session_token() -> str:
    """64 URL-safe characters from the OS CSPRNG (384 bits)."""
    return secrets.token_urlsafe(48)[:SESSION_TOKEN_LENGTH]


def hash_session_token(token: str) -> str:
    """What the database stores instead of the token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def mint_role_key(jwt_secret: str, role: str, *, lifetime_days: int = 3650) -> str:
    """An API key as Supabase issues them: an HS256 JWT carrying only a role."""
    now = int(time.time())
    claims = {
        "role": role,
        "iss": "autopilot-local",
        "iat": now,
        "exp": now + lifetime_days * 86400,
    }
    return str(jwt.encode(claims, jwt_secret, algorithm="HS256"))


def mint_user_token(
    jwt_secret: str,
    *,
    issuer: str,
    user_id: uuid.UUID | str,
    email: str | None = None,
    is_anonymous: bool = False,
    app_metadata: dict[str, Any] | None = None,
    lifetime_seconds: int = 3600,
    audience: str = SUPABASE_AUDIENCE,
) -> str:
    """A user access token with the claims Supabase Auth issues, for development and tests.

    HS256 as a legacy-secret project signs it; the shape follows `AccessTokenClaims` in
    supabase/auth (internal/tokens/service.go).
    """
    now = int(time.time())
    if is_anonymous:
        metadata: dict[str, Any] = {}
        method = "anonymous"
    else:
        metadata = {"provider": "email", "providers": ["email"]}
        method = "password"
    metadata.update(app_metadata or {})
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": str(uuid.UUID(str(user_id))),
        "aud": audience,
        "exp": now + lifetime_seconds,
        "iat": now,
        # Supabase sends "" rather than null for users without an email (anonymous ones).
        "email": "" if is_anonymous else email or "",
        "phone": "",
        "app_metadata": metadata,
        "user_metadata": {},
        "role": SUPABASE_USER_ROLE,
        "aal": "aal1",
        "amr": [{"method": method, "timestamp": now}],
        "session_id": str(uuid.uuid4()),
        "is_anonymous": is_anonymous,
    }
    return str(jwt.encode(claims, jwt_secret, algorithm="HS256"))


class InvalidTokenError(UnauthorizedError):
    code = "invalid_token"
    default_message = "The access token is invalid or expired."


class AuthUnavailableError(TemporaryError):
    code = "auth_unavailable"
    default_message = "Sign-in cannot be checked right now; retry shortly."


@dataclass(frozen=True)
class VerifiedToken:
    user_id: uuid.UUID
    email: str | None
    is_anonymous: bool
    app_role: str | None
    claims: dict[str, Any]


@dataclass(frozen=True)
class _SigningKey:
    algorithm: str
    key: Any  # a jose Key holding only public material


class TokenVerifier:
    """Verifies Supabase access tokens: HS256 with the shared secret(s), ES256/RS256 from JWKS.

    Which key and algorithm apply is decided by us, not by the token: HS256 verifies only
    against the configured secrets (Supabase never publishes HMAC keys in its JWKS, so a
    `kid` on an HS256 token is never looked up there); ES256/RS256 need a `kid` and verify
    only against that JWKS key, with the algorithm its key type implies. That closes
    alg-confusion holes, and keeps made-up kids from causing JWKS fetches.
    """

    def __init__(
        self,
        *,
        jwt_secrets: Sequence[str],
        jwks_url: str | None,
        issuer: str | None,
        http_client: httpx.AsyncClient,
        leeway_seconds: int = 60,
        jwks_cache_seconds: int = 600,
        unknown_kid_refetch_seconds: int = 60,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= leeway_seconds <= MAX_LEEWAY_SECONDS:
            raise ValueError(f"leeway_seconds must be within 0..{MAX_LEEWAY_SECONDS}")
        if not 0 < jwks_cache_seconds <= MAX_JWKS_CACHE_SECONDS:
            raise ValueError(f"jwks_cache_seconds must be within 1..{MAX_JWKS_CACHE_SECONDS}")
        if unknown_kid_refetch_seconds < 0:
            raise ValueError("unknown_kid_refetch_seconds must not be negative")
        if isinstance(jwt_secrets, str):
            raise TypeError("jwt_secrets must be a sequence of secrets, not one string")
        # Key objects, so jose never tries to parse a secret as a JSON key set.
        self._hmac_keys = tuple(
            jwk.construct(secret, "HS256") for secret in dict.fromkeys(jwt_secrets) if secret
        )
        self._jwks_url = jwks_url or None
        self._issuer = issuer or None
        self._http = http_client
        self._leeway = leeway_seconds
        self._cache_seconds = jwks_cache_seconds
        self._refetch_seconds = unknown_kid_refetch_seconds
        # What the JWKS cache and the refetch interval are measured with (seconds, monotonic).
        self._clock = clock
        self._keys: dict[str, _SigningKey] = {}
        self._fetched_at: float | None = None  # last successful fetch (clock time)
        self._attempted_at: float | None = None  # last fetch attempt, successful or not
        self._last_fetch_failed = False
        # One fetch at a time: concurrent requests with a new kid share a single refetch.
        self._fetch_lock = asyncio.Lock()

    async def verify(self, token: str) -> VerifiedToken:
        """The verified identity in `token`; raises InvalidTokenError or AuthUnavailableError."""
        if not isinstance(token, str) or not token or len(token) > MAX_ACCESS_TOKEN_LENGTH:
            raise _invalid("missing or oversize token")
        try:
            header = jwt.get_unverified_header(token)
        except JWTError:
            raise _invalid("undecodable header") from None
        if not isinstance(header, dict):
            raise _invalid("undecodable header")
        alg = header.get("alg")
        kid = header.get("kid")
        if "kid" in header and (not isinstance(kid, str) or not kid):
            raise _invalid("malformed kid")

        key: Any
        # Decided before any JWKS lookup so junk headers cannot trigger fetches.
        if alg == "HS256":
            if not self._hmac_keys:
                raise _invalid("HS256 token but no secret configured")
            # jose tries each secret in turn: the current one and any still accepted.
            key, algorithm = self._hmac_keys, "HS256"
        elif alg in _ALGORITHM_FOR_KTY.values():
            if not isinstance(kid, str):
                raise _invalid("asymmetric token without kid")
            signing_key = await self._jwks_key(kid)
            key, algorithm = signing_key.key, signing_key.algorithm
        else:
            raise _invalid("algorithm not allowed")

        claims = self._decode(token, key, algorithm)
        return _verified_token(claims)

    def _decode(self, token: str, key: Any, algorithm: str) -> dict[str, Any]:
        options = {
            "leeway": self._leeway,
            "require_exp": True,
            "require_aud": True,
            "require_sub": True,
            "require_iss": self._issuer is not None,
            # Checked below: jose calls int() on them, which raises OverflowError for 1e400.
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
        }
        try:
            decoded = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=SUPABASE_AUDIENCE,
                issuer=self._issuer,
                options=options,
            )
        # jose lets TypeError/ValueError escape for some malformed claim values, and its JSON
        # parser RecursionError for claims nested a thousand deep.
        except (JWTError, TypeError, ValueError, ArithmeticError, RecursionError):
            raise _invalid("signature or claims rejected") from None
        if not isinstance(decoded, dict):
            raise _invalid("claims are not an object")
        claims: dict[str, Any] = decoded

        # Checked here rather than by jose, which skips absent exp/aud by default.
        for name in _NUMERIC_DATE_CLAIMS:
            if name in claims and not _is_numeric_date(claims[name]):
                raise _invalid(f"malformed {name}")
        exp = claims.get("exp")
        if exp is None:
            raise _invalid("missing exp")
        now = time.time()
        if exp + self._leeway <= now:
            raise _invalid("expired")
        nbf = claims.get("nbf")
        if nbf is not None and nbf - self._leeway > now:
            raise _invalid("not yet valid")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if SUPABASE_AUDIENCE not in audiences:
            raise _invalid("wrong audience")
        if self._issuer is not None and claims.get("iss") != self._issuer:
            raise _invalid("wrong issuer")
        # The anon / service_role API keys (and anything else that is not a signed-in user)
        # are not identities, however they are signed.
        if claims.get("role") != SUPABASE_USER_ROLE:
            raise _invalid("role is not authenticated")
        return claims

    async def _jwks_key(self, kid: str) -> _SigningKey:
        if self._jwks_url is None:
            raise _invalid("kid given but no JWKS configured")
        cached = self._fresh_key(kid, self._clock())
        if cached is not None:
            return cached
        async with self._fetch_lock:
            # Another request may have refreshed the set while this one waited.
            now = self._clock()
            cached = self._fresh_key(kid, now)
            if cached is not None:
                return cached
            if self._may_fetch(now):
                await self._refresh(self._jwks_url)
            # After a failed or rate-limited refresh an expired set is still better than none.
            signing_key = self._keys.get(kid)
            if signing_key is not None:
                return signing_key
            if self._last_fetch_failed:
                raise AuthUnavailableError()
            raise _invalid("unknown kid")

    def _fresh_key(self, kid: str, now: float) -> _SigningKey | None:
        if self._fetched_at is None or now - self._fetched_at >= self._cache_seconds:
            return None
        return self._keys.get(kid)

    def _may_fetch(self, now: float) -> bool:
        if self._attempted_at is None:
            return True
        cache_expired = self._fetched_at is None or now - self._fetched_at >= self._cache_seconds
        if cache_expired and not self._last_fetch_failed:
            return True
        # An unknown kid with a fresh set, or a retry after a failure: rate-limited so
        # tokens with made-up kids (or an outage) cannot hammer the JWKS endpoint.
        return now - self._attempted_at >= self._refetch_seconds

    async def _refresh(self, url: str) -> None:
        self._attempted_at = self._clock()
        try:
            response = await self._http.get(
                url, timeout=JWKS_FETCH_TIMEOUT_SECONDS, headers={"Accept": "application/json"}
            )
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            self._last_fetch_failed = True
            logger.warning("JWKS fetch from %s failed: %s", url, type(exc).__name__)
            return
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            self._last_fetch_failed = True
            logger.warning("JWKS document from %s has no keys list", url)
            return
        keys: dict[str, _SigningKey] = {}
        for entry in entries:
            parsed = _parse_jwk(entry)
            if parsed is not None:
                keys[parsed[0]] = parsed[1]
        self._keys = keys
        self._fetched_at = self._attempted_at
        self._last_fetch_failed = False
        logger.info("JWKS fetched from %s: %d usable keys", url, len(keys))


def _is_numeric_date(value: Any) -> bool:
    """A JWT NumericDate (RFC 7519): a JSON number of seconds, here finite and before the
    year 10000 — 1e400 (infinity), NaN and 4,000-digit integers are no dates."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    # NaN fails every comparison; an int is compared exactly, never converted to a float.
    return 0 <= value <= MAX_NUMERIC_DATE


def _parse_jwk(entry: Any) -> tuple[str, _SigningKey] | None:
    """A usable public signing key from one JWKS entry, or None to skip it."""
    if not isinstance(entry, dict):
        return None
    kid, kty = entry.get("kid"), entry.get("kty")
    if not isinstance(kid, str) or not kid or not isinstance(kty, str):
        return None
    algorithm = _ALGORITHM_FOR_KTY.get(kty)
    if algorithm is None or entry.get("use", "sig") != "sig":
        return None
    if kty == "EC" and entry.get("crv") != "P-256":
        return None
    if entry.get("alg", algorithm) != algorithm:
        return None
    # Only the public members, so a JWKS that leaks "d" still yields a verify-only key.
    public = {name: entry[name] for name in _PUBLIC_MEMBERS_FOR_KTY[kty] if name in entry}
    try:
        key = jwk.construct(public, algorithm)
    except Exception:  # jose raises assorted types for malformed key material
        logger.warning("JWKS key %r skipped: malformed key material", kid)
        return None
    return kid, _SigningKey(algorithm=algorithm, key=key)


def _verified_token(claims: dict[str, Any]) -> VerifiedToken:
    sub = claims.get("sub")
    if not isinstance(sub, str):
        raise _invalid("missing sub")
    try:
        user_id = uuid.UUID(sub)
    except ValueError:
        raise _invalid("sub is not a UUID") from None
    email = claims.get("email")
    app_metadata = claims.get("app_metadata")
    role = app_metadata.get("role") if isinstance(app_metadata, dict) else None
    return VerifiedToken(
        user_id=user_id,
        email=email if isinstance(email, str) and email else None,
        is_anonymous=claims.get("is_anonymous") is True,
        app_role=role if isinstance(role, str) else None,
        claims=claims,
    )


def _invalid(reason: str) -> InvalidTokenError:
    # The reason goes to debug logs only; neither it nor the token reaches the client.
    logger.debug("access token rejected: %s", reason)
    return InvalidTokenError()
