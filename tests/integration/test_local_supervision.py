"""The local data plane supervises what it started: `autopilot-api serve` in local mode as
`make run` runs it, with its processes killed from outside as a crash would."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from autopilot_api.local.dataplane import ensure_postgrest_binary, free_port

pytestmark = pytest.mark.slow  # kills and restarts Postgres and PostgREST


@dataclass
class LocalServe:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def postgrest_children(self) -> list[psutil.Process]:
        return [
            child
            for child in psutil.Process(self.process.pid).children(recursive=True)
            if child.name() == "postgrest"
        ]

    def terminate(self, timeout: float = 30) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _start_local(tmp_path: Path, data_dir: Path, **extra: str) -> LocalServe:
    port = free_port()
    log_path = tmp_path / f"serve-{port}.log"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "LOCAL_MODE": "true",
        "SESSION_COOKIE_SECURE": "false",
        "SESSION_CLEANUP_INTERVAL_SECONDS": "0",
        "PORT": str(port),
        "LOCAL_DATA_DIR": str(data_dir),
        "LOG_FORMAT": "console",
        **extra,
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "autopilot_api", "serve"],
            cwd=tmp_path,  # no developer .env
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    serve = LocalServe(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited at start:\n{serve.log()[-3000:]}")
        if _status(serve, "/readyz") == 200:
            return serve
        time.sleep(0.2)
    serve.terminate()
    raise AssertionError(f"serve not ready in 120 s:\n{serve.log()[-3000:]}")


def _status(serve: LocalServe, path: str) -> int | None:
    try:
        return httpx.get(serve.base_url + path, timeout=2).status_code
    except httpx.HTTPError:
        return None


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def _postmaster(data_dir: Path) -> int:
    return int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])


def _current_postmaster(data_dir: Path) -> int | None:
    """The postmaster's pid, or None while there is none (between a crash and the restart)."""
    try:
        return _postmaster(data_dir)
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _postgres_of(data_dir: Path) -> list[int]:
    """Every postgres process serving this data dir (postmaster and backends)."""
    pgdata = str((data_dir / "pgdata").resolve())
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and any(pgdata in part for part in cmdline):
            found.append(proc.pid)
    return found


@pytest.fixture
def serves() -> Iterator[list[LocalServe]]:
    started: list[LocalServe] = []
    try:
        yield started
    finally:
        for serve in started:
            if serve.process.poll() is None:
                serve.process.kill()
                serve.process.wait()


def test_a_killed_postgrest_is_reaped_and_restarted_and_healthz_says_when_it_cannot_be(
    tmp_path: Path, serves: list[LocalServe]
) -> None:
    # A copy of the binary, so the test can take it away after start.
    binary = tmp_path / "postgrest"
    shutil.copy2(ensure_postgrest_binary(), binary)
    data_dir = tmp_path / "local"
    serve = _start_local(tmp_path, data_dir, POSTGREST_BIN=str(binary), POSTGREST_MAX_RESTARTS="3")
    serves.append(serve)
    try:
        (first,) = serve.postgrest_children()
        first.send_signal(signal.SIGKILL)

        started = time.monotonic()
        assert _wait_for(
            lambda: (
                _status(serve, "/readyz") == 200
                and bool([c for c in serve.postgrest_children() if c.pid != first.pid])
            ),
            timeout=20,
        ), serve.log()[-3000:]
        print(f"PostgREST back in {time.monotonic() - started:.1f} s")  # noqa: T201
        # The killed child was reaped: no zombie under the API.
        children = psutil.Process(serve.process.pid).children(recursive=True)
        assert [c.pid for c in children if c.status() == psutil.STATUS_ZOMBIE] == []
        assert not psutil.pid_exists(first.pid) or not _alive(first.pid)
        assert _status(serve, "/healthz") == 200
        assert "restarting PostgREST" in serve.log()

        # Now it cannot come back: /healthz reports the data plane down for good.
        binary.unlink()
        (second,) = serve.postgrest_children()
        second.send_signal(signal.SIGKILL)
        assert _wait_for(lambda: _status(serve, "/healthz") == 503, timeout=30), serve.log()[-3000:]
        response = httpx.get(serve.base_url + "/healthz", timeout=2)
        error = response.json()["error"]
        assert error["code"] == "data_plane_down"
        assert error["category"] == "admin_required"
        assert "PostgREST" in error["message"]
        assert serve.postgrest_children() == []
        children = psutil.Process(serve.process.pid).children(recursive=True)
        assert [c.pid for c in children if c.status() == psutil.STATUS_ZOMBIE] == []
    finally:
        serve.terminate()
    assert serve.process.returncode in (0, -signal.SIGTERM)


