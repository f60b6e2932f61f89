"""supabase/migrations/20261120000300_conversations_and_messages.sql

Revision ID: 0004
"""

from alembic import op

from autopilot_api.db.migrations import apply_migration

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_migration(op.get_bind(), "20261120000300_conversations_and_messages.sql")


def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only, as with the Supabase CLI")
