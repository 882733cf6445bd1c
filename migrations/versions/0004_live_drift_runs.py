"""live drift runs: live traffic checked against the live router's training-time reference

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 10:40:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('live_drift_runs',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('router_version', sa.String(length=40), nullable=True),
    sa.Column('window_hours', sa.Float(), nullable=False),
    sa.Column('n_requests', sa.Integer(), nullable=False),
    sa.Column('strong_share', sa.Float(), nullable=True),
    sa.Column('expected_strong_share', sa.Float(), nullable=True),
    sa.Column('drift_detected', sa.Boolean(), nullable=True),
    sa.Column('drift_share', sa.Float(), nullable=True),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('live_drift_runs', schema=None) as batch_op:
        batch_op.create_index('ix_live_drift_runs_started_at', ['started_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('live_drift_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_live_drift_runs_started_at')
    op.drop_table('live_drift_runs')
