"""Shared wire shapes: the error envelope (documented on every error status), the response
headers the API sends, and base models."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

# Patterns a client can fail, each with what it expects in plain words (a 422 says the words,
# never the regular expression).
# An entity tag is opaque, but one shaped like ours ("v" and digits) carries at most 18 digits:
# `int()` refuses past 4,300 (a 500 once), and no version column holds more than 19.
_ENTITY_TAG = r'(W/)?"(v[0-9]{0,18}([^"0-9][^"]*)?|[^"v][^"]*)?"'
IF_MATCH_PATTERN = rf"^\s*(\*|{_ENTITY_TAG}(\s*,\s*{_ENTITY_TAG})*)\s*$"
TIMESTAMP_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"
# Blank: nothing but characters some engine counts as white space. Spelled out, because
# `\s` differs between JavaScript (a client checking the schema), Rust (pydantic) and Python
# (U+001C-U+001F, U+0085, U+FEFF): every one of them reads this class the same way.
_SPACE_LIKE = (
    r"\t\n\x0b\x0c\r \x1c-\x1f\x85\xa0\u1680\u180e\u2000-\u200b"
    r"\u2028\u2029\u202f\u205f\u3000\ufeff"
)
NOT_BLANK_PATTERN = rf"[^{_SPACE_LIKE}]"
PATTERN_HINTS: dict[str, str] = {
    IF_MATCH_PATTERN: 'must be a quoted version like "v3" (the ETag of your last read), or *',
    TIMESTAMP_PATTERN: "must be an ISO 8601 timestamp like 2026-01-31T12:00:00Z",
    NOT_BLANK_PATTERN: "must not be blank",
}


def _whole_number(value: object) -> object:
    """20.0 → 20: JSON Schema counts a whole-number float as an integer, and so do we."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Last in a body integer's annotations, after its bounds (so they stay JSON Schema's
# minimum and maximum): `Annotated[StrictInt, Field(ge=0), WholeNumber]` takes 20 or 20.0,
# never "20", true or 20.5.
WholeNumber = BeforeValidator(_whole_number)


def is_blank(text: str) -> bool:
    return re.search(NOT_BLANK_PATTERN, text) is None


def _a_real_timestamp(value: str) -> str:
    # The pattern admits 2026-02-30T25:00:00Z; Postgres would refuse it after a round trip.
    # Refused as the pattern's own mismatch, so the 422 reads the same either way.
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise PydanticCustomError(
            "string_pattern_mismatch",
            "String should match pattern '{pattern}'",
            {"pattern": TIMESTAMP_PATTERN},
        ) from None
    return value


# A timestamp as the API writes them (ISO 8601 with an offset), that exists on a calendar.
Timestamp = Annotated[str, AfterValidator(_a_real_timestamp)]


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


class ErrorResponse(BaseModel):
    """Every error, validation included: `{"error": {code, message, category, details}}`."""

    error: ErrorBody


# Response headers, by name, as OpenAPI header objects (`required` is set per response).
RESPONSE_HEADERS: dict[str, dict[str, Any]] = {
    "ETag": {
        "description": 'The representation\'s version ("v<version>"): send it back as '
        "If-Match to update only what you read (412 precondition_failed if it changed).",
        "schema": {"type": "string", "pattern": '^"v[0-9]+"$'},
    },
    "Set-Cookie": {
        "description": "The anonymous session cookie (HttpOnly, Path=/): set when a session is "
        "created, re-issued when its expiry slides, cleared (Max-Age=0) when it is dead, "
        "deleted or claimed.",
        "schema": {"type": "string"},
    },
    "Location": {
        "description": "The created resource.",
        "schema": {"type": "string", "format": "uri-reference"},
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "WWW-Authenticate": {
        "description": "`Bearer` when a bearer token is missing or malformed.",
        "schema": {"type": "string"},
    },
    "Cache-Control": {
        "description": "How long the response may be cached.",
        "schema": {"type": "string"},
    },
    "X-Request-ID": {
        "description": "The request's id (yours if you sent a sane X-Request-ID): name it "
        "when reporting a problem; the logs carry it.",
        "schema": {"type": "string"},
    },
}


def header_docs(*names: str, optional: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """`headers` of an OpenAPI response: the named ones, required unless listed optional."""
    optional = set(optional)
    unknown = (set(names) | optional) - RESPONSE_HEADERS.keys()
    if unknown:
        raise KeyError(f"undocumented response headers: {sorted(unknown)}")
    return {
        name: {**RESPONSE_HEADERS[name], "required": name not in optional}
        for name in (*names, *sorted(optional - set(names)))
    }


_ERROR_DESCRIPTIONS = {
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
_ERROR_HEADERS = {
    401: header_docs(optional=["WWW-Authenticate"]),
    429: header_docs("Retry-After"),
    503: header_docs("Retry-After"),
}


def error_response(status: int, description: str | None = None) -> dict[str, Any]:
    """One error status as an additional response: the envelope, and its headers."""
    response: dict[str, Any] = {
        "model": ErrorResponse,
        "description": description or _ERROR_DESCRIPTIONS.get(status, "Error"),
    }
    if status in _ERROR_HEADERS:
        response["headers"] = _ERROR_HEADERS[status]
    return response


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status it can return, with the envelope schema."""
    return {status: error_response(status) for status in statuses}
