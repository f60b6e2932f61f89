"""The package as a user installs it: the wheel built with uv, installed into a scratch
venv (versions pinned by uv.lock, wheels from uv's cache), run from outside the checkout.
`autopilot-api migrate` builds the schema on an empty database from the SQL the wheel
carries; `uvicorn autopilot_api.main:app` serves the API and never logs request URLs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from autopilot_api.core.config import PROJECT_ROOT
from autopilot_api.local.dataplane import (
    LocalDataPlane,
    drop_database,
    ensure_database,
    free_port,
    with_database,
)
from tests.fixtures.processes import service_env

MIGRATIONS = PROJECT_ROOT / "supabase" / "migrations"
LOCAL_SHIM = PROJECT_ROOT / "supabase" / "local"
SCHEMAS = ("autopilot", "autopilot_private")


@dataclass
class Installed:
    wheel: Path
    venv: Path
    outside: Path  # a working directory outside the checkout

    def bin(self, name: str) -> Path:
        return self.venv / "bin" / name


def find_uv() -> str:
    """As the Makefile does: uv on PATH, else the copy `make install` put in .tools."""
    found = shutil.which("uv") or str(PROJECT_ROOT / ".tools" / "uv" / "bin" / "uv")
    assert Path(found).exists(), "uv is missing: run `make install` (it installs uv)"
    return found


def run(args: list[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(arg) for arg in args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        **kwargs,
    )
    assert result.returncode == 0, f"{args[:3]} failed:\n{result.stdout}\n{result.stderr}"
    return result


def base_python() -> str:
    """The interpreter this test's venv was made from (uv venvs are made from it too)."""
    return getattr(sys, "_base_executable", None) or sys.executable


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    uv = find_uv()
    work = tmp_path_factory.mktemp("package")
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
    env.pop("VIRTUAL_ENV", None)
    env.pop("UV_PROJECT_ENVIRONMENT", None)
    run([uv, "build", "--wheel", "--out-dir", work / "dist", PROJECT_ROOT], env=env, cwd=work)
    (wheel,) = (work / "dist").glob("autopilot_api-*.whl")
    # The versions uv.lock pins, as constraints: the wheel's own metadata must pull in
    # everything it needs, at the versions every other install uses (and uv has cached).
    constraints = work / "constraints.txt"
    run(
        [
            uv, "export", "--project", PROJECT_ROOT, "--frozen", "--no-dev",
            "--no-emit-project", "--no-hashes", "--quiet", "--output-file", constraints,
        ],
        env=env,
        cwd=work,
    )  # fmt: skip
    venv = work / "venv"
    run([uv, "venv", "--quiet", "--python", base_python(), venv], env=env, cwd=work)
    run(
        [uv, "pip", "install", "--quiet", "--python", venv / "bin" / "python",
         "--constraints", constraints, wheel],
        env=env,
        cwd=work,
    )  # fmt: skip
    outside = work / "elsewhere"
    outside.mkdir()
    return Installed(wheel=wheel, venv=venv, outside=outside)


