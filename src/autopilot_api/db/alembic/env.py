"""Alembic environment: one connection to DATABASE_URL, version table kept private, and
the revisions derived from supabase/migrations/*.sql (see autopilot_api.db.migrations)."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool, text

from autopilot_api.db.migrations import VERSION_TABLE_SCHEMA, revision_map, sqlalchemy_url

config = context.config
# The SQL files are the revisions: there is no versions/ folder to read.
context.script.revision_map = revision_map()


def _database_url() -> str:
    url = config.attributes.get("database_url") or os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("DATABASE_URL is not set: tell Alembic which Postgres to migrate")
    return sqlalchemy_url(str(url))


def run_migrations_online() -> None:
    engine = create_engine(_database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        connection.execute(text(f"create schema if not exists {VERSION_TABLE_SCHEMA}"))
        connection.commit()
        context.configure(
            connection=connection,
            version_table_schema=VERSION_TABLE_SCHEMA,
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations(applied=config.attributes.get("applied"))
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline mode is not supported: the SQL files are the offline form")
run_migrations_online()
