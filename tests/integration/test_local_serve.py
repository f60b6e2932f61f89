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
from tests.fixtures.factories import SPA_ORIGIN

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


def _serve_env(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "LOCAL_MODE": "true",
        "SESSION_COOKIE_SECURE": "false",
        "PORT": str(port),
        "LOCAL_DATA_DIR": str(tmp_path / "local"),
        **extra,
    }


def test_several_workers_without_redis_refuse_to_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "autopilot_api", "serve"],
        cwd=tmp_path,
        env=_serve_env(tmp_path, free_port(), WORKERS="2"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "WORKERS=2 without REDIS_URL: refusing to start" in result.stderr
    # Refused before anything started: no data plane was made.
    assert not (tmp_path / "local").exists()


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        children = Path(f"/proc/{current}/task/{current}/children")
        kids = [int(kid) for kid in children.read_text().split()] if children.exists() else []
        found += kids
        todo += kids
    return found


def test_local_mode_with_several_workers_runs_one_data_plane(
    tmp_path: Path, redis_url: str
) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "autopilot_api", "serve"],
        cwd=tmp_path,
        env=_serve_env(
            tmp_path,
            port,
            WORKERS="2",
            REDIS_URL=redis_url,
            CORS_ORIGINS=SPA_ORIGIN,
            SESSION_CREATE_LIMIT_PER_HOUR="100000000",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        ready = 0
        while ready < 20 and time.monotonic() < deadline:
            assert process.poll() is None, "serve exited"
            try:
                ready = ready + 1 if httpx.get(f"{base}/readyz", timeout=2).is_success else 0
            except httpx.HTTPError:
                ready = 0
            time.sleep(0.05 if ready else 0.5)
        assert ready == 20, "not ready in 120 s"
        # Both workers have finished their start-up (each lifespan would start a plane).
        time.sleep(3)
        for _ in range(6):
            created = httpx.post(f"{base}/api/v1/sessions", headers={"Origin": SPA_ORIGIN})
            assert created.status_code == 201
        postgrest = [
            pid
            for pid in _descendants(process.pid)
            if b"postgrest" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(postgrest) == 1, postgrest
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
