"""Apply `supabase/migrations/*.sql` to any Postgres through Alembic.

The SQL files are the single source of truth (the Supabase CLI applies the same files);
each Alembic revision runs one of them, so `alembic upgrade head` migrates a plain
Postgres given by DATABASE_URL and re-running it is a no-op.
"""

from __future__ import annotations

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


def apply_migration(bind: Any, filename: str) -> None:
    run_sql_file(bind, MIGRATIONS_DIR / filename)


def upgrade_database(database_url: str, revision: str = "head") -> None:
    """`alembic upgrade head` (or up to `revision`) against the given database."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    config.attributes["database_url"] = database_url
    command.upgrade(config, revision)