class TestTheWheel:
    def test_carries_the_sql_and_the_alembic_environment(self, installed: Installed) -> None:
        with zipfile.ZipFile(installed.wheel) as wheel:
            names = set(wheel.namelist())
            for sql in MIGRATIONS.glob("*.sql"):
                packaged = f"autopilot_api/sql/migrations/{sql.name}"
                assert packaged in names
                assert wheel.read(packaged) == sql.read_bytes()
            for sql in LOCAL_SHIM.glob("*.sql"):
                assert f"autopilot_api/sql/local/{sql.name}" in names
            # The revisions are the SQL files: env.py derives them, there is no versions/.
            assert "autopilot_api/db/alembic/env.py" in names
            (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
            assert "autopilot-api = autopilot_api.cli:main" in wheel.read(entry_points).decode()
        assert list(MIGRATIONS.glob("*.sql"))
        # Only the package at the top level: no module called `src` in site-packages.
        top_level = {name.split("/")[0] for name in names}
        assert "autopilot_api" in top_level
        assert {name for name in top_level if not name.endswith(".dist-info")} == {"autopilot_api"}

    def test_the_console_script_lists_its_commands(self, installed: Installed) -> None:
        result = run([installed.bin("autopilot-api"), "--help"], cwd=installed.outside)
        for command in ("serve", "migrate", "cleanup", "token"):
            assert command in result.stdout


def schema_snapshot(database_url: str) -> dict[str, Any]:
    """Tables and functions of our schemas, each with the row version of its catalogue
    entry (xmin): a migration run again would rewrite them."""
    with psycopg.connect(database_url) as conn:
        tables = conn.execute(
            "select n.nspname || '.' || c.relname, c.xmin::text from pg_class c"
            " join pg_namespace n on n.oid = c.relnamespace"
            " where n.nspname = any(%s) and c.relkind in ('r', 'p', 'v')",
            (list(SCHEMAS),),
        ).fetchall()
        functions = conn.execute(
            "select p.oid::regprocedure::text, p.xmin::text from pg_proc p"
            " join pg_namespace n on n.oid = p.pronamespace where n.nspname = any(%s)",
            (list(SCHEMAS),),
        ).fetchall()
        history = conn.execute(
            "select version from supabase_migrations.schema_migrations order by version"
        ).fetchall()
    return {
        "tables": dict(tables),
        "functions": dict(functions),
        "history": [version for (version,) in history],
    }


@pytest.fixture
def empty_database(data_plane: LocalDataPlane) -> Iterator[str]:
    assert data_plane.info is not None
    server = data_plane.info.database_url
    name = f"autopilot_wheel_{uuid.uuid4().hex[:12]}"
    ensure_database(server, name)
    try:
        yield with_database(server, name)
    finally:
        drop_database(server, name)


class TestMigrateFromTheWheel:
    def test_builds_the_schema_on_an_empty_database_and_again_is_a_no_op(
        self, installed: Installed, empty_database: str, data_plane: LocalDataPlane
    ) -> None:
        assert data_plane.info is not None
        env = {"PATH": "/usr/bin:/bin", "HOME": str(installed.outside)}
        migrate = [installed.bin("autopilot-api"), "migrate"]

        run(migrate, cwd=installed.outside, env={**env, "DATABASE_URL": empty_database})
        first = schema_snapshot(empty_database)
        # The same schema the test data plane has (migrated from the checkout).
        reference = schema_snapshot(data_plane.info.database_url)
        assert set(first["tables"]) == set(reference["tables"])
        assert set(first["functions"]) == set(reference["functions"])
        assert {"autopilot.sessions", "autopilot.discovery_profiles"} <= set(first["tables"])
        assert any(name.startswith("autopilot.claim_session(") for name in first["functions"])
        assert first["history"] == sorted(p.name.split("_")[0] for p in MIGRATIONS.glob("*.sql"))

        run(migrate, cwd=installed.outside, env={**env, "DATABASE_URL": empty_database})
        assert schema_snapshot(empty_database) == first


@pytest.fixture
def uvicorn_app(
    installed: Installed, data_plane: LocalDataPlane
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    env = service_env(data_plane, LOCAL_MODE="false", LOG_LEVEL="INFO")
    # uvicorn's defaults, access log included: the app itself must keep URLs out of it.
    process = subprocess.Popen(
        [installed.bin("uvicorn"), "autopilot_api.main:app", "--port", str(port)],
        cwd=installed.outside,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            try:
                httpx.get(f"{base_url}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield base_url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class TestUvicornServesTheApp:
    def test_ready_and_request_urls_never_reach_the_log(
        self, uvicorn_app: tuple[str, subprocess.Popen[str]]
    ) -> None:
        base_url, process = uvicorn_app
        with httpx.stream("GET", f"{base_url}/api/v1/events?ticket=SECRET123", timeout=5) as r:
            events_status = r.status_code
        ready = httpx.get(f"{base_url}/readyz", timeout=5)
        docs = httpx.get(f"{base_url}/docs", timeout=5)

        process.terminate()
        stdout, stderr = process.communicate(timeout=15)
        log = stdout + stderr
        assert ready.status_code == 200, log[-3000:]
        assert docs.status_code == 200
        assert events_status < 500
        assert "Uvicorn running on" in log  # the log was captured
        assert "/api/v1/events" in log  # the app's own access line names the path
        assert "SECRET123" not in log
