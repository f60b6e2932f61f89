"""supabase/migrations/20261122000300_typed_answers.sql

Revision ID: 0009
"""

from alembic import op

from autopilot_api.db.migrations import apply_migration

revision = "0009"
# 0007 belongs to another branch of work; the lead re-chains this to "0007" on merge.
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_migration(op.get_bind(), "20261122000300_typed_answers.sql")


def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only, as with the Supabase CLI")