def test_an_orphaned_postgres_is_adopted_and_stopped_a_live_owners_is_left_alone(
    tmp_path: Path, serves: list[LocalServe]
) -> None:
    data_dir = tmp_path / "local"
    first = _start_local(tmp_path, data_dir)
    serves.append(first)
    postmaster = _postmaster(data_dir)

    # `make run` and `make demo` on one data folder: the second leaves the first's
    # server running when it stops.
    second = _start_local(tmp_path, data_dir)
    serves.append(second)
    assert _postmaster(data_dir) == postmaster
    second.terminate()
    assert second.process.returncode in (0, -signal.SIGTERM)
    time.sleep(1)
    assert _alive(postmaster)
    assert _status(first, "/readyz") == 200

    # kill -9 of the owner: its Postgres runs on, an orphan.
    first.process.kill()
    first.process.wait()
    time.sleep(1)
    assert _alive(postmaster)

    # The next start adopts it, and takes ownership: it stops it when it stops.
    third = _start_local(tmp_path, data_dir)
    serves.append(third)
    assert _postmaster(data_dir) == postmaster
    third.terminate()
    assert third.process.returncode in (0, -signal.SIGTERM)
    assert _wait_for(lambda: not _alive(postmaster), timeout=20), third.log()[-3000:]
    assert _wait_for(lambda: _postgres_of(data_dir) == [], timeout=10)


def test_a_killed_postgres_is_restarted_and_healthz_says_when_it_cannot_be(
    tmp_path: Path, serves: list[LocalServe]
) -> None:
    data_dir = tmp_path / "local"
    serve = _start_local(tmp_path, data_dir, POSTGREST_MAX_RESTARTS="2")
    serves.append(serve)
    try:
        assert _status(serve, "/healthz") == 200
        first = _postmaster(data_dir)
        os.kill(first, signal.SIGKILL)
        started = time.monotonic()
        # Crash recovery runs at the restart; PostgREST reconnects by itself.
        assert _wait_for(
            lambda: (
                _current_postmaster(data_dir) not in (None, first)
                and _status(serve, "/readyz") == 200
            ),
            timeout=60,
        ), serve.log()[-3000:]
        print(f"Postgres back in {time.monotonic() - started:.1f} s")  # noqa: T201
        assert _status(serve, "/healthz") == 200
        assert "Postgres exited unexpectedly" in serve.log()
        assert "restarting Postgres" in serve.log()

        # Now it cannot come back (its data folder is from another major version, say):
        # /healthz reports the data plane down for good.
        (data_dir / "pgdata" / "PG_VERSION").write_text("9\n")
        os.kill(_postmaster(data_dir), signal.SIGKILL)
        assert _wait_for(lambda: _status(serve, "/healthz") == 503, timeout=60), serve.log()[-3000:]
        error = httpx.get(serve.base_url + "/healthz", timeout=2).json()["error"]
        assert error["code"] == "data_plane_down"
        assert error["category"] == "admin_required"
        assert "Postgres exited and could not be restarted (2 attempts)" in error["message"]
    finally:
        serve.terminate()
    assert serve.process.returncode in (0, -signal.SIGTERM)
    assert _wait_for(lambda: _postgres_of(data_dir) == [], timeout=10)
