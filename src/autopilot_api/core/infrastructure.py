"""What an operator reads when something the service depends on fails: one line naming what
failed, where (host and port, never a password) and what to do.

These errors are raised by the data plane, the migrations and the tool fetches; the command
line prints them as one line and exits with the code cli.py gives each class (EXIT_CODES), and
a refused start-up of `serve` is recorded here so the CLI can pick the code after uvicorn
has stopped.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

logger = logging.getLogger("autopilot_api.startup")


class InfrastructureError(RuntimeError):
    """Something outside this process failed; the message is the one line to show."""


class DatabaseUnreachableError(InfrastructureError):
    """Postgres (DATABASE_URL, or the local cluster) cannot be reached or logged into."""


class DataPlaneUnreachableError(InfrastructureError):
    """The REST layer (SUPABASE_URL / SUPABASE_REST_URL) does not answer."""


class DataPlaneKeyRejectedError(InfrastructureError):
    """The REST layer answers, but refuses the service's key."""


class ToolFetchError(InfrastructureError):
    """A tool (PostgREST, the Supabase CLI) could not be fetched from its registry."""


class LocalDataPlaneError(InfrastructureError):
    """The local data plane could not be started for another reason."""


def where(url: str) -> str:
    """`host:port` of a URL (the default port for its scheme when none is given), with the
    user, password, path and query left out: safe for a log line or an error message."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "an unparsable URL"
    host = parts.hostname or ""
    if not host:
        # postgresql:///db?host=/path: a Unix socket folder.
        for pair in parts.query.split("&"):
            key, _, value = pair.partition("=")
            if key == "host" and value:
                return f"the socket in {value}"
        return "the local socket"
    if port is None:
        port = {"https": 443, "http": 80}.get(parts.scheme, 5432)
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}"


def first_line(exc: BaseException | str, limit: int = 300) -> str:
    """An exception's message (or a text) on one line, shortened."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# A start-up that `serve` refused (the lifespan raised one of the errors above). uvicorn
# reports the lifespan's failure with a traceback; the logging filter drops it when this is
# set (the one line was logged instead), and the CLI picks the exit code from it.
_refusal: InfrastructureError | None = None


def refuse_start(exc: InfrastructureError) -> None:
    """Record why start-up is refused and log it as the one line an operator reads."""
    global _refusal
    _refusal = exc
    logger.error("%s", exc)


def start_refusal() -> InfrastructureError | None:
    return _refusal
