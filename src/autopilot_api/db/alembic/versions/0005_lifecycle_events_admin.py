"""supabase/migrations/20261120000400_lifecycle_events_admin.sql

Revision ID: 0005
"""

from alembic import op

from autopilot_api.db.migrations import apply_migration

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_migration(op.get_bind(), "20261120000400_lifecycle_events_admin.sql")


def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only, as with the Supabase CLI")
