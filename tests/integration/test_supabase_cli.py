"""The real Supabase CLI applies supabase/migrations, and `autopilot-api migrate` agrees with it.

A hosted project is migrated with `supabase db push`; the tests run that very CLI (the npm
package, fetched into .tools/) against fresh databases of the test Postgres, and compare
what it builds with what `migrate` (Alembic) builds. Either tool must also be able to take
over a database the other one migrated.
"""

from __future__ import annotations

import json
import os
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
    LOCAL_SHIM_DIR,
    MIGRATIONS_DIR,
    cli_version,
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
from tests.fixtures.postgres_tcp import tcp_server_url

MIGRATION_FILES = sorted(path.name for path in MIGRATIONS_DIR.glob("*.sql"))
VERSIONS = [cli_version(name)[0] for name in MIGRATION_FILES]


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

    def workdir(self, files: list[str]) -> Path:
        """A project folder whose supabase/migrations holds `files` (the CLI writes .temp/)."""
        workdir = self.home / f"project-{uuid.uuid4().hex[:8]}"
        (workdir / "supabase" / "migrations").mkdir(parents=True)
        for name in files:
            shutil.copy(MIGRATIONS_DIR / name, workdir / "supabase" / "migrations" / name)
        return workdir

    def run(self, *args: str, url: str, workdir: Path) -> dict[str, Any]:
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

    def push(self, url: str, files: list[str] = MIGRATION_FILES) -> dict[str, Any]:
        # --yes: without a terminal the CLI otherwise asks, changes nothing and says so.
        return self.run("db", "push", "--yes", url=url, workdir=self.workdir(files))

    def migration_list(self, url: str) -> list[dict[str, str]]:
        listed = self.run("migration", "list", url=url, workdir=self.workdir(MIGRATION_FILES))
        return list(listed["migrations"])


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


def apply_local_shim(url: str) -> None:
    """What a hosted project has before its first push: roles, the auth schema."""
    with psycopg.connect(url, autocommit=True) as conn:
        for path in sorted(LOCAL_SHIM_DIR.glob("*.sql")):
            conn.execute(path.read_text(encoding="utf-8"))


SNAPSHOT = """
with schemas as (
  select oid, nspname from pg_namespace
  where nspname not in ('pg_catalog', 'information_schema', 'pg_toast', 'supabase_migrations')
    and nspname not like 'pg_temp%' and nspname not like 'pg_toast_temp%'
), rels as (
  select c.*, s.nspname from pg_class c join schemas s on s.oid = c.relnamespace
  where not (s.nspname = 'autopilot_private' and c.relname like 'alembic_version%')
)
select 'schema', nspname, pg_get_userbyid(n.nspowner)::text,
       coalesce(array_to_string(n.nspacl, ','), '')
from pg_namespace n join schemas using (nspname)
union all
select 'relation', nspname || '.' || relname,
       concat_ws(' ', relkind, pg_get_userbyid(relowner), relrowsecurity, relforcerowsecurity),
       coalesce(array_to_string(relacl, ','), '')
from rels
union all
select 'column', r.nspname || '.' || r.relname || '.' || a.attname,
       concat_ws(' ', format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity,
                 a.attgenerated, a.attnum),
       coalesce(pg_get_expr(d.adbin, d.adrelid), '')
from rels r join pg_attribute a on a.attrelid = r.oid
left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
where a.attnum > 0 and not a.attisdropped
union all
select 'index', r.nspname || '.' || r.relname, pg_get_indexdef(i.indexrelid), ''
from rels r join pg_index i on i.indexrelid = r.oid
union all
select 'constraint', r.nspname || '.' || r.relname || '.' || c.conname,
       pg_get_constraintdef(c.oid), ''
from rels r join pg_constraint c on c.conrelid = r.oid
union all
select 'view', nspname || '.' || relname, pg_get_viewdef(oid), ''
from rels where relkind in ('v', 'm')
union all
select 'trigger', r.nspname || '.' || r.relname || '.' || t.tgname, pg_get_triggerdef(t.oid), ''
from rels r join pg_trigger t on t.tgrelid = r.oid where not t.tgisinternal
union all
select 'policy', schemaname || '.' || tablename || '.' || policyname,
       concat_ws(' ', permissive, roles::text, cmd),
       concat_ws(' ', qual, with_check)
from pg_policies where schemaname in (select nspname from schemas)
union all
select 'function', p.oid::regprocedure::text, pg_get_functiondef(p.oid),
       concat_ws(' ', pg_get_userbyid(p.proowner), coalesce(array_to_string(p.proacl, ','), ''))
from pg_proc p join schemas s on s.oid = p.pronamespace where p.prokind <> 'a'
union all
select 'type', t.oid::regtype::text, t.typtype::text,
       coalesce((select string_agg(enumlabel, ',' order by enumsortorder)
                 from pg_enum where enumtypid = t.oid), '')
from pg_type t join schemas s on s.oid = t.typnamespace
where t.typtype in ('e', 'd', 'c') and (t.typrelid = 0 or exists (
  select 1 from pg_class c where c.oid = t.typrelid and c.relkind = 'c'))
union all
select 'default acl', coalesce(s.nspname, '*'), pg_get_userbyid(d.defaclrole)::text,
       concat_ws(' ', d.defaclobjtype, array_to_string(d.defaclacl, ','))
from pg_default_acl d left join pg_namespace s on s.oid = d.defaclnamespace
union all
select 'extension', extname, extversion, '' from pg_extension
order by 1, 2, 3, 4
"""


