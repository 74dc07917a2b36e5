"""audit logs auditors can trust: peers' logs witnessed, redelivery after a restore, settings seen

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-29 12:41:16.433481
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('audit_peer_log_failures',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('peer', sa.String(length=24), nullable=False),
    sa.Column('at', sa.BigInteger(), nullable=False),
    sa.Column('held_tree_size', sa.BigInteger(), nullable=False),
    sa.Column('held_root', sa.String(length=64), nullable=False),
    sa.Column('held_evidence', sa.LargeBinary(), nullable=False),
    sa.Column('received_tree_size', sa.BigInteger(), nullable=False),
    sa.Column('received_root', sa.String(length=64), nullable=False),
    sa.Column('received_evidence', sa.LargeBinary(), nullable=False),
    sa.Column('proof', sa.Text(), nullable=True),
    sa.Column('detail', sa.String(length=500), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('audit_peer_log_failures', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_peer_log_failures_peer'), ['peer'], unique=False)

    op.create_table('audit_peer_logs',
    sa.Column('peer', sa.String(length=24), nullable=False),
    sa.Column('tree_size', sa.BigInteger(), nullable=True),
    sa.Column('root', sa.String(length=64), nullable=True),
    sa.Column('evidence', sa.LargeBinary(), nullable=True),
    sa.Column('verified_at', sa.BigInteger(), nullable=True),
    sa.Column('pending_tree_size', sa.BigInteger(), nullable=True),
    sa.Column('pending_root', sa.String(length=64), nullable=True),
    sa.Column('pending_evidence', sa.LargeBinary(), nullable=True),
    sa.Column('checked_at', sa.BigInteger(), nullable=True),
    sa.Column('polled_at', sa.BigInteger(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('status_detail', sa.String(length=500), nullable=True),
    sa.Column('status_at', sa.BigInteger(), nullable=True),
    sa.Column('restored_after', sa.BigInteger(), nullable=True),
    sa.Column('restored_at', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('peer')
    )
    op.create_table('audit_redeliveries',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('peer', sa.String(length=24), nullable=False),
    sa.Column('after_tree_size', sa.BigInteger(), nullable=False),
    sa.Column('request_jws', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.String(length=200), nullable=True),
    sa.Column('done_at', sa.BigInteger(), nullable=True),
    sa.Column('requeued', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('audit_settings_seen',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )


def downgrade() -> None:
    op.drop_table('audit_settings_seen')
    op.drop_table('audit_redeliveries')
    op.drop_table('audit_peer_logs')
    with op.batch_alter_table('audit_peer_log_failures', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_peer_log_failures_peer'))

    op.drop_table('audit_peer_log_failures')
