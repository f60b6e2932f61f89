"""supabase/migrations/20261122000500_bounded_storage.sql

Revision ID: 0011
"""

from alembic import op

from autopilot_api.db.migrations import apply_migration

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_migration(op.get_bind(), "20261122000500_bounded_storage.sql")


def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only, as with the Supabase CLI")
