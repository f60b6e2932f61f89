"""Logging: one JSON object per line, with the request id (production), or one readable line
per event (local mode); AUDIT sits between INFO and WARNING (claims and the like)."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import sys
from datetime import UTC, datetime
from typing import Any

from autopilot_api.core.request_context import request_id_var

AUDIT = 25
logging.addLevelName(AUDIT, "AUDIT")

# A record made by log_access carries its fields here, so formatters need not sift them out.
_FIELDS = "_fields"
# Attributes every LogRecord has; anything else was passed with `extra=` and is kept.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", _FIELDS}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    fields = record.__dict__.get(_FIELDS)
    if fields is not None:
        return fields  # type: ignore[no-any-return]
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


# One encoder for every line: json.dumps(..., default=str) would build one per call.
_ENCODER = json.JSONEncoder(default=str)


class JsonFormatter(logging.Formatter):
    # The ISO time up to the seconds, for the last second seen (lines come many per second).
    _second = -1
    _second_text = ""

    def _time(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._second_text}.{int((created - second) * 1_000_000):06d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id_var.get(),
        }
        entry.update(
            (key, value) for key, value in _extras(record).items() if key not in _SKIPPED_EXTRAS
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _ENCODER.encode(entry)


# Extras that only repeat the message, with ANSI colours, for uvicorn's own console.
_SKIPPED_EXTRAS = frozenset({"color_message"})
_CONTINUATION = "    "
_PLAIN_VALUE = re.compile(r"^[^\s\"'=]+$")
_LEVEL_COLOURS = {
    "DEBUG": "\x1b[2m",
    "INFO": "\x1b[32m",
    "AUDIT": "\x1b[36m",
    "WARNING": "\x1b[33m",
    "ERROR": "\x1b[31m",
    "CRITICAL": "\x1b[1;31m",
}
_DIM, _RESET = "\x1b[2m", "\x1b[0m"


def _console_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if _PLAIN_VALUE.match(text) else json.dumps(text)


class ConsoleFormatter(logging.Formatter):
    """`time level logger message key=value …`; continuation lines (multi-line messages,
    tracebacks) are indented so every event still starts at the left margin."""

    def __init__(self, *, colour: bool | None = None) -> None:
        super().__init__()
        self._colour = colour

    def _use_colour(self) -> bool:
        if self._colour is not None:
            return self._colour
        # https://no-color.org; and never escape codes into a file or a pipe.
        return "NO_COLOR" not in os.environ and sys.stderr.isatty()

    def format(self, record: logging.LogRecord) -> str:
        colour = self._use_colour()
        time = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        level = f"{record.levelname:<7}"
        name = record.name
        if colour:
            time, name = f"{_DIM}{time}{_RESET}", f"{_DIM}{name}{_RESET}"
            level = f"{_LEVEL_COLOURS.get(record.levelname, '')}{level}{_RESET}"
        first, *rest = record.getMessage().splitlines() or [""]
        pairs = []
        request_id = request_id_var.get()
        if request_id != "-":
            pairs.append(("request_id", request_id))
        pairs += [
            (key, value) for key, value in _extras(record).items() if key not in _SKIPPED_EXTRAS
        ]
        fields = " ".join(
            f"{_DIM}{key}={_RESET}{_console_value(value)}"
            if colour
            else f"{key}={_console_value(value)}"
            for key, value in pairs
        )
        line = " ".join(part for part in (time, level, name, first, fields) if part)
        if record.exc_info:
            rest += self.formatException(record.exc_info).splitlines()
        return "\n".join([line, *(_CONTINUATION + extra for extra in rest)])


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time (test runners swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        return None


# What start-up and shutdown say that an operator need not read: shown at DEBUG (LOG_LEVEL=
# DEBUG), not at INFO. Postgres's initdb and pg_ctl output (pgserver), Alembic's plugin and
# revision lines, and uvicorn's process steps; "Uvicorn running on …" and "Application
# shutdown complete" (a graceful stop's proof) stay.
_CHATTY_LOGGERS = ("pgserver", "alembic")
_UVICORN_STEPS = (
    "Started server process",
    "Waiting for application startup",
    "Application startup complete",
    "Shutting down",
    "Waiting for application shutdown",
    "Finished server process",
)


def _is_chatter(record: logging.LogRecord) -> bool:
    name = record.name
    if name.startswith("pgserver"):
        # Its failures too: they dump whole command outputs and logs, and the data plane
        # reports the failure itself in one line naming the log file.
        return True
    if record.levelno == logging.INFO:
        if name.startswith(_CHATTY_LOGGERS):
            return True
        return name == "uvicorn.error" and str(record.msg).startswith(_UVICORN_STEPS)
    # pgserver's platformdirs, when HOME has no XDG_RUNTIME_DIR: harmless, said every start.
    return name == "py.warnings" and "XDG_RUNTIME_DIR" in record.getMessage()


class QuietFilter(logging.Filter):
    """On the one handler: start-up chatter becomes DEBUG (dropped below it), and when
    start-up was refused for a reason already logged in one line, uvicorn's traceback of the
    lifespan and its "Application startup failed" are dropped."""

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold

    def filter(self, record: logging.LogRecord) -> bool:
        if _is_chatter(record):
            if self.threshold > logging.DEBUG:
                return False
            if record.levelno == logging.INFO:
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return True
        if record.name == "uvicorn.error" and record.levelno >= logging.ERROR:
            from autopilot_api.core.infrastructure import start_refusal

            if start_refusal() is not None:
                message = str(record.msg)
                return not (
                    message.startswith("Traceback") or message.startswith("Application startup")
                )
        return True


def configure_logging(level: str, log_format: str = "json") -> None:
    handler = _StderrHandler()
    handler.setFormatter(ConsoleFormatter() if log_format == "console" else JsonFormatter())
    handler.addFilter(QuietFilter(logging.getLevelName(level)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Neither format writes thread or process names; without these every record (one
    # access line per request) skips looking them up.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Python warnings as events like the others (JSON in JSON mode), not as bare lines.
    logging.captureWarnings(True)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Uvicorn's access line carries the raw URL (`/events?ticket=…`); ours drops the query.
    # Silenced here, not only by the CLI, so `uvicorn autopilot_api.main:app` is safe too.
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers[:] = []
    uvicorn_access.propagate = False
    uvicorn_access.disabled = True
    # httpx logs every request URL at INFO: noise on the hot path.
    logging.getLogger("httpx").setLevel(logging.WARNING)


ACCESS_LOGGER = "autopilot_api.access"
_access_logger = logging.getLogger(ACCESS_LOGGER)


def log_access(
    method: str,
    path: str,
    status: int,
    seconds: float,
    sample_rate: float,
    *,
    error: str | None = None,
    stream_error: bool = False,
) -> None:
    """The one access line of a request: every error (status >= 400, with the envelope's
    `error` code; a stream that ended with `event: error`, at WARNING), and that share of the
    others (ACCESS_LOG_SAMPLE_RATE). Made directly, without the stack walk and `extra=`
    checks of `Logger.info`: it is written for every request."""
    if status < 400 and error is None and sample_rate < 1.0 and random.random() >= sample_rate:  # noqa: S311
        return
    level = logging.WARNING if stream_error else logging.INFO
    if not _access_logger.isEnabledFor(level):
        return
    message = "stream ended with an error event" if stream_error else "request"
    record = logging.LogRecord(ACCESS_LOGGER, level, __file__, 0, message, None, None)
    fields: dict[str, Any] = {  # the extras, in the order they are written
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": round(seconds * 1000, 2),
    }
    if error is not None:
        fields["error"] = error
    record._fields = fields
    _access_logger.handle(record)
