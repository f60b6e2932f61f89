"""`autopilot-api migrate`: Alembic applying `supabase/migrations/*.sql`, in step with the
Supabase CLI.

The SQL files are the migrations, as the Supabase CLI reads them (`supabase db push`); there
is no Alembic revision script to write. Each file is one Alembic revision, derived here from
its name: the revision id is the file's CLI version (`20261201000000_baseline.sql` is
revision `20261201000000`) and its parent the file before it. So Alembic's version table
(`autopilot_private.alembic_version`) says which file a database is at, `alembic upgrade
head` (alembic.ini) and `migrate` run the same code, and adding a migration is adding a file.

Either tool may migrate a database the other has migrated: every file applied here is also
recorded in the CLI's own history (`supabase_migrations.schema_migrations`), in the same
transaction, so a later `db push` finds it applied; a file the CLI has applied already is
not run again, only marked done in Alembic's table.
"""

from __future__ import annotations

import logging
import re
import types
from dataclasses import dataclass
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


class MigrationError(RuntimeError):
    """A database the migrations cannot bring up to date, said in one line."""


@dataclass(frozen=True)
class SqlMigration:
    """One file of supabase/migrations, named as the Supabase CLI expects."""

    path: Path
    version: str
    name: str

    @property
    def filename(self) -> str:
        return self.path.name


def cli_version(filename: str) -> tuple[str, str]:
    """(version, name) as the Supabase CLI derives them from a migration's file name."""
    match = _CLI_FILE_NAME.match(filename)
    if match is None:
        raise ValueError(f"{filename} is not named <version>_<name>.sql")
    return match.group(1), match.group(2)


def sql_migrations(directory: Path | None = None) -> list[SqlMigration]:
    """The migration files in the order both tools apply them (by file name, as the CLI
    lists them)."""
    found = []
    for path in sorted((directory or MIGRATIONS_DIR).glob("*.sql")):
        try:
            version, name = cli_version(path.name)
        except ValueError as exc:
            raise MigrationError(f"{exc} (in {path.parent}): rename it") from exc
        found.append(SqlMigration(path=path, version=version, name=name))
    versions = [migration.version for migration in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two files in {directory or MIGRATIONS_DIR} share a version")
    return found


def sqlalchemy_url(database_url: str) -> str:
    """Use the psycopg 3 driver whatever scheme the URL was given with."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix) :]
    raise ValueError("DATABASE_URL must be a postgresql:// URL")


def is_supabase_database(conn: Any) -> bool:
    row = conn.execute(
        "select exists (select 1 from pg_roles where rolname = 'supabase_admin')"
    ).fetchone()
    return bool(row and row[0])


def apply_local_shim(conn: Any) -> None:
    """Roles, the auth schema and default privileges, only where Supabase is absent."""
    if is_supabase_database(conn):
        return
    for path in sorted(LOCAL_SHIM_DIR.glob("*.sql")):
        conn.execute(path.read_text(encoding="utf-8"))


def cli_applied_versions(conn: Any) -> set[str]:
    """The versions in the Supabase CLI's history (none when it has never run)."""
    row = conn.execute("select to_regclass(%s) is not null", (CLI_HISTORY_TABLE,)).fetchone()
    if not (row and row[0]):
        return set()
    return {version for (version,) in conn.execute(f"select version from {CLI_HISTORY_TABLE}")}


def record_in_cli_history(conn: Any, migration: SqlMigration) -> None:
    """Record an applied file as `supabase db push` does, so that it will not apply it again."""
    for statement in _CREATE_CLI_HISTORY:
        conn.execute(statement)
    # The CLI stores the file split into statements; the whole file is one statement here
    # (`supabase migration fetch` writes them back joined by ";").
    text = migration.path.read_text(encoding="utf-8").rstrip().removesuffix(";")
    conn.execute(
        f"insert into {CLI_HISTORY_TABLE} (version, name, statements) values (%s, %s, %s)"
        " on conflict (version) do nothing",
        (migration.version, migration.name, [text]),
    )


def _apply(migration: SqlMigration, *, first: bool, applied: list[str] | None = None) -> None:
    """A revision's upgrade: run the file and record it for the CLI, in the revision's
    transaction; a file the CLI has applied already is skipped (Alembic only marks it done)."""
    from alembic import op

    # The raw psycopg connection: it runs multi-statement SQL without parsing `%`.
    conn: Any = op.get_bind().connection.driver_connection
    if migration.version in cli_applied_versions(conn):
        logger.info("%s was applied by the Supabase CLI: not running it again", migration.filename)
        return
    if first:
        apply_local_shim(conn)
    conn.execute(migration.path.read_text(encoding="utf-8"))
    record_in_cli_history(conn, migration)
    if applied is not None:
        applied.append(migration.filename)


def revision_map() -> Any:
    """Alembic's revisions, one per SQL file: what env.py hands Alembic instead of the
    revision scripts a `versions/` folder would hold."""
    from alembic.script import Script
    from alembic.script.revision import RevisionMap

    def load() -> Any:
        parent = None
        for index, migration in enumerate(sql_migrations()):

            def upgrade(
                migration: SqlMigration = migration, first: bool = index == 0, **kw: Any
            ) -> None:
                _apply(migration, first=first, applied=kw.get("applied"))

            def downgrade(**_: Any) -> None:
                raise NotImplementedError("migrations are forward-only, as with the Supabase CLI")

            module = types.ModuleType(f"autopilot_api_migration_{migration.version}")
            module.__doc__ = f"supabase/migrations/{migration.filename}"
            module.down_revision = parent  # type: ignore[attr-defined]
            module.upgrade = upgrade  # type: ignore[attr-defined]
            module.downgrade = downgrade  # type: ignore[attr-defined]
            yield Script(module, migration.version, migration.path)
            parent = migration.version

    return RevisionMap(load)


def upgrade_database(database_url: str, revision: str = "head") -> list[str]:
    """`alembic upgrade head` (or up to `revision`, a file's version) against the given
    database. Returns the files it ran, in order (none: nothing was pending)."""
    from alembic import command
    from alembic.config import Config
    from alembic.util import CommandError

    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    config.attributes["database_url"] = database_url
    applied: list[str] = []
    config.attributes["applied"] = applied
    try:
        command.upgrade(config, revision)
    except CommandError as exc:
        if "Can't locate revision" not in str(exc):
            raise MigrationError(f"cannot migrate: {exc}") from exc
        # The database is at a revision no file here has (before the squash into the
        # baseline, revisions were numbered 0001, 0002...).
        raise MigrationError(
            f"cannot migrate: {exc}; the database was migrated by another set of "
            "supabase/migrations: recreate it (a local one: delete LOCAL_DATA_DIR, .local/)"
        ) from exc
    return applied
