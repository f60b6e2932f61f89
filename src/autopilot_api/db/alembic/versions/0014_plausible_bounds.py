"""supabase/migrations/20261203000150_plausible_bounds.sql

Revision ID: 0014
"""

from alembic import op

from autopilot_api.db.migrations import apply_migration

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_migration(op.get_bind(), "20261203000150_plausible_bounds.sql")


def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only, as with the Supabase CLI")
