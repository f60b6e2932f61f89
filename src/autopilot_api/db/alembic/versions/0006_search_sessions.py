"""supabase/migrations/20261120000500_search_sessions.sql

Revision ID: 0006
"""

from alembic import op

from autopilot_api.db.migrations import apply_migration

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_migration(op.get_bind(), "20261120000500_search_sessions.sql")


def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only, as with the Supabase CLI")
