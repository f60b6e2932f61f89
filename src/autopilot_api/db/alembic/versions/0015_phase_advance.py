"""supabase/migrations/20261203000300_phase_advance.sql

Revision ID: 0015
"""

from alembic import op

from autopilot_api.db.migrations import apply_migration

revision = "0015"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_migration(op.get_bind(), "20261203000300_phase_advance.sql")


def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only, as with the Supabase CLI")
