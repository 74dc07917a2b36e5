"""indexes for the hot paths: claims read index entries only, the integrator finds its queue and messages

Without them a claim read every queued row (and its large columns) to sort by seq, and each
integrator batch scanned the whole inbox and audit log: O(n) work per message.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE = sa.text("state IN ('queued', 'sending')")
UNSEQUENCED = sa.text("leaf_index IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_index("ix_outbox_due")
        batch.drop_index("ix_outbox_conversation")
        batch.create_index("ix_outbox_due", ["state", "seq", "next_attempt_at", "lease_until", "exp", "peer",
                                             "conversation"])
        batch.create_index("ix_outbox_conversation_active", ["conversation", "seq"], sqlite_where=ACTIVE,
                           postgresql_where=ACTIVE)
    with op.batch_alter_table("inbox") as batch:
        batch.create_index("ix_inbox_entry", ["entry_id"])
    with op.batch_alter_table("audit_entries") as batch:
        batch.create_index("ix_audit_entries_unsequenced", ["id"], sqlite_where=UNSEQUENCED,
                           postgresql_where=UNSEQUENCED)


def downgrade() -> None:
    with op.batch_alter_table("audit_entries") as batch:
        batch.drop_index("ix_audit_entries_unsequenced")
    with op.batch_alter_table("inbox") as batch:
        batch.drop_index("ix_inbox_entry")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_index("ix_outbox_conversation_active")
        batch.drop_index("ix_outbox_due")
        batch.create_index("ix_outbox_due", ["state", "next_attempt_at"])
        batch.create_index("ix_outbox_conversation", ["conversation", "seq"])
