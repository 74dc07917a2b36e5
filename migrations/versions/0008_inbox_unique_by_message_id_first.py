"""inbox: the unique key (sender, message_id) becomes (message_id, sender)

Every look-up of a received message by its id alone (the local API's `GET /api/v1/inbox/{id}`,
`comity attachment get`, `comity evidence export`, a peer's chunk for a message already stored)
read the whole inbox: no index began with message_id. The same columns in the other order serve
those and the (sender, message_id) look-ups the receiver makes, with no further index to write on
each message received. On SQLite the table is copied once (batch mode).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("inbox") as batch:
        batch.drop_constraint("uq_inbox_sender_id", type_="unique")
        batch.create_unique_constraint("uq_inbox_id_sender", ["message_id", "sender"])


def downgrade() -> None:
    with op.batch_alter_table("inbox") as batch:
        batch.drop_constraint("uq_inbox_id_sender", type_="unique")
        batch.create_unique_constraint("uq_inbox_sender_id", ["sender", "message_id"])
