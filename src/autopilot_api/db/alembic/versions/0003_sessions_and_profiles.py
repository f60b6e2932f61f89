"""supabase/migrations/20261120000200_sessions_and_profiles.sql

Revision ID: 0003
"""

from alembic import op

from autopilot_api.db.migrations import apply_migration

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_migration(op.get_bind(), "20261120000200_sessions_and_profiles.sql")


def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only, as with the Supabase CLI")
