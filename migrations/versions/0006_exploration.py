"""exploration pairs: the other model's answer to a share of routed requests, judged for OPE and retraining

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 04:40:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('exploration_pairs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('prompt', sa.Text(), nullable=True),
    sa.Column('prompt_hash', sa.String(length=64), nullable=False),
    sa.Column('category', sa.String(length=80), nullable=True),
    sa.Column('router_version', sa.String(length=40), nullable=True),
    sa.Column('served_role', sa.String(length=8), nullable=False),
    sa.Column('weak_model', sa.String(length=200), nullable=False),
    sa.Column('strong_model', sa.String(length=200), nullable=False),
    sa.Column('weak_answer', sa.Text(), nullable=True),
    sa.Column('strong_answer', sa.Text(), nullable=True),
    sa.Column('p_strong_wins', sa.Float(), nullable=True),
    sa.Column('alpha', sa.Float(), nullable=True),
    sa.Column('propensity', sa.Float(), nullable=False),
    sa.Column('explore_propensity', sa.Float(), nullable=False),
    sa.Column('cost_usd', sa.Float(), nullable=False),
    sa.Column('latency_ms', sa.Float(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('winner', sa.String(length=8), nullable=True),
    sa.Column('judge', sa.String(length=200), nullable=True),
    sa.Column('judged_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('preference_id', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('request_id'),
    )
    op.create_index('ix_exploration_pairs_created_at', 'exploration_pairs', ['created_at'], unique=False)
    op.create_index('ix_exploration_pairs_status', 'exploration_pairs', ['status'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_exploration_pairs_status', table_name='exploration_pairs')
    op.drop_index('ix_exploration_pairs_created_at', table_name='exploration_pairs')
    op.drop_table('exploration_pairs')
