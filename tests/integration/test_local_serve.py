"""`autopilot-api serve` as `make run` starts it: local mode, its own Postgres and PostgREST,
readable log lines, and a banner once the API listens."""

from __future__ import annotations

import json
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
import pytest

from autopilot_api.local.dataplane import free_port
from tests.fixtures.factories import SPA_ORIGIN

pytestmark = pytest.mark.slow  # `make run` and `serve` as processes

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


class _Output:
    """Every line a process writes (stdout and stderr together), read by a thread of its own."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self.process = process
        self.lines: list[str] = []
        self._stream = process.stdout
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        for line in self._stream:
            self.lines.append(line.rstrip("\n"))

    def until(self, marker: str, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index, line in enumerate(list(self.lines)):
                if marker in line:
                    return self.lines[: index + 1]
            if self.process.poll() is not None and not self._thread.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no {marker!r} in the output:\n" + "\n".join(self.lines))

    def after_ctrl_c(self) -> list[str]:
        """SIGINT to the process group, as a terminal's Ctrl-C; the lines printed after it."""
        seen = len(self.lines)
        os.killpg(self.process.pid, signal.SIGINT)
        self.process.wait(timeout=30)
        self._thread.join(timeout=10)
        return self.lines[seen:]


def _serve_in_own_session(tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    """`make run`'s command in a session of its own, as a terminal's foreground job."""
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "autopilot-api"), "serve"],
        cwd=tmp_path,
        env={
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(tmp_path),
            "LOCAL_MODE": "true",
            "SESSION_COOKIE_SECURE": "false",
            "PORT": str(free_port()),
            "LOCAL_DATA_DIR": str(tmp_path / "local"),
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_a_start_says_little_before_the_banner_and_ctrl_c_no_alarm(tmp_path: Path) -> None:
    counts = {}
    for start in ("cold", "warm"):
        process = _serve_in_own_session(tmp_path)
        try:
            output = _Output(process)
            lines = output.until("Try it:", timeout=120)
            before = lines[: next(i for i, line in enumerate(lines) if "is ready" in line)]
            counts[start] = len([line for line in before if line.strip()])
            after = output.after_ctrl_c()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        print(f"{start} start: {counts[start]} lines before the banner: {before}")  # noqa: T201
        # A clean stop says nothing alarming (nor anything at all at INFO).
        alarms = [line for line in after if re.search(r" (WARNING|ERROR|CRITICAL) ", line)]
        assert alarms == [], after
        assert not any("Traceback" in line for line in after)
        assert process.returncode == 0, after
    # A cold start creates the cluster and says so; a warm one only says where things are.
    assert counts["cold"] <= 10
    assert counts["warm"] <= 3
    assert counts["warm"] <= counts["cold"]


def test_json_mode_writes_only_json_lines(tmp_path: Path) -> None:
    process = _serve_in_own_session(tmp_path, LOG_FORMAT="json")
    try:
        output = _Output(process)
        output.until("Uvicorn running on", timeout=120)
        output.after_ctrl_c()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    entries = [json.loads(line) for line in output.lines]  # every line is one JSON object
    assert entries
    assert not any("color_message" in entry for entry in entries)
    assert not any("\x1b" in line for line in output.lines)
