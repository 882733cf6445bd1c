"""cascade steps: one row per rung of a served cascade request (scores, cost, outcome label)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 06:20:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('cascade_steps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('ladder', sa.JSON(), nullable=False),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('threshold', sa.Float(), nullable=True),
    sa.Column('accepted', sa.Boolean(), nullable=False),
    sa.Column('explored', sa.Boolean(), nullable=False),
    sa.Column('cost_usd', sa.Float(), nullable=False),
    sa.Column('prompt_tokens', sa.Integer(), nullable=False),
    sa.Column('completion_tokens', sa.Integer(), nullable=False),
    sa.Column('scorer_version', sa.String(length=40), nullable=True),
    sa.Column('signals', sa.JSON(), nullable=False),
    sa.Column('correct', sa.Float(), nullable=True),
    sa.Column('label_source', sa.String(length=100), nullable=True),
    sa.Column('labeled_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('request_id', 'step', name='uq_cascade_steps_request_step')
    )
    with op.batch_alter_table('cascade_steps', schema=None) as batch_op:
        batch_op.create_index('ix_cascade_steps_created_at', ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_cascade_steps_request_id'), ['request_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('cascade_steps', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cascade_steps_request_id'))
        batch_op.drop_index('ix_cascade_steps_created_at')
    op.drop_table('cascade_steps')
