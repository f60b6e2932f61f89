"""What plain Postgres lacks and Supabase has (skipped on a Supabase database).

Revision ID: 0001
"""

from alembic import op

from autopilot_api.db.migrations import apply_local_shim

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_local_shim(op.get_bind())


def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only, as with the Supabase CLI")
