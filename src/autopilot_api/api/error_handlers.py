"""One place that turns every failure into the JSON error envelope."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount
from starlette.staticfiles import StaticFiles

from autopilot_api.api.validation_errors import BodySchema, body_schema, describe
from autopilot_api.core.errors import (
    AppError,
    ErrorCategory,
    InternalError,
    error_envelope,
    field_error,
)
from autopilot_api.core.request_context import clear_cookie_var, request_id_var
from autopilot_api.core.supabase import translate_data_plane_error

logger = logging.getLogger("autopilot_api.errors")

_HTTP_CODES: dict[int, tuple[str, str]] = {
    400: ("bad_request", "The request is malformed."),
    401: ("unauthorized", "Authentication is required."),
    403: ("forbidden", "You are not allowed to do this."),
    404: ("not_found", "No such resource."),
    405: ("method_not_allowed", "This method is not allowed on this resource."),
    406: ("not_acceptable", "The requested representation is not available."),
    413: ("payload_too_large", "The request body is too large."),
    415: ("unsupported_media_type", "The request body must be JSON."),
}


def render(error: AppError) -> JSONResponse:
    return JSONResponse(error.envelope(), status_code=error.status_code, headers=error.headers)


def _with_cookie_clearing(request: Request, response: JSONResponse) -> JSONResponse:
    # Identity resolution found a dead session cookie: clear it on error responses too.
    if clear_cookie_var.get():
        from autopilot_api.api.deps.cookies import clear_session_cookie

        clear_session_cookie(response, request.state.app_state.settings)
    return response


async def _app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    if exc.status_code >= 500:
        logger.warning("%s: %s", exc.code, exc.message)
    return _with_cookie_clearing(request, render(exc))


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> str:
    """Every method the path supports, asked of the routes themselves.

    Starlette names only the first matching route's methods, and since FastAPI keeps
    included routers as a unit (not as flat `Route`s), reading `router.routes` names none.
    """
    scope = request.scope
    # As the app's router saw the request: a mount has since moved its prefix to root_path.
    top = {**scope, "root_path": scope.get("app_root_path", scope.get("root_path", ""))}
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Mount):
            # A mount matches every method; static files serve reads only.
            if isinstance(route.app, StaticFiles) and route.matches(top)[0] == Match.FULL:
                methods |= {"GET", "HEAD"}
            continue
        for method in _METHODS:
            # A copy: matching writes into the scope's FastAPI state.
            probe = {**top, "method": method, "fastapi": dict(scope.get("fastapi", {}))}
            match, _ = route.matches(probe)
            if match == Match.FULL:
                methods.add(method)
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # FastAPI's "could not parse the body" (not JSON, not UTF-8): a validation error.
        message = "The body is not valid JSON."
        return JSONResponse(
            error_envelope(
                "validation_error",
                message,
                "user_fixable",
                [field_error(["body"], message, "json_invalid")],
            ),
            status_code=422,
        )
    code, message = _HTTP_CODES.get(exc.status_code, ("http_error", "The request failed."))
    category: ErrorCategory = "temporary" if exc.status_code >= 500 else "user_fixable"
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return JSONResponse(
        error_envelope(code, message, category), status_code=exc.status_code, headers=headers
    )


def _body_schema(request: Request) -> BodySchema | None:
    route = request.scope.get("route")
    body_field = getattr(route, "body_field", None) if isinstance(route, APIRoute) else None
    if body_field is None:
        return None
    try:
        return body_schema(body_field.field_info.annotation)
    except TypeError:  # an unhashable annotation cannot be cached: paths stay pydantic's
        return None


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = describe(
        exc.errors(),
        body=_body_schema(request),
        content_type=request.headers.get("content-type"),
    )
    return JSONResponse(
        error_envelope(
            "validation_error", "The request is not valid; see details.", "user_fixable", details
        ),
        status_code=422,
    )


def unhandled_error_response(exc: Exception) -> JSONResponse:
    """503 for a data-plane outage (or a refused key), else a logged 500 that names the
    request id."""
    translated = translate_data_plane_error(exc)
    if isinstance(translated, AppError):
        if translated.category == "admin_required":  # outages log their own line
            logger.warning("%s: %s", translated.code, translated.message)
        return render(translated)
    logger.error(
        "unhandled %s (request_id=%s)", type(exc).__name__, request_id_var.get(), exc_info=exc
    )
    error = InternalError(details={"requestId": request_id_var.get()})
    return render(error)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
