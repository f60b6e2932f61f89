"""supabase/migrations/20261122000400_one_reply_per_message.sql

Revision ID: 0010
"""

from alembic import op

from autopilot_api.db.migrations import apply_migration

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_migration(op.get_bind(), "20261122000400_one_reply_per_message.sql")


def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only, as with the Supabase CLI")
