"""The one Supabase AsyncClient of the process (made in the lifespan, closed on shutdown)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from postgrest.exceptions import APIError
from supabase import AsyncClient, AsyncClientOptions
from yarl import URL

from autopilot_api.core.config import Settings
from autopilot_api.core.dataplane_transport import (
    choose_transport,
    create_data_plane_http_client,
)
from autopilot_api.core.errors import AppError, DataPlaneUnavailableError, ValidationFailedError
from autopilot_api.core.infrastructure import (
    DataPlaneKeyRejectedError,
    DataPlaneUnreachableError,
    InfrastructureError,
    first_line,
    refuse_start,
    where,
)

logger = logging.getLogger(__name__)

# PostgREST codes for "cannot reach / use the database right now", and the Postgres
# SQLSTATE classes that mean the same (connection exception, insufficient resources,
# operator intervention such as a shutdown, statement timeout).
_TRANSIENT_POSTGREST_CODES = {"PGRST000", "PGRST001", "PGRST002", "PGRST003", "502", "503", "504"}
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "53", "57", "40001", "40P01")


@dataclass(frozen=True)
class DataPlaneEndpoint:
    """Where the REST layer is and the key that opens it."""

    rest_url: str
    service_role_key: str


def endpoint_from_settings(settings: Settings) -> DataPlaneEndpoint:
    assert settings.supabase_url
    assert settings.supabase_secret_key
    rest_url = settings.supabase_rest_url or f"{settings.supabase_url}/rest/v1"
    return DataPlaneEndpoint(rest_url=rest_url, service_role_key=settings.supabase_secret_key)


@dataclass
class OpenDataPlane:
    """The endpoint to use, the settings to use with it, and how to let it go."""

    endpoint: DataPlaneEndpoint
    settings: Settings
    stop: Callable[[], None]
    # Why the plane is down for good (local mode), or None.
    problem: Callable[[], str | None] = lambda: None


def open_data_plane(settings: Settings) -> OpenDataPlane:
    """The hosted project's REST layer, or (local mode only) a local one started now.

    Blocking (it may start processes): call it from a thread in async code.
    """
    settings.require_data_plane()
    if not settings.uses_local_data_plane:
        return OpenDataPlane(endpoint_from_settings(settings), settings, lambda: None)
    from autopilot_api.local.dataplane import LocalDataPlane

    plane = LocalDataPlane(
        data_dir=settings.local_data_dir,
        database_url=settings.database_url,
        jwt_secret=settings.supabase_jwt_secret,
        postgrest_bin=settings.postgrest_bin,
        tools_dir=settings.tools_dir,
        schema=settings.db_schema,
        postgrest_max_restarts=settings.postgrest_max_restarts,
    )
    info = plane.start()
    endpoint = DataPlaneEndpoint(rest_url=info.rest_url, service_role_key=info.service_role_key)
    # Tokens this process verifies are signed with the local secret.
    local_settings = settings.model_copy(update={"supabase_jwt_secret": info.jwt_secret})
    return OpenDataPlane(endpoint, local_settings, plane.stop, plane.problem)


def create_supabase_client(endpoint: DataPlaneEndpoint, settings: Settings) -> AsyncClient:
    """Build the shared client for our schema, pointing at the REST layer directly.

    Retries are off: the SDK's backoff reaches 30 s, longer than any request should hang;
    an outage becomes a 503 the caller can retry.
    """
    timeout = httpx.Timeout(settings.data_plane_timeout_seconds, connect=3.0)
    kind, reason = choose_transport(settings.data_plane_transport)
    # The default says nothing at start-up (a quiet start); a setting or a proxy that changed
    # the choice is worth the operator's line.
    default = settings.data_plane_transport == "auto" and kind == "builtin"
    logger.log(
        logging.DEBUG if default else logging.INFO, "data-plane transport: %s (%s)", kind, reason
    )
    http_client = create_data_plane_http_client(
        kind,
        timeout=timeout,
        limits=httpx.Limits(
            max_connections=200,
            max_keepalive_connections=100,
            keepalive_expiry=settings.data_plane_keepalive_seconds,
        ),
        max_response_bytes=settings.data_plane_max_response_bytes,
    )
    options = AsyncClientOptions(
        schema=settings.db_schema,
        httpx_client=http_client,
        postgrest_client_retry=False,
        auto_refresh_token=False,
        persist_session=False,
    )
    base_url = settings.supabase_url or endpoint.rest_url
    client = AsyncClient(base_url, endpoint.service_role_key, options)
    # supabase-py derives `<url>/rest/v1`; a bare PostgREST serves at its root.
    client.rest_url = URL(endpoint.rest_url)
    if not is_jwt(endpoint.service_role_key):
        # A secret key (sb_secret_…) is no JWT: it travels in `apikey` alone, and the
        # project's API gateway hands PostgREST a service_role JWT in its place. supabase-py
        # 2.x also sends any key as `Authorization: Bearer`, which PostgREST (behind the
        # Supabase CLI's gateway, say) rejects with PGRST301. The REST client is built on
        # first use from these headers, so dropping it here covers every call.
        client.options.headers.pop("Authorization", None)
    return client


def is_jwt(key: str) -> bool:
    """A legacy API key (a JWT: three base64url parts), not a secret key (sb_secret_…)."""
    return key.count(".") == 2 and not key.startswith("sb_")


async def close_supabase_client(client: AsyncClient) -> None:
    await client.postgrest.aclose()
    http_client = client.options.httpx_client
    if http_client is not None:
        await http_client.aclose()


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True
    if isinstance(exc, APIError):
        code = exc.code or ""
        # Every error PostgREST itself makes carries a code; one without came from
        # something in between (seen while Postgres restarts after a crash).
        return (
            not code
            or code in _TRANSIENT_POSTGREST_CODES
            or code.startswith(_TRANSIENT_SQLSTATE_PREFIXES)
        )
    return False


# PostgREST's "the JWT (the key) was refused": cannot decode or verify it (PGRST301), no
# JWT secret or JWKS to check it with (PGRST300), no credentials where anonymous access is
# off (PGRST302), claims that do not validate (PGRST303). "401" is what postgrest-py reports
# for a 401 without a PostgREST body (an API gateway's).
_KEY_REJECTED_CODES = {"PGRST300", "PGRST301", "PGRST302", "PGRST303", "401"}


class DataPlaneKeyError(AppError):
    """The data plane refuses the service's own key: an operator must fix the key, so no
    Retry-After."""

    code = "data_plane_key_rejected"
    status_code = 503
    category = "admin_required"
    default_message = (
        "The database layer refused the service's key; an operator must check "
        "SUPABASE_SECRET_KEY. See the server log."
    )


def is_key_rejection(exc: BaseException) -> bool:
    """The data plane answered, and refused the key (PostgREST's JWT errors, or a gateway's
    `Invalid API key`), as opposed to being unreachable."""
    if not isinstance(exc, APIError):
        return False
    code = exc.code or ""
    if code in _KEY_REJECTED_CODES:
        return True
    # Supabase's gateway answers a wrong key with 401 {"message": "Invalid API key", ...}.
    return not code and "api key" in (exc.message or "").lower()


def key_rejected_error(exc: APIError) -> DataPlaneKeyError:
    """The error every request gets while the key is refused: logged once per request by the
    error handler, as one line (no traceback), with PostgREST's code."""
    return DataPlaneKeyError(
        f"The database layer refused the service's key ({exc.code or 'no code'}); an "
        "operator must check SUPABASE_SECRET_KEY."
    )


