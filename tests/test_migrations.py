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
