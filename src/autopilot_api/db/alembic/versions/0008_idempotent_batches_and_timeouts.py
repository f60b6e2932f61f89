"""supabase/migrations/20261122000200_idempotent_batches_and_timeouts.sql

Revision ID: 0008
"""

from alembic import op

from autopilot_api.db.migrations import apply_migration

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_migration(op.get_bind(), "20261122000200_idempotent_batches_and_timeouts.sql")


def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only, as with the Supabase CLI")
