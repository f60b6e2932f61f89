"""supabase/migrations/20261120000100_autopilot_schema.sql

Revision ID: 0002
"""

from alembic import op

from autopilot_api.db.migrations import apply_migration

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_migration(op.get_bind(), "20261120000100_autopilot_schema.sql")


def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only, as with the Supabase CLI")
