"""PostgreSQL: envelopes stored without compression (STORAGE EXTERNAL)

An envelope is encrypted: compressing it never succeeds, yet every insert of a row over ~2 KB
made PostgreSQL try (pglz) before moving the envelope out of line. Measured on this machine:
an outbox-like row's insert 128 -> 87 us, its insert and two state updates 262 -> 239 us.
SQLite stores blobs as they are: nothing to do there.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENVELOPES = (("outbox", "envelope"), ("inbox", "envelope"), ("inbox_pending", "envelope"))


def _storage(mode: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in ENVELOPES:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STORAGE {mode}")


def upgrade() -> None:
    _storage("EXTERNAL")


def downgrade() -> None:
    _storage("EXTENDED")
