"""JSON bodies checked once, for every route, before any field is validated.

Python's JSON parser accepts what neither JSON (RFC 8259) nor Postgres does: `NaN`,
`Infinity` and numbers that overflow to infinity (`1e999`), lone UTF-16 surrogates
(`"\\ud800"`, which cannot be encoded as UTF-8, so the request to PostgREST would fail),
and nesting as deep as its recursion allows. Free-form fields (metadata, searchQuery)
take any JSON, so no per-field schema catches these: the route class below walks the
parsed body and answers 422 naming the first offending field. NUL is refused here too:
Postgres cannot store it in text or jsonb (the data plane's "22" errors stay the backstop).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from autopilot_api.api.validation_errors import is_json_content_type
from autopilot_api.core.errors import ValidationFailedError, field_error

# Objects and arrays inside one another, the body itself counting as one. Our own schemas
# need 3; free-form JSON gets room to spare, and nothing deeper reaches pydantic or Postgres.
MAX_JSON_DEPTH = 32
# NUL (Postgres text cannot hold it) and the surrogate range (not characters at all).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

Path = list[str | int]


def json_problem(value: Any) -> tuple[Path, str, str] | None:
    """The first place in a parsed JSON document that cannot be accepted: (path, message,
    error type), or None when all of it can."""
    return _check(value, [], 1)


def _check(value: Any, path: Path, depth: int) -> tuple[Path, str, str] | None:
    if isinstance(value, str):
        return _check_string(value, path)
    if isinstance(value, float):
        if not math.isfinite(value):
            return (
                path,
                "Input should be a finite number (not NaN, Infinity or 1e999)",
                ("finite_number"),
            )
        return None
    if isinstance(value, dict | list):
        if depth > MAX_JSON_DEPTH:
            return (
                path,
                f"JSON should be nested at most {MAX_JSON_DEPTH} levels deep",
                ("json_too_deep"),
            )
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str) and (found := _check_string(key, path)) is not None:
                return found
            found = _check(item, [*path, key], depth + 1)
            if found is not None:
                return found
    return None


def _check_string(text: str, path: Path) -> tuple[Path, str, str] | None:
    if text.isascii() and "\x00" not in text:
        return None
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return path, "Text should not contain the NUL character (\\u0000)", "string_nul"
    return path, "Text should not contain a lone surrogate (\\ud800-\\udfff)", "string_surrogate"


class JSONBodyRoute(APIRoute):
    """An APIRoute whose JSON body passes `json_problem` before FastAPI validates it.

    The body is parsed here (Starlette caches it, so FastAPI does not parse it twice);
    a body that is not JSON at all is left for FastAPI to report as it always has.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def checked(request: Request) -> Response:
            if is_json_content_type(request.headers.get("content-type")):
                await _check_body(request)
            return await handler(request)

        return checked


async def _check_body(request: Request) -> None:
    if not await request.body():
        return
    try:
        parsed = await request.json()
    except (ValueError, RecursionError):
        return  # not JSON (or deeper than the parser goes): FastAPI answers its 422
    found = json_problem(parsed)
    if found is not None:
        path, message, error_type = found
        raise ValidationFailedError(
            "The request is not valid; see details.",
            details=[field_error(["body", *path], message, error_type)],
        )
