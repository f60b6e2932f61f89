"""Tokens: session token generation and hashing, role keys, Supabase JWT verification."""

from __future__ import annotations

import hashlib
import secrets
import time

from jose import jwt

SESSION_TOKEN_LENGTH = 64


def generate_session_token() -> str:
    """64 URL-safe characters from the OS CSPRNG (384 bits)."""
    return secrets.token_urlsafe(48)[:SESSION_TOKEN_LENGTH]


def hash_session_token(token: str) -> str:
    """What the database stores instead of the token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def mint_role_key(jwt_secret: str, role: str, *, lifetime_days: int = 3650) -> str:
    """An API key as Supabase issues them: an HS256 JWT carrying only a role."""
    now = int(time.time())
    claims = {"role": role, "iss": "autopilot-local", "iat": now, "exp": now + lifetime_days * 86400}
    return str(jwt.encode(claims, jwt_secret, algorithm="HS256"))
