"""supabase/migrations/20261203000100_fair_share_storage.sql

Revision ID: 0013
"""

from alembic import op

from autopilot_api.db.migrations import apply_migration

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_migration(op.get_bind(), "20261203000100_fair_share_storage.sql")


def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only, as with the Supabase CLI")
