"""Alembic migrations up and down, on SQLite and on PostgreSQL; models match the migrations."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from routerops.db import migrate
from routerops.db.models import Base

EXPECTED_TABLES = {
    "models", "import_batches", "preference_logs", "embedding_cache", "request_logs", "api_keys",
    "alpha_history", "monitor_runs", "alerts", "job_runs", "serving_state", "leases", "cascade_steps",
    "outcome_logs", "live_drift_runs", "exploration_pairs",
}
# APScheduler's job store creates its own table, outside Alembic (orchestration/scheduler.py); a
# scheduler test that ran earlier on the session's PostgreSQL database may have left it there.
NOT_OURS = {"apscheduler_jobs"}


def _roundtrip(url: str) -> None:
    migrate.upgrade("head", url=url)
    engine = create_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert EXPECTED_TABLES <= tables
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={
                "include_name": lambda name, type_, _parent: not (type_ == "table" and name in NOT_OURS)})
            diff = compare_metadata(ctx, Base.metadata)
        assert diff == [], f"models and migrations disagree: {diff}"
        migrate.downgrade("base", url=url)
        assert set(inspect(engine).get_table_names()) - NOT_OURS <= {"alembic_version"}
        migrate.upgrade("head", url=url)  # and back up again: downgrade left nothing behind
        assert EXPECTED_TABLES <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migrations_sqlite(tmp_path):
    _roundtrip(f"sqlite:///{tmp_path / 'm.db'}")


@pytest.mark.postgres
def test_migrations_postgres(postgres_url):
    _roundtrip(postgres_url)
    migrate.downgrade("base", url=postgres_url)


def test_cli_db_upgrade(settings, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from routerops.orchestration.cli import cli

    monkeypatch.setenv("ROUTEROPS_DATA_DIR", str(tmp_path / "fresh"))
    result = CliRunner().invoke(cli, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    engine = create_engine(f"sqlite:///{tmp_path / 'fresh' / 'routerops.db'}")
    assert EXPECTED_TABLES <= set(inspect(engine).get_table_names())
    engine.dispose()


def _feedback_votes_deduplicated(url: str) -> None:
    """0005: repeated feedback votes of one key on one request (the poisoning of issue 26) keep only
    the newest, which gets its key; other rows are untouched."""
    from sqlalchemy import text

    migrate.downgrade("base", url=url)
    migrate.upgrade("0004", url=url)
    engine = create_engine(url)
    try:
        row = ("INSERT INTO preference_logs (prompt, prompt_hash, model_a, model_b, winner, source, judge, "
               "request_id, created_at) VALUES ('p', 'h', 'w', 's', :winner, :source, :judge, :rid, "
               "CURRENT_TIMESTAMP)")
        with engine.begin() as conn:
            for winner, source, judge, rid in (("b", "feedback", "user:alice", "r1"), ("b", "feedback", "user:alice", "r1"),
                                               ("a", "feedback", "user:alice", "r1"), ("b", "feedback", "user:bob", "r1"),
                                               ("a", "native", None, None), ("a", "native", None, None)):
                conn.execute(text(row), {"winner": winner, "source": source, "judge": judge, "rid": rid})
        migrate.upgrade("head", url=url)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, winner, source, feedback_key FROM preference_logs ORDER BY id")).all()
        assert [(r.winner, r.source, r.feedback_key) for r in rows] == [
            ("a", "feedback", "alice"), ("b", "feedback", "bob"), ("a", "native", None), ("a", "native", None)]
    finally:
        engine.dispose()
        migrate.downgrade("base", url=url)


def test_feedback_votes_deduplicated_sqlite(tmp_path):
    _feedback_votes_deduplicated(f"sqlite:///{tmp_path / 'f.db'}")


@pytest.mark.postgres
def test_feedback_votes_deduplicated_postgres(postgres_url):
    _feedback_votes_deduplicated(postgres_url)
