"""Shared wire shapes: the error envelope (documented on every route) and base models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

# Patterns a client can fail, each with what it expects in plain words (a 422 says the words,
# never the regular expression).
# An entity tag is opaque, but one shaped like ours ("v" and digits) carries at most 18 digits:
# `int()` refuses past 4,300 (a 500 once), and no version column holds more than 19.
_ENTITY_TAG = r'(W/)?"(v[0-9]{0,18}([^"0-9][^"]*)?|[^"v][^"]*)?"'
IF_MATCH_PATTERN = rf"^\s*(\*|{_ENTITY_TAG}(\s*,\s*{_ENTITY_TAG})*)\s*$"
TIMESTAMP_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"
NOT_BLANK_PATTERN = r"\S"
PATTERN_HINTS: dict[str, str] = {
    IF_MATCH_PATTERN: 'must be a quoted version like "v3" (the ETag of your last read), or *',
    TIMESTAMP_PATTERN: "must be an ISO 8601 timestamp like 2026-01-31T12:00:00Z",
    NOT_BLANK_PATTERN: "must not be blank",
}


class CamelModel(BaseModel):
    """Responses: camelCase on the wire."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class CamelInput(BaseModel):
    """Requests: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ErrorBody(BaseModel):
    code: str
    message: str
    category: Literal["user_fixable", "admin_required", "temporary"]
    details: Any = None


class ErrorEnvelope(BaseModel):
    error: ErrorBody


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status it can return, with the envelope schema."""
    descriptions = {
        400: "Malformed request",
        401: "Missing or invalid credentials",
        403: "Not allowed",
        404: "Not found",
        409: "Conflict with the current state",
        412: "The resource changed (stale If-Match)",
        413: "Body too large",
        422: "Validation error",
        429: "Too many requests (see Retry-After)",
        503: "A dependency is temporarily unavailable (see Retry-After)",
    }
    return {
        status: {"model": ErrorEnvelope, "description": descriptions.get(status, "Error")}
        for status in statuses
    }
