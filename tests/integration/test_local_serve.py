"""`autopilot-api serve` as `make run` starts it: local mode, its own Postgres and PostgREST,
readable log lines, and a banner once the API listens."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from autopilot_api.local.dataplane import free_port

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _read_until(process: subprocess.Popen[str], marker: str, timeout: float) -> list[str]:
    """stderr lines up to the one holding marker; a reader thread, so a silent process
    cannot block the test past its deadline."""
    assert process.stderr is not None
    stream = process.stderr
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if marker in line:
            return seen
    raise AssertionError(f"no {marker!r} in the output:\n" + "\n".join(seen))


def test_make_run_logs_readable_lines_and_ends_start_up_with_a_banner(tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "local"
    process = subprocess.Popen(
        [sys.executable, "-m", "autopilot_api", "serve"],
        cwd=tmp_path,  # no developer .env
        env={
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(tmp_path),
            "LOCAL_MODE": "true",
            "SESSION_COOKIE_SECURE": "false",
            "PORT": str(port),
            "LOCAL_DATA_DIR": str(data_dir),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _read_until(process, "Try it:", timeout=120)
        # The banner is printed once the socket listens: its URLs answer right now.
        docs = re.search(r"Docs:\s+(\S+)", "\n".join(lines))
        assert docs is not None
        assert docs.group(1) == f"http://127.0.0.1:{port}/docs"
        assert httpx.get(docs.group(1), timeout=5).status_code == 200
        assert any(f"API:    http://127.0.0.1:{port}/api/v1" in line for line in lines)
        assert any(".venv/bin/autopilot-api token" in line for line in lines)
        running = next(i for i, line in enumerate(lines) if "Uvicorn running on" in line)
        banner = next(i for i, line in enumerate(lines) if "is ready (local mode)" in line)
        assert running < banner
        # Readable lines, not JSON, and no escape codes into a pipe.
        assert not any(line.startswith("{") for line in lines)
        assert not any(ANSI.search(line) for line in lines)
        assert re.fullmatch(
            r"\d{2}:\d{2}:\d{2}\.\d{3} INFO    autopilot_api\.local\.dataplane local data plane "
            r"up in .*",
            next(line for line in lines if "local data plane up" in line),
        )
        # pgserver's multi-line messages: continuation lines indented under their event.
        starts = [line for line in lines if line and not line.startswith(" ")]
        assert all(re.match(r"\d{2}:\d{2}:\d{2}\.\d{3} ", line) for line in starts), starts
        postmaster = int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
    # uvicorn re-raises the SIGTERM it handled, after a graceful shutdown.
    assert process.returncode in (0, -signal.SIGTERM)
    # Stopping the API stopped the Postgres it started.
    deadline = time.monotonic() + 15
    while _alive(postmaster) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(postmaster)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
