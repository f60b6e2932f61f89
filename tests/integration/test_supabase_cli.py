"""The real Supabase CLI and `autopilot-api migrate` take turns on one database: whatever one
applied, the other finds applied.

A hosted project is migrated with `supabase db push`; the tests run that very CLI (the npm
package, fetched into .tools/) against fresh databases of the test Postgres.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from autopilot_api.db.migrations import (
    CLI_HISTORY_TABLE,
    MIGRATIONS_DIR,
    apply_local_shim,
    sql_migrations,
    upgrade_database,
)
from autopilot_api.local.dataplane import (
    LocalDataPlane,
    drop_database,
    ensure_database,
    ensure_supabase_cli,
    with_database,
)
from tests.conftest import plane_info
from tests.fixtures.catalogue import catalogue_difference, catalogue_snapshot
from tests.fixtures.postgres_tcp import tcp_server_url

MIGRATIONS = sql_migrations()
FILES = [migration.filename for migration in MIGRATIONS]
HISTORY = [(migration.version, migration.name) for migration in MIGRATIONS]


class SupabaseCli:
    """`supabase <command> --remote=<url>` in a scratch workdir holding supabase/migrations."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.home = home
        self.env = {
            **os.environ,
            "SUPABASE_HOME": str(home / "home"),
            "SUPABASE_TELEMETRY_DISABLED": "1",
            "DO_NOT_TRACK": "1",
            # The test Postgres speaks no TLS; say so instead of letting the CLI fall back.
            "PGSSLMODE": "disable",
        }

    def run(self, *args: str, url: str) -> dict[str, Any]:
        # The repository's supabase/ as a user runs the CLI in it (the CLI writes .temp/).
        workdir = self.home / f"project-{uuid.uuid4().hex[:8]}"
        shutil.copytree(MIGRATIONS_DIR.parent, workdir / "supabase")
        result = subprocess.run(
            [str(self.binary), *args, f"--remote={url}", "--workdir", str(workdir)]
            + ["--output-format", "json"],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            env=self.env,
            timeout=180,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        output: dict[str, Any] = json.loads(result.stdout)
        return output

    def push(self, url: str) -> dict[str, Any]:
        # --yes: without a terminal the CLI otherwise asks, changes nothing and says so.
        return self.run("db", "push", "--yes", url=url)

    def assert_in_step(self, url: str) -> None:
        """`supabase migration list`: every local file is applied remotely, and no other."""
        listed = self.run("migration", "list", url=url)["migrations"]
        versions = [version for version, _ in HISTORY]
        assert [row["local"] for row in listed] == versions
        assert [row["remote"] for row in listed] == versions


@pytest.fixture(scope="module")
def supabase_cli(tmp_path_factory: pytest.TempPathFactory) -> SupabaseCli:
    return SupabaseCli(ensure_supabase_cli(), tmp_path_factory.mktemp("supabase-cli"))


@pytest.fixture(scope="module")
def server_url(data_plane: LocalDataPlane) -> str:
    return with_database(plane_info(data_plane).database_url, "postgres")


@pytest.fixture(scope="module")
def tcp_url(server_url: str) -> Iterator[str]:
    with tcp_server_url(server_url) as url:
        yield url


@pytest.fixture
def fresh_database(server_url: str, tcp_url: str) -> Iterator[Callable[[], tuple[str, str]]]:
    """Makes empty databases: (URL for psycopg and Alembic, TCP URL for the CLI)."""
    created: list[str] = []

    def make() -> tuple[str, str]:
        name = f"autopilot_cli_{uuid.uuid4().hex[:12]}"
        ensure_database(server_url, name)
        created.append(name)
        return with_database(server_url, name), f"{tcp_url}/{name}"

    yield make
    for name in created:
        drop_database(server_url, name)


def cli_history(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(f"select version, name from {CLI_HISTORY_TABLE} order by 1").fetchall()
    return [(str(version), str(name)) for version, name in rows]


def alembic_head(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("select version_num from autopilot_private.alembic_version").fetchall()
    return [str(row[0]) for row in rows]


def test_migrate_finds_nothing_pending_after_db_push(
    supabase_cli: SupabaseCli, fresh_database: Callable[[], tuple[str, str]]
) -> None:
    url, cli_url = fresh_database()
    with psycopg.connect(url, autocommit=True) as conn:
        apply_local_shim(conn)  # what a hosted project has before its first push

    pushed = supabase_cli.push(cli_url)
    assert pushed["upToDate"] is False
    assert pushed["migrations"] == FILES
    assert cli_history(url) == HISTORY
    built_by_cli = catalogue_snapshot(url)

    assert upgrade_database(url) == []

    # Alembic only marked the files done: its table is at the last one, nothing changed.
    assert alembic_head(url) == [HISTORY[-1][0]]
    assert catalogue_snapshot(url) == built_by_cli
    assert cli_history(url) == HISTORY
    # And the CLI built what `migrate` builds.
    url_migrated, _ = fresh_database()
    upgrade_database(url_migrated)
    assert catalogue_difference(catalogue_snapshot(url_migrated), built_by_cli) == {
        "only_left": [],
        "only_right": [],
    }


def test_db_push_finds_nothing_pending_after_migrate(
    supabase_cli: SupabaseCli, fresh_database: Callable[[], tuple[str, str]]
) -> None:
    url, cli_url = fresh_database()
    applied = migrate(url).splitlines()
    assert applied[0].startswith(f"applied {len(FILES)} migrations to ")
    assert [line.strip() for line in applied[1:]] == FILES
    before = catalogue_snapshot(url)

    pushed = supabase_cli.push(cli_url)

    assert pushed["upToDate"] is True, pushed
    assert pushed["migrations"] == []
    assert catalogue_snapshot(url) == before
    supabase_cli.assert_in_step(cli_url)
    assert re.fullmatch(r"nothing to apply: .* is up to date", migrate(url))


def migrate(url: str) -> str:
    """`autopilot-api migrate` as an operator runs it; what it printed."""
    result = subprocess.run(
        [sys.executable, "-m", "autopilot_api", "migrate"],
        env={"PATH": os.environ.get("PATH", ""), "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()
