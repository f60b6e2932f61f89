"""Safe retries of non-idempotent writes: Idempotency-Key in, Idempotent-Replayed out."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header, Response

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description=(
            "Optional, any unique string (a UUID): a retry with the same key returns the "
            "first outcome instead of doing the work again; the same key with another "
            "request → 422 idempotency_key_reused. Keys belong to the caller and last "
            "IDEMPOTENCY_KEY_TTL_SECONDS (24 h by default)."
        ),
    ),
]


def mark_replayed(response: Response, *, replayed: bool) -> None:
    """`Idempotent-Replayed: true` on a retry answered with the first call's outcome."""
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
