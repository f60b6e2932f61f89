"""Log formats: JSON lines for collectors, readable lines for a person (LOG_FORMAT)."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import warnings
from collections.abc import Iterator

import pytest

from autopilot_api.core.config import load_settings
from autopilot_api.core.logging import (
    ConsoleFormatter,
    JsonFormatter,
    configure_logging,
    log_access,
)
from autopilot_api.core.request_context import request_id_var

ANSI = re.compile(r"\x1b\[[0-9;]*m")
CREATED = 1_795_000_000.25  # a fixed instant, so the JSON line can be compared whole


def _record(message: str, *, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("autopilot_api.access", level, __file__, 1, message, None, None)
    record.created = CREATED
    record.__dict__.update(extra)
    return record


@pytest.fixture
def request_id() -> Iterator[str]:
    token = request_id_var.set("req-42")
    try:
        yield "req-42"
    finally:
        request_id_var.reset(token)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.captureWarnings(False)


class TestSetting:
    @pytest.mark.parametrize(
        ("values", "resolved"),
        [
            ({}, "json"),
            ({"local_mode": True}, "console"),
            ({"local_mode": True, "log_format": "json"}, "json"),
            ({"log_format": "console"}, "console"),
        ],
    )
    def test_auto_is_console_in_local_mode_only(
        self, values: dict[str, object], resolved: str
    ) -> None:
        assert load_settings(_env_file=None, **values).resolved_log_format == resolved


class TestJson:
    def test_a_request_line_is_exactly_the_production_shape(self, request_id: str) -> None:
        line = JsonFormatter().format(
            _record("request", method="GET", path="/healthz", status=200, duration_ms=1.5)
        )
        assert line == (
            '{"time": "2026-11-18T11:06:40.250000+00:00", "level": "INFO", '
            '"logger": "autopilot_api.access", "message": "request", "request_id": "req-42", '
            '"method": "GET", "path": "/healthz", "status": 200, "duration_ms": 1.5}'
        )

    def test_uvicorns_coloured_copy_of_the_message_is_left_out(self) -> None:
        record = _record("Started server process [%d]", color_message="\x1b[36m%d\x1b[0m")
        entry = json.loads(JsonFormatter().format(record))
        assert "color_message" not in entry
        assert "\x1b" not in json.dumps(entry)

    def test_a_multi_line_message_stays_one_line(self) -> None:
        line = JsonFormatter().format(_record("initdb said:\nok\ndone"))
        assert "\n" not in line
        assert json.loads(line)["message"] == "initdb said:\nok\ndone"


class TestConsole:
    def test_one_line_with_time_level_logger_message_and_key_values(self, request_id: str) -> None:
        line = ConsoleFormatter(colour=False).format(
            _record(
                "request",
                method="GET",
                path="/api/v1/sessions/me",
                status=404,
                duration_ms=3.2,
                color_message="\x1b[1mrequest\x1b[0m",
            )
        )
        assert "\n" not in line
        assert re.fullmatch(
            r"\d{2}:\d{2}:\d{2}\.\d{3} INFO    autopilot_api\.access request "
            r"request_id=req-42 method=GET path=/api/v1/sessions/me status=404 duration_ms=3\.2",
            line,
        ), line

    def test_values_with_spaces_are_quoted(self) -> None:
        line = ConsoleFormatter(colour=False).format(_record("x", reason="two words", n=None))
        assert line.endswith('x reason="two words" n=null')

    def test_continuation_lines_and_tracebacks_are_indented(self) -> None:
        try:
            raise ValueError("boom")
        except ValueError:
            record = _record("initdb said:\nline one\nline two", level=logging.ERROR)
            record.exc_info = sys.exc_info()
        lines = ConsoleFormatter(colour=False).format(record).splitlines()
        assert lines[0].endswith("ERROR   autopilot_api.access initdb said:")
        assert lines[1:3] == ["    line one", "    line two"]
        assert lines[3] == "    Traceback (most recent call last):"
        assert lines[-1] == "    ValueError: boom"
        # Only the first line of an event starts at the margin: a message cannot forge one.
        assert all(line.startswith("    ") for line in lines[1:])

    def test_no_escape_codes_when_stderr_is_not_a_terminal(
        self, request_id: str, restore_logging: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        stream = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        monkeypatch.delenv("NO_COLOR", raising=False)
        configure_logging("INFO", "console")
        logging.getLogger("autopilot_api.access").warning("slow", extra={"duration_ms": 900})
        output = stream.getvalue()
        assert "WARNING autopilot_api.access slow request_id=req-42 duration_ms=900" in output
        assert not ANSI.search(output)

    def test_colour_on_a_terminal_unless_no_color(
        self, restore_logging: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        terminal = _Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        monkeypatch.delenv("NO_COLOR", raising=False)
        configure_logging("INFO", "console")
        logging.getLogger("autopilot_api.main").error("broken", extra={"status": 503})
        coloured = terminal.getvalue()
        assert "\x1b[31mERROR" in coloured
        assert (
            ANSI.sub("", coloured)
            .rstrip("\n")
            .endswith("ERROR   autopilot_api.main broken status=503")
        )

        monkeypatch.setenv("NO_COLOR", "1")
        terminal.truncate(0)
        terminal.seek(0)
        logging.getLogger("autopilot_api.main").error("broken")
        assert not ANSI.search(terminal.getvalue())

    def test_json_is_the_default_format(
        self, restore_logging: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        stream = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        configure_logging("INFO")
        logging.getLogger("autopilot_api.main").info("hello", extra={"status": 1})
        entry = json.loads(stream.getvalue())
        assert (entry["message"], entry["status"], entry["logger"]) == (
            "hello",
            1,
            "autopilot_api.main",
        )

    @pytest.mark.parametrize("log_format", ["console", "json"])
    def test_python_warnings_become_log_events(
        self, restore_logging: None, monkeypatch: pytest.MonkeyPatch, log_format: str
    ) -> None:
        stream = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        configure_logging("INFO", log_format)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                warnings.warn("the old way is deprecated", RuntimeWarning, stacklevel=1)
        finally:
            logging.captureWarnings(False)
        first, *rest = stream.getvalue().splitlines()
        if log_format == "json":
            assert rest == []
            assert json.loads(first)["logger"] == "py.warnings"
            return
        assert re.match(r"\d{2}:\d{2}:\d{2}\.\d{3} WARNING py\.warnings \S+: RuntimeWarning", first)
        assert all(line.startswith("    ") for line in rest)


class TestQuietStart:
    """What start-up says that an operator need not read is DEBUG; the rest stays."""

    def _lines(self, monkeypatch: pytest.MonkeyPatch, level: str) -> list[str]:
        stream = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        for name in ("pgserver", "alembic.runtime.migration", "uvicorn.error"):
            # As a fresh process has them (other tests' servers may have set them).
            monkeypatch.setattr(logging.getLogger(name), "disabled", False)
            monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
        configure_logging(level, "console")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                warnings.warn("XDG_RUNTIME_DIR is not set", RuntimeWarning, stacklevel=1)
        finally:
            logging.captureWarnings(False)
        logging.getLogger("pgserver").info("Running commandline: initdb")
        logging.getLogger("alembic.runtime.migration").info("Running upgrade 0001 -> 0002")
        logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
        logging.getLogger("uvicorn.error").info("Uvicorn running on http://127.0.0.1:8000")
        logging.getLogger("pgserver").error("Failed to start server")
        return stream.getvalue().splitlines()

    def test_chatter_is_dropped_at_info(
        self, restore_logging: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        lines = self._lines(monkeypatch, "INFO")
        # pgserver's failures too: the data plane says in one line what failed, and where
        # Postgres's log is.
        assert len(lines) == 1, lines
        assert "Uvicorn running on" in lines[0]

    def test_chatter_shows_at_debug(
        self, restore_logging: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        lines = [line for line in self._lines(monkeypatch, "DEBUG") if line[:1] != " "]
        debug = [line for line in lines if " DEBUG   " in line]
        assert len(debug) == 3, lines
        assert any("XDG_RUNTIME_DIR" in line for line in lines)
        assert any("ERROR   pgserver Failed to start server" in line for line in lines)


class TestAccessLine:
    def _lines(self, monkeypatch: pytest.MonkeyPatch, *calls: tuple[int, float]) -> list[dict]:  # type: ignore[type-arg]
        stream = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        configure_logging("INFO")
        for status, rate in calls:
            log_access("GET", "/api/v1/sessions/me", status, 0.0123456, rate)
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    def test_the_line_has_the_production_shape(
        self, request_id: str, restore_logging: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        (entry,) = self._lines(monkeypatch, (200, 1.0))
        assert list(entry) == [
            "time",
            "level",
            "logger",
            "message",
            "request_id",
            "method",
            "path",
            "status",
            "duration_ms",
        ]
        assert entry["request_id"] == "req-42"
        assert (entry["status"], entry["duration_ms"]) == (200, 12.35)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", entry["time"])

    def test_sampling_never_drops_an_error_line(
        self, request_id: str, restore_logging: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        entries = self._lines(
            monkeypatch, *[(200, 0.0)] * 50, (404, 0.0), (500, 0.0), (503, 0.0), (201, 1.0)
        )
        assert [entry["status"] for entry in entries] == [404, 500, 503, 201]
        assert all(entry["request_id"] == "req-42" for entry in entries)

    def test_a_sample_rate_keeps_about_that_share(
        self, restore_logging: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        entries = self._lines(monkeypatch, *[(200, 0.25)] * 2000)
        assert 300 < len(entries) < 700

    def test_nothing_below_the_log_level(
        self, restore_logging: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        stream = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        configure_logging("WARNING")
        log_access("GET", "/healthz", 500, 0.001, 1.0)
        assert stream.getvalue() == ""