def catalog_snapshot(url: str) -> list[tuple[str, ...]]:
    """Everything the migrations create, except the two tools' own version tables."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(SNAPSHOT).fetchall()
    return [tuple(str(value) for value in row) for row in rows]


def cli_history(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(f"select version, name from {CLI_HISTORY_TABLE} order by 1").fetchall()
    return [(str(version), str(name)) for version, name in rows]


def alembic_head(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("select version_num from autopilot_private.alembic_version").fetchall()
    return [str(row[0]) for row in rows]


def assert_in_step(listed: list[dict[str, str]]) -> None:
    assert [row["local"] for row in listed] == VERSIONS
    assert [row["remote"] for row in listed] == VERSIONS


@pytest.fixture(scope="module")
def migrated_by_alembic(server_url: str) -> Iterator[str]:
    """The reference: a fresh database migrated by `autopilot-api migrate`."""
    name = f"autopilot_cli_ref_{uuid.uuid4().hex[:12]}"
    ensure_database(server_url, name)
    url = with_database(server_url, name)
    try:
        upgrade_database(url)
        yield url
    finally:
        drop_database(server_url, name)


def test_the_migrations_are_named_as_the_cli_expects() -> None:
    assert MIGRATION_FILES
    assert len(set(VERSIONS)) == len(VERSIONS), "two files share a version"


def test_db_push_applies_every_migration_as_migrate_does(
    supabase_cli: SupabaseCli,
    fresh_database: Callable[[], tuple[str, str]],
    migrated_by_alembic: str,
) -> None:
    url, cli_url = fresh_database()
    apply_local_shim(url)

    pushed = supabase_cli.push(cli_url)

    assert pushed["upToDate"] is False
    assert pushed["migrations"] == MIGRATION_FILES
    assert cli_history(url) == [cli_version(name) for name in MIGRATION_FILES]
    snapshot = catalog_snapshot(url)
    assert any(row[0] == "function" and "autopilot.ping()" in row[1] for row in snapshot)
    assert snapshot == catalog_snapshot(migrated_by_alembic)
    # `migrate` records the same history as the CLI, so each sees the other's work.
    assert cli_history(migrated_by_alembic) == cli_history(url)

    again = supabase_cli.push(cli_url)
    assert again["upToDate"] is True
    assert again["migrations"] == []
    assert catalog_snapshot(url) == snapshot
    assert_in_step(supabase_cli.migration_list(cli_url))


def test_db_push_after_migrate_is_up_to_date(
    supabase_cli: SupabaseCli, fresh_database: Callable[[], tuple[str, str]]
) -> None:
    url, cli_url = fresh_database()
    migrate = subprocess.run(
        [sys.executable, "-m", "autopilot_api", "migrate"],
        env={"PATH": os.environ.get("PATH", ""), "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    before = catalog_snapshot(url)

    pushed = supabase_cli.push(cli_url)

    assert pushed["upToDate"] is True, pushed
    assert pushed["migrations"] == []
    assert catalog_snapshot(url) == before
    assert_in_step(supabase_cli.migration_list(cli_url))


def test_migrate_takes_over_a_database_the_cli_pushed_part_of(
    supabase_cli: SupabaseCli,
    fresh_database: Callable[[], tuple[str, str]],
    migrated_by_alembic: str,
) -> None:
    url, cli_url = fresh_database()
    apply_local_shim(url)
    first = MIGRATION_FILES[: max(1, len(MIGRATION_FILES) - 2)]
    assert supabase_cli.push(cli_url, first)["migrations"] == first

    # The files the CLI applied are only marked done: running them again would fail.
    upgrade_database(url)

    assert alembic_head(url) == alembic_head(migrated_by_alembic)
    assert catalog_snapshot(url) == catalog_snapshot(migrated_by_alembic)
    assert cli_history(url) == [cli_version(name) for name in MIGRATION_FILES]
    assert supabase_cli.push(cli_url)["upToDate"] is True
    assert_in_step(supabase_cli.migration_list(cli_url))


def test_migrate_records_the_cli_history_of_a_database_migrated_before_it_kept_one(
    supabase_cli: SupabaseCli, fresh_database: Callable[[], tuple[str, str]]
) -> None:
    url, cli_url = fresh_database()
    upgrade_database(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("drop schema supabase_migrations cascade")

    upgrade_database(url)

    assert cli_history(url) == [cli_version(name) for name in MIGRATION_FILES]
    assert supabase_cli.push(cli_url)["upToDate"] is True
