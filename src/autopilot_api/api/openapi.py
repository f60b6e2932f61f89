"""The OpenAPI document, made to tell the truth to generated clients.

Routes declare what is theirs: `responses=` (each error status with the envelope, and the
headers of their success responses), `openapi_extra=security(...)` (the credentials they
accept) and, for streams, `sse_response(...)`. `install_openapi` then completes what holds
for every operation alike, so a new route gets it without saying so:

- the security schemes (cookie, bearer, event ticket), with the Origin rule;
- every error status carries the one `ErrorResponse` envelope: FastAPI's own
  `HTTPValidationError`, which the service never sends, is replaced wherever FastAPI added
  it (a route with parameters that did not list 422), and its components removed;
- a write that accepts the session cookie says it needs an allowed `Origin`, and lists 403;
- `Set-Cookie` on every response of an operation that accepts the cookie (the expiry
  slides and a dead cookie is cleared on any of them), `X-Request-ID` on every response;
- the JSON payloads of the SSE events as component schemas;
- limits that are settings (a message's length) as the schema keywords they are.

Security semantics: an operation lists each credential it accepts, and `{}` where it answers
a caller who sends none (creating a session, listing nothing, or 404 because the caller owns
nothing) instead of refusing with 401.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from autopilot_api.core.config import Settings
from autopilot_api.schemas.common import ErrorResponse, header_docs

SCHEMA_REF = "#/components/schemas/"

SESSION_COOKIE_SCHEME = "sessionCookie"
BEARER_SCHEME = "bearerAuth"
EVENT_TICKET_SCHEME = "eventTicket"

# Security requirement objects: all schemes named in one must be sent together.
BEARER: Mapping[str, list[str]] = {BEARER_SCHEME: []}
SESSION_COOKIE: Mapping[str, list[str]] = {SESSION_COOKIE_SCHEME: []}
EVENT_TICKET: Mapping[str, list[str]] = {EVENT_TICKET_SCHEME: []}
BEARER_AND_COOKIE: Mapping[str, list[str]] = {BEARER_SCHEME: [], SESSION_COOKIE_SCHEME: []}
NO_CREDENTIAL: Mapping[str, list[str]] = {}

UNSAFE_METHODS = frozenset({"post", "put", "patch", "delete"})
HTTP_METHODS = frozenset({"get", "head", "options", "trace", *UNSAFE_METHODS})

ORIGIN_RULE = (
    "a write (POST, PUT, PATCH, DELETE) sent with the session cookie, or without a bearer "
    "token, needs an `Origin` header naming an allowed origin (`CORS_ORIGINS`) or the "
    "API's own origin; otherwise 403 `csrf_origin_rejected`. Browsers send it themselves; "
    "any other client sets it."
)
ORIGIN_NOTE = f"**Browser-credentialed write**: {ORIGIN_RULE}"
CSRF_403 = "csrf_origin_rejected: a browser-credentialed write without an allowed Origin header"


def security(*requirements: Mapping[str, list[str]]) -> dict[str, Any]:
    """`openapi_extra=` for a route: the credentials it accepts, any one requirement suffices."""
    return {"security": [dict(requirement) for requirement in requirements]}


# Every route that answers a caller without credentials, and accepts either.
ANY_CALLER = security(BEARER, SESSION_COOKIE, NO_CREDENTIAL)
SIGNED_IN = security(BEARER)
PUBLIC = security(NO_CREDENTIAL)


@dataclass(frozen=True)
class SseEvent:
    """One kind of event in a stream: its `event:` name(s) and the JSON in its `data:`."""

    names: Sequence[str]
    payload: type[BaseModel]
    description: str
    has_id: bool = False


# The payload models of every documented stream, added to the components when built.
_STREAM_MODELS: dict[str, type[BaseModel]] = {}


def sse_response(description: str, events: Sequence[SseEvent]) -> dict[str, Any]:
    """A `text/event-stream` response: the schema is one event, `data` is one line of JSON."""
    variants = []
    for event in events:
        _STREAM_MODELS[event.payload.__name__] = event.payload
        names = list(event.names)
        properties: dict[str, Any] = {
            "event": {"type": "string", "const": names[0]}
            if len(names) == 1
            else {"type": "string", "enum": names},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"$ref": f"{SCHEMA_REF}{event.payload.__name__}"},
            },
        }
        required = ["event", "data"]
        if event.has_id:
            properties["id"] = {
                "type": "string",
                "pattern": "^[0-9]+$",
                "description": "Send it back as Last-Event-ID to resume after this event.",
            }
            required.append("id")
        variants.append(
            {
                "type": "object",
                "title": " | ".join(names),
                "description": event.description,
                "properties": properties,
                "required": required,
            }
        )
    return {
        "description": description,
        "content": {
            "text/event-stream": {
                "schema": {
                    "description": "One event of the stream (`event:`, optional `id:`, and "
                    "`data:` holding one line of JSON); comment lines (`:`) keep it alive.",
                    "oneOf": variants,
                }
            }
        },
    }


def operation_id(route: APIRoute) -> str:
    """The route function's name: a generated client calls `create_session`, not
    `create_session_api_v1_sessions_post` (names are unique; the document's test checks)."""
    return route.name


def security_schemes(settings: Settings) -> dict[str, Any]:
    return {
        SESSION_COOKIE_SCHEME: {
            "type": "apiKey",
            "in": "cookie",
            "name": settings.session_cookie_name,
            "description": "The anonymous visitor's session: an opaque HttpOnly cookie set by "
            "POST /api/v1/sessions, or by the first write that needs a session. Browsers send "
            "it with `credentials: 'include'`; another client keeps it and sends it back. "
            f"Origin rule: {ORIGIN_RULE}",
        },
        BEARER_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "A signed-in user's Supabase Auth access token. An invalid or "
            "expired token is 401, never a fallback to the cookie. Between sign-up and the "
            "claim, send it together with the session cookie.",
        },
        EVENT_TICKET_SCHEME: {
            "type": "apiKey",
            "in": "query",
            "name": "ticket",
            "description": "A single-use ticket from POST /api/v1/events/ticket, for an "
            "EventSource, which cannot send Authorization.",
        },
    }


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


