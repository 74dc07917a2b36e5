"""drop ix_audit_entries_pending: uq_audit_entries_log_index (log, leaf_index) serves every query it served

Each audit entry is written twice (inserted unsequenced, then given its leaf index), and each
write went into both indexes.  The integrator finds its queue with ix_audit_entries_unsequenced;
counts and ranges by (log, leaf_index) use the unique index.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_entries") as batch:
        batch.drop_index("ix_audit_entries_pending")


def downgrade() -> None:
    with op.batch_alter_table("audit_entries") as batch:
        batch.create_index("ix_audit_entries_pending", ["log", "leaf_index", "id"])
