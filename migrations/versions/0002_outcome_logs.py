"""outcome logs (per-answer scores) and a category on preference rows

Revision ID: 0002
Revises: 0001
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('outcome_logs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('prompt', sa.Text(), nullable=False),
    sa.Column('prompt_hash', sa.String(length=64), nullable=False),
    sa.Column('prompt_id', sa.String(length=200), nullable=True),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('source', sa.String(length=80), nullable=False),
    sa.Column('category', sa.String(length=80), nullable=True),
    sa.Column('answer', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('import_batch_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['import_batch_id'], ['import_batches.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('outcome_logs', schema=None) as batch_op:
        batch_op.create_index('ix_outcome_logs_created_at', ['created_at'], unique=False)
        batch_op.create_index('ix_outcome_logs_prompt_hash', ['prompt_hash'], unique=False)
        batch_op.create_index('ix_outcome_logs_source', ['source'], unique=False)
    with op.batch_alter_table('preference_logs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('category', sa.String(length=80), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('preference_logs', schema=None) as batch_op:
        batch_op.drop_column('category')
    with op.batch_alter_table('outcome_logs', schema=None) as batch_op:
        batch_op.drop_index('ix_outcome_logs_source')
        batch_op.drop_index('ix_outcome_logs_prompt_hash')
        batch_op.drop_index('ix_outcome_logs_created_at')
    op.drop_table('outcome_logs')