def _envelope_content() -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"{SCHEMA_REF}{ErrorResponse.__name__}"}}}


def _is_envelope(response: Mapping[str, Any]) -> bool:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return bool(schema.get("$ref") == f"{SCHEMA_REF}{ErrorResponse.__name__}")


def _accepts(operation: Mapping[str, Any], scheme: str) -> bool:
    return any(scheme in requirement for requirement in operation.get("security", []))


def _complete_errors(operation: dict[str, Any]) -> None:
    """Every 4xx/5xx carries the envelope (FastAPI adds its own 422 to routes without one)."""
    for status, response in operation.get("responses", {}).items():
        if status[:1] in {"4", "5"} and not _is_envelope(response):
            response["content"] = _envelope_content()
            if response.get("description") == "Validation Error":
                response["description"] = "Validation error"


def _complete_cookie_write(operation: dict[str, Any]) -> None:
    description = operation.get("description", "")
    if ORIGIN_NOTE not in description:
        operation["description"] = f"{description}\n\n{ORIGIN_NOTE}".strip()
    responses = operation.setdefault("responses", {})
    forbidden = responses.setdefault(
        "403", {"description": "Not allowed", "content": _envelope_content()}
    )
    if "csrf_origin_rejected" not in forbidden.get("description", ""):
        forbidden["description"] = f"{forbidden.get('description', 'Not allowed')}; {CSRF_403}"


# Headers every response of an operation may carry, declared once under components.
_SHARED_HEADERS = {
    "X-Request-ID": header_docs("X-Request-ID")["X-Request-ID"],
    "Set-Cookie": header_docs(optional=["Set-Cookie"])["Set-Cookie"],
}
HEADER_REF = "#/components/headers/"


def _complete_headers(operation: dict[str, Any], *, cookie: bool) -> None:
    for response in operation.get("responses", {}).values():
        headers = response.setdefault("headers", {})
        headers.setdefault("X-Request-ID", {"$ref": f"{HEADER_REF}X-Request-ID"})
        if cookie:
            headers.setdefault("Set-Cookie", {"$ref": f"{HEADER_REF}Set-Cookie"})


def _add_stream_models(schemas: dict[str, Any]) -> None:
    if not _STREAM_MODELS:
        return
    _, top = models_json_schema(
        [(model, "serialization") for model in _STREAM_MODELS.values()],
        ref_template=SCHEMA_REF + "{model}",
    )
    for name, schema in top.get("$defs", {}).items():
        schemas.setdefault(name, schema)


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _drop_unreferenced(document: dict[str, Any], names: Sequence[str]) -> None:
    """Remove these component schemas once nothing but each other refers to them."""
    schemas = document.get("components", {}).get("schemas", {})
    doomed = {name for name in names if name in schemas}
    kept = {key: value for key, value in document.items() if key != "components"}
    kept["schemas"] = {key: value for key, value in schemas.items() if key not in doomed}
    used = set(_refs(kept))
    for name in doomed:
        if f"{SCHEMA_REF}{name}" not in used:
            del schemas[name]


def _apply_runtime_limits(schemas: dict[str, Any], settings: Settings) -> None:
    content = schemas.get("MessageCreate", {}).get("properties", {}).get("content")
    if content is not None:
        content["maxLength"] = settings.message_max_chars


def complete_document(document: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The generic part of the document (see the module's docstring); changes it in place."""
    components = document.setdefault("components", {})
    components["securitySchemes"] = security_schemes(settings)
    components.setdefault("headers", {}).update(copy.deepcopy(_SHARED_HEADERS))
    for _, method, operation in _operations(document):
        cookie = _accepts(operation, SESSION_COOKIE_SCHEME)
        if method in UNSAFE_METHODS and cookie:
            _complete_cookie_write(operation)
        _complete_errors(operation)
        _complete_headers(operation, cookie=cookie)
    schemas = components.setdefault("schemas", {})
    _add_stream_models(schemas)
    _apply_runtime_limits(schemas, settings)
    _drop_unreferenced(document, ["HTTPValidationError", "ValidationError"])
    return document


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """`app.openapi()` (and /openapi.json) serve the completed document, built once."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = copy.deepcopy(FastAPI.openapi(app))
            app.openapi_schema = complete_document(document, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
