"""supabase/migrations/20261122000600_event_stream_cookie.sql

Revision ID: 0012
"""

from alembic import op

from autopilot_api.db.migrations import apply_migration

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_migration(op.get_bind(), "20261122000600_event_stream_cookie.sql")


def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only, as with the Supabase CLI")
