"""supabase/schemas (the readable current state) and supabase/migrations (how a database gets
there) build the same database: each applied to a fresh database of the test Postgres, their
catalogues compared row by row (tests/fixtures/catalogue.py)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

from autopilot_api.core.config import PROJECT_ROOT
from autopilot_api.db.migrations import apply_local_shim, sql_migrations, upgrade_database
from autopilot_api.local.dataplane import (
    LocalDataPlane,
    drop_database,
    ensure_database,
    with_database,
)
from tests.conftest import plane_info
from tests.fixtures.catalogue import SNAPSHOT, catalogue_difference, catalogue_snapshot

SCHEMAS_DIR = PROJECT_ROOT / "supabase" / "schemas"
SCHEMA_FILES = sorted(SCHEMAS_DIR.glob("*.sql"))


def apply_schema_files(url: str) -> None:
    """What `supabase db diff` builds its shadow database from: the files in name order
    (after the roles and auth schema a Supabase database has)."""
    with psycopg.connect(url, autocommit=True) as conn:
        apply_local_shim(conn)
        for path in SCHEMA_FILES:
            conn.execute(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def server_url(data_plane: LocalDataPlane) -> str:
    return with_database(plane_info(data_plane).database_url, "postgres")


@contextmanager
def fresh_database(server_url: str, purpose: str) -> Iterator[str]:
    name = f"autopilot_{purpose}_{uuid.uuid4().hex[:10]}"
    ensure_database(server_url, name)
    try:
        yield with_database(server_url, name)
    finally:
        drop_database(server_url, name)


@pytest.fixture(scope="module")
def migrated(server_url: str) -> Iterator[str]:
    with fresh_database(server_url, "migrated") as url:
        upgrade_database(url)
        yield url


@pytest.fixture(scope="module")
def declared(server_url: str) -> Iterator[str]:
    with fresh_database(server_url, "declared") as url:
        apply_schema_files(url)
        yield url


def test_schema_files_and_migrations_build_the_same_catalogue(migrated: str, declared: str) -> None:
    from_migrations = catalogue_snapshot(migrated)
    from_schema_files = catalogue_snapshot(declared)

    functions = [row[1] for row in from_migrations if row[0] == "function"]
    assert any(name.startswith("autopilot.claim_session(") for name in functions)
    assert any(name.startswith("autopilot_private.merge_entries(") for name in functions)
    assert catalogue_difference(from_migrations, from_schema_files) == {
        "only_left": [],
        "only_right": [],
    }


# What the comparison must see: each changes one thing of the database the schema files
# built, in a transaction rolled back afterwards.
ONE_CHANGE = {
    "a function's body": (
        "create or replace function autopilot.ping() returns text language sql stable"
        " set search_path = '' as $$ select 'ko'::text $$"
    ),
    "a function's search_path": "alter function autopilot.ping() set search_path = public",
    "security definer": "alter function autopilot.ping() security definer",
    "a grant to anon": "grant execute on function autopilot.ping() to anon",
    "a private function's grant": (
        "grant execute on function autopilot_private.fail(integer, text, text, jsonb) to public"
    ),
    "a policy": (
        "alter policy profiles_owner_select on autopilot.profiles using (id = auth.uid())"
    ),
    "row level security": "alter table autopilot.sessions disable row level security",
    "a column default": ("alter table autopilot.sessions alter column version set default 2"),
    "an index": "drop index autopilot.sessions_last_seen_idx",
    "a trigger": "alter table autopilot.session_events disable trigger session_events_append_only",
}


@pytest.mark.parametrize("change", ONE_CHANGE.values(), ids=ONE_CHANGE.keys())
def test_the_comparison_sees_any_one_change(migrated: str, declared: str, change: str) -> None:
    reference = catalogue_snapshot(migrated)
    with psycopg.connect(declared) as conn:
        conn.execute(change)  # type: ignore[arg-type]
        changed = [tuple(str(value) for value in row) for row in conn.execute(SNAPSHOT)]
        conn.rollback()
    difference = catalogue_difference(reference, changed)
    assert difference["only_left"] or difference["only_right"], change
    assert catalogue_snapshot(declared) == reference  # rolled back


def test_each_function_is_defined_once_with_its_search_path_on_the_definition() -> None:
    definitions: dict[str, list[str]] = {}
    for path in SCHEMA_FILES:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(?im)^\s*alter\s+function", text), path.name
        for match in re.finditer(
            r"(?is)create\s+(?:or\s+replace\s+)?function\s+([\w.]+)\s*\((.*?)\$\$", text
        ):
            definitions.setdefault(match.group(1), []).append(path.name)
            assert "set search_path = ''" in match.group(2), match.group(1)
    assert len(definitions) > 40
    assert {name: files for name, files in definitions.items() if len(files) > 1} == {}


def test_the_migrations_are_named_as_the_supabase_cli_expects() -> None:
    migrations = sql_migrations()
    assert migrations[0].filename == "20261201000000_baseline.sql"
    for migration in migrations:
        assert re.fullmatch(r"\d{14}_[a-z0-9_]+\.sql", migration.filename)
