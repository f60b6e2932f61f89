"""Apply `supabase/migrations/*.sql` to any Postgres through Alembic.

The SQL files are the single source of truth (the Supabase CLI applies the same files);
each Alembic revision runs one of them, so `alembic upgrade head` migrates a plain
Postgres given by DATABASE_URL and re-running it is a no-op.

Either tool may migrate a database the other has migrated: every file applied here is
also recorded in the CLI's own history (`supabase_migrations.schema_migrations`), so a
later `supabase db push` finds it applied, and a revision whose file the CLI has already
applied is only marked done (stamped) instead of run again.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from autopilot_api.core.config import PROJECT_ROOT

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _sql_dir() -> Path:
    """The SQL files: shipped inside a built wheel, or `supabase/` of a source checkout."""
    packaged = PACKAGE_DIR / "sql"
    return packaged if (packaged / "migrations").is_dir() else PROJECT_ROOT / "supabase"


SQL_DIR = _sql_dir()
MIGRATIONS_DIR = SQL_DIR / "migrations"
LOCAL_SHIM_DIR = SQL_DIR / "local"
ALEMBIC_DIR = PACKAGE_DIR / "db" / "alembic"
VERSION_TABLE_SCHEMA = "autopilot_private"

logger = logging.getLogger(__name__)

# The Supabase CLI's migration history, as its pkg/migration/history.go creates it.
CLI_HISTORY_TABLE = "supabase_migrations.schema_migrations"
_CREATE_CLI_HISTORY = (
    "create schema if not exists supabase_migrations",
    f"create table if not exists {CLI_HISTORY_TABLE} (version text not null primary key)",
    f"alter table {CLI_HISTORY_TABLE} add column if not exists statements text[]",
    f"alter table {CLI_HISTORY_TABLE} add column if not exists name text",
)
# The CLI's migrateFilePattern: `<version>_<name>.sql`.
_CLI_FILE_NAME = re.compile(r"^([0-9]+)_(.*)\.sql$")
# How a revision names its file: apply_migration(op.get_bind(), "<file>.sql").
_REVISION_FILE = re.compile(r"""["']([0-9]+_[^"'/]*\.sql)["']""")


def sqlalchemy_url(database_url: str) -> str:
    """Use the psycopg 3 driver whatever scheme the URL was given with."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix) :]
    raise ValueError("DATABASE_URL must be a postgresql:// URL")


def _driver_connection(bind: Any) -> Any:
    # The raw psycopg connection: it runs multi-statement SQL without parsing `%`.
    return bind.connection.driver_connection


def run_sql_file(bind: Any, path: Path) -> None:
    _driver_connection(bind).execute(path.read_text(encoding="utf-8"))


def is_supabase_database(bind: Any) -> bool:
    row = (
        _driver_connection(bind)
        .execute("select exists (select 1 from pg_roles where rolname = 'supabase_admin')")
        .fetchone()
    )
    return bool(row and row[0])


def apply_local_shim(bind: Any) -> None:
    """Roles, the auth schema and default privileges, only where Supabase is absent."""
    if is_supabase_database(bind):
        return
    for path in sorted(LOCAL_SHIM_DIR.glob("*.sql")):
        run_sql_file(bind, path)


def cli_version(filename: str) -> tuple[str, str]:
    """(version, name) as the Supabase CLI derives them from a migration's file name."""
    match = _CLI_FILE_NAME.match(filename)
    if match is None:
        raise ValueError(f"{filename} is not named <version>_<name>.sql")
    return match.group(1), match.group(2)


def cli_applied_versions(conn: Any) -> set[str]:
    """The versions in the Supabase CLI's history (none when it has never run)."""
    row = conn.execute("select to_regclass(%s) is not null", (CLI_HISTORY_TABLE,)).fetchone()
    if not (row and row[0]):
        return set()
    return {version for (version,) in conn.execute(f"select version from {CLI_HISTORY_TABLE}")}


def record_in_cli_history(conn: Any, filenames: Iterable[str]) -> None:
    """Record applied files as `supabase db push` does, so that it will not apply them again."""
    for statement in _CREATE_CLI_HISTORY:
        conn.execute(statement)
    for filename in filenames:
        version, name = cli_version(filename)
        # The CLI stores the file split into statements; the whole file is one statement
        # here (`supabase migration fetch` writes them back joined by ";").
        text = (MIGRATIONS_DIR / filename).read_text(encoding="utf-8").rstrip().removesuffix(";")
        conn.execute(
            f"insert into {CLI_HISTORY_TABLE} (version, name, statements) values (%s, %s, %s)"
            " on conflict (version) do nothing",
            (version, name, [text]),
        )


def apply_migration(bind: Any, filename: str) -> None:
    """Run one file and record it for the CLI, in the revision's transaction; a file the
    CLI has applied already is skipped, so Alembic only marks the revision done."""
    conn = _driver_connection(bind)
    if cli_version(filename)[0] in cli_applied_versions(conn):
        logger.info("%s was applied by the Supabase CLI: not running it again", filename)
        return
    run_sql_file(bind, MIGRATIONS_DIR / filename)
    record_in_cli_history(conn, [filename])


def revision_files(script_dir: Any) -> list[str]:
    """The SQL file of every Alembic revision (the shim's revision has none)."""
    files: set[str] = set()
    for script in script_dir.walk_revisions():
        files.update(_REVISION_FILE.findall(Path(script.path).read_text(encoding="utf-8")))
    return sorted(files)


def upgrade_database(database_url: str, revision: str = "head") -> None:
    """`alembic upgrade head` (or up to `revision`) against the given database."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    config.attributes["database_url"] = database_url
    command.upgrade(config, revision)
    if revision != "head":
        return
    # A database migrated before the CLI history was kept has every revision applied
    # and no CLI history: record it now. No DDL when the history is complete.
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine, pool

    files = revision_files(ScriptDirectory.from_config(config))
    engine = create_engine(sqlalchemy_url(database_url), poolclass=pool.NullPool)
    try:
        with engine.begin() as connection:
            conn = _driver_connection(connection)
            recorded = cli_applied_versions(conn)
            missing = [name for name in files if cli_version(name)[0] not in recorded]
            if missing:
                record_in_cli_history(conn, missing)
    finally:
        engine.dispose()
