"""feedback votes: one per (request, key), the last one standing

preference_logs.feedback_key names the API key whose vote a feedback row is; a unique index on
(request_id, feedback_key) makes a repeated vote replace the earlier one. Existing feedback rows get
their key from the judge ("user:<key name>"); of repeated votes only the newest is kept (the older
ones are the duplicates this revision exists to stop).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 04:40:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('preference_logs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('feedback_key', sa.String(length=100), nullable=True))
    op.execute(
        "UPDATE preference_logs SET feedback_key = substr(judge, 6) "
        "WHERE source = 'feedback' AND judge LIKE 'user:%' AND request_id IS NOT NULL AND id = ("
        "SELECT max(p2.id) FROM preference_logs p2 WHERE p2.source = 'feedback' "
        "AND p2.request_id = preference_logs.request_id AND p2.judge = preference_logs.judge)")
    op.execute("DELETE FROM preference_logs WHERE source = 'feedback' AND judge LIKE 'user:%' "
               "AND request_id IS NOT NULL AND feedback_key IS NULL")
    with op.batch_alter_table('preference_logs', schema=None) as batch_op:
        batch_op.create_index('uq_preference_logs_feedback_vote', ['request_id', 'feedback_key'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('preference_logs', schema=None) as batch_op:
        batch_op.drop_index('uq_preference_logs_feedback_vote')
        batch_op.drop_column('feedback_key')