def data_plane_error(exc: BaseException) -> DataPlaneUnavailableError:
    logger.warning("data plane unavailable: %s", type(exc).__name__)
    return DataPlaneUnavailableError()


def _error_details(raw: Any) -> Any:
    if isinstance(raw, str) and raw.startswith(("{", "[")):
        try:
            return json.loads(raw)
        except ValueError:
            return None
    return None


def translate_data_plane_error(exc: Exception) -> Exception:
    """What a failed PostgREST call means to the caller.

    Our SQL functions raise SQLSTATE PTxyz with the error code in the hint; those become
    the matching AppError. Outages become 503, and so does a refused key (an operator's
    problem, not the caller's). Anything else is a bug and stays as is.
    """
    if isinstance(exc, APIError) and is_key_rejection(exc):
        return key_rejected_error(exc)
    if is_transient(exc):
        return data_plane_error(exc)
    if isinstance(exc, APIError) and exc.hint:
        error_class = AppError.for_code(exc.hint)
        if error_class is not None:
            return error_class(exc.message or None, details=_error_details(exc.details))
    if isinstance(exc, APIError) and (exc.code or "").startswith("22"):
        # Postgres "data exception": a value it cannot store (NUL in text, out of range).
        return ValidationFailedError("A value in the request cannot be stored.")
    return exc


async def call_rpc(client: AsyncClient, function: str, params: dict[str, Any]) -> Any:
    """Run one SQL function through PostgREST and return its JSON result."""
    try:
        response = await client.rpc(function, params).execute()
    except Exception as exc:
        raise translate_data_plane_error(exc) from exc
    return response.data


