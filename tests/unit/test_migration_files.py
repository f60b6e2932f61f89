"""The migration files as `migrate` reads them: one Alembic revision per file, in the
Supabase CLI's order, under the CLI's version."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopilot_api.db.migrations import MigrationError, revision_map, sql_migrations


def test_files_are_read_in_name_order_with_the_clis_version_and_name(tmp_path: Path) -> None:
    for name in ("20261203000300_phase_advance.sql", "20261201000000_baseline.sql"):
        (tmp_path / name).write_text("select 1;")
    (tmp_path / "README.md").write_text("not a migration")

    migrations = sql_migrations(tmp_path)

    assert [(m.version, m.name) for m in migrations] == [
        ("20261201000000", "baseline"),
        ("20261203000300", "phase_advance"),
    ]


def test_a_misnamed_or_twice_versioned_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "baseline.sql").write_text("select 1;")
    with pytest.raises(MigrationError, match="baseline.sql is not named"):
        sql_migrations(tmp_path)
    (tmp_path / "baseline.sql").unlink()
    (tmp_path / "20261201000000_a.sql").write_text("select 1;")
    (tmp_path / "20261201000000_b.sql").write_text("select 1;")
    with pytest.raises(MigrationError, match="share a version"):
        sql_migrations(tmp_path)


def test_each_file_of_supabase_migrations_is_a_revision_after_the_one_before() -> None:
    revisions = revision_map()
    files = sql_migrations()
    assert [revisions.get_revision(m.version).doc for m in files] == [
        f"supabase/migrations/{m.filename}" for m in files
    ]
    parents = [revisions.get_revision(m.version).down_revision for m in files]
    assert parents == [None, *(m.version for m in files[:-1])]
    assert revisions.heads == (files[-1].version,)