STARTUP_CHECK_SECONDS = 3.0


async def probe_data_plane(
    client: AsyncClient, settings: Settings, *, rest_url: str | None = None
) -> int:
    """One call with the service's key (the statement_timeout PostgREST's queries run
    under, in milliseconds; 0: none). Raises, as one line for an operator:
    DataPlaneKeyRejectedError when the key is refused, DataPlaneUnreachableError when the
    REST layer does not answer (or lacks the schema or its functions)."""
    where_ = where(rest_url or settings.supabase_rest_url or settings.supabase_url or "")
    try:
        response = await asyncio.wait_for(
            client.rpc("statement_timeout_ms", {}).execute(),
            timeout=min(STARTUP_CHECK_SECONDS, settings.data_plane_timeout_seconds),
        )
        return int(response.data)  # type: ignore[arg-type]
    except APIError as exc:
        code = exc.code or "no code"
        if is_key_rejection(exc) or exc.code == "42501":
            # 42501: PostgREST ran the call as a role that may not execute it, i.e. the key
            # is the project's publishable (anon) key, not its secret key.
            raise DataPlaneKeyRejectedError(
                f"the data plane at {where_} refused the service's key ({code}: "
                f"{first_line(exc.message or '', 120)}): set SUPABASE_SECRET_KEY to the "
                "project's secret key (sb_secret_…, Project Settings → API Keys) or its legacy "
                "service_role key, never the publishable or anon key"
            ) from None
        if exc.code in {"PGRST106", "PGRST202", "42883", "3F000"}:
            raise DataPlaneUnreachableError(
                f"the data plane at {where_} lacks the `{settings.db_schema}` schema or its "
                f"functions ({code}): apply the migrations (`supabase db push`, or "
                f"`autopilot-api migrate`) and expose `{settings.db_schema}` in the project's "
                "Data API settings"
            ) from None
        if not is_transient(exc):
            raise
        reason = f"{code}: {first_line(exc.message or '', 120)}"
    except (httpx.HTTPError, TimeoutError) as exc:
        reason = type(exc).__name__
    raise DataPlaneUnreachableError(
        f"the data plane at {where_} did not answer ({reason}): check SUPABASE_URL "
        "(SUPABASE_REST_URL) and that the project is up"
    ) from None


async def check_statement_timeout(
    client: AsyncClient, settings: Settings, *, rest_url: str | None = None
) -> int | None:
    """Start-up's check: the key (a refused one raises DataPlaneKeyRejectedError: every
    request would fail), and a warning when a query the HTTP client gives up on (a 503)
    could run on, and commit.

    Returns the statement_timeout in milliseconds (0: none), or None when it could not be
    read: a data plane that is down is reported by /readyz, and start-up goes on.
    """
    try:
        timeout_ms = await probe_data_plane(client, settings, rest_url=rest_url)
    except DataPlaneUnreachableError as exc:
        logger.warning("%s; /readyz answers 503 until it does", exc)
        return None
    except APIError as exc:
        logger.warning(
            "could not check the data plane's statement_timeout against "
            "DATA_PLANE_TIMEOUT_SECONDS (%s)",
            exc.code,
        )
        return None
    client_seconds = settings.data_plane_timeout_seconds
    if timeout_ms == 0 or timeout_ms >= client_seconds * 1000:
        role_timeout = "none" if timeout_ms == 0 else f"{timeout_ms / 1000} s"
        logger.warning(
            "DATA_PLANE_TIMEOUT_SECONDS=%s s is not above the statement_timeout of the "
            "data plane's queries (%s): a query abandoned with a 503 may run on and commit. "
            "Raise DATA_PLANE_TIMEOUT_SECONDS above it, or lower service_role's "
            "statement_timeout (see the migrations)",
            client_seconds,
            role_timeout,
        )
    return timeout_ms


async def start_data_plane(settings: Settings) -> tuple[OpenDataPlane, AsyncClient]:
    """The lifespan's data plane: opened (local mode: started), its client built and its key
    checked. A failure an operator must fix is logged as one line and recorded as the
    reason start-up was refused (the CLI's exit code), then raised."""
    try:
        plane = await asyncio.to_thread(open_data_plane, settings)
    except InfrastructureError as exc:
        refuse_start(exc)
        raise
    client = create_supabase_client(plane.endpoint, plane.settings)
    try:
        await check_statement_timeout(client, plane.settings, rest_url=plane.endpoint.rest_url)
    except InfrastructureError as exc:
        await close_supabase_client(client)
        await asyncio.to_thread(plane.stop)
        refuse_start(exc)
        raise
    return plane, client
