"""The scheduler: one leader among several instances on PostgreSQL (leases table), takeover after the
leader's lease expires, failing jobs recorded and retried, `--once`, and the retrain gate."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from routerops.db import session_scope
from routerops.db.models import JobRun, PreferenceLog
from routerops.orchestration.scheduler import JobSpec, LeaseLock, RouterOpsScheduler, run_job

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "monitoring"))  # "sched_jobs:..." job refs

LEASE_S = 1.5


@pytest.fixture
def pg_settings(postgres_url, tmp_path, monkeypatch):
    from routerops.db import migrate
    from routerops.settings import get_settings

    monkeypatch.setenv("ROUTEROPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ROUTEROPS_DATABASE_URL", postgres_url)
    s = get_settings()
    migrate.upgrade("head", settings=s)
    return s


def _runs(settings, job: str) -> list[JobRun]:
    with session_scope(settings) as s:
        return list(s.scalars(select(JobRun).where(JobRun.job == job).order_by(JobRun.id)))


def _wait_for(cond, timeout: float = 20.0, step: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return False


@pytest.mark.postgres
def test_two_schedulers_one_leader_then_takeover(pg_settings):
    job = f"tick-{uuid.uuid4().hex[:6]}"
    lease = f"lease-{job}"
    specs = [JobSpec(job, "sched_jobs:tick", "interval", {"seconds": 1})]
    a = RouterOpsScheduler(pg_settings, specs, lease_name=lease, lease_seconds=LEASE_S, holder="A").start()
    assert _wait_for(lambda: a.is_leader, 10)
    b = RouterOpsScheduler(pg_settings, specs, lease_name=lease, lease_seconds=LEASE_S, holder="B").start()
    try:
        assert _wait_for(lambda: len(_runs(pg_settings, job)) >= 3)
        time.sleep(1.0)
        assert not b.is_leader
        assert {r.host for r in _runs(pg_settings, job)} == {"A"}  # only the leader ran the job
        assert all(r.status == "ok" for r in _runs(pg_settings, job) if r.finished_at)

        n_before = len(_runs(pg_settings, job))
        a.stop(release=False)  # a crash: heartbeat gone, lease left to expire
        t_stop = time.monotonic()
        assert _wait_for(lambda: b.is_leader, 10)
        takeover = time.monotonic() - t_stop
        assert takeover >= LEASE_S * 0.5  # B waited for the lease to run out (it was just renewed)
        assert _wait_for(lambda: any(r.host == "B" for r in _runs(pg_settings, job)))
        runs = _runs(pg_settings, job)
        assert {r.host for r in runs[:n_before]} == {"A"} and {r.host for r in runs[n_before:]} <= {"A", "B"}
        # no overlap: nothing A-hosted started after B's first run
        first_b = min(r.started_at for r in runs if r.host == "B")
        assert all(r.started_at < first_b for r in runs if r.host == "A")
    finally:
        a.stop()
        b.stop()


@pytest.mark.postgres
def test_clean_stop_releases_the_lease_at_once(pg_settings):
    lease = f"lease-{uuid.uuid4().hex[:6]}"
    a = LeaseLock(pg_settings, lease, "A", ttl_s=60)
    b = LeaseLock(pg_settings, lease, "B", ttl_s=60)
    assert a.acquire() and a.held()
    assert not b.acquire()
    assert a.acquire()  # renewal by the holder
    a.release()
    assert b.acquire() and b.held() and not a.held()


def test_failing_job_is_recorded_and_retried_without_killing_the_scheduler(settings):
    specs = [JobSpec("boom", "sched_jobs:boom", "interval", {"seconds": 1}),
             JobSpec("tick", "sched_jobs:tick", "interval", {"seconds": 1})]
    sched = RouterOpsScheduler(settings, specs, lease_seconds=LEASE_S, holder="solo").start()
    try:
        assert _wait_for(lambda: len([r for r in _runs(settings, "boom") if r.finished_at]) >= 2)
        assert _wait_for(lambda: len(_runs(settings, "tick")) >= 2)  # the other job keeps running
    finally:
        sched.stop()
    failed = [r for r in _runs(settings, "boom") if r.finished_at]
    assert all(r.status == "failed" and "this job always fails" in r.error for r in failed)


def test_job_does_not_start_without_the_lease(settings):
    LeaseLock(settings, "L", "other", ttl_s=60).acquire()
    assert run_job("tick", "sched_jobs:tick", holder="me", lease_name="L") == "not-leader"
    assert _runs(settings, "tick") == []


def test_retrain_waits_for_enough_new_rows(settings, monkeypatch):
    from routerops.orchestration.cli import cli

    monkeypatch.setenv("ROUTEROPS_RETRAIN_MIN_NEW_ROWS", "5")
    with session_scope(settings) as s:
        for i in range(3):
            s.add(PreferenceLog(prompt=f"p{i}", prompt_hash=f"h{i}", model_a="a", model_b="b", winner="a",
                                source="test"))
    result = CliRunner().invoke(cli, ["scheduler", "--once", "retrain-router"])
    assert result.exit_code == 0, result.output
    assert "retrain-router: skipped" in result.output
    (row,) = _runs(settings, "retrain-router")
    assert row.details["new_rows"] == 3 and row.details["min_new_rows"] == 5

    bad = CliRunner().invoke(cli, ["scheduler", "--once", "nope"])
    assert bad.exit_code != 0 and "unknown job 'nope'" in bad.output


def test_probe_job_with_too_little_data_is_skipped_in_one_line(settings, monkeypatch, caplog):
    """A fresh install (preference rows imported, no logged answers): skipped, no ERROR, no traceback."""
    import logging

    monkeypatch.setenv("ROUTEROPS_RETRAIN_MIN_NEW_ROWS", "1")
    with session_scope(settings) as s:
        s.add(PreferenceLog(prompt="p", prompt_hash="h", model_a="a", model_b="b", winner="a", source="test"))
    caplog.set_level(logging.INFO)
    why = "only 0 training examples: too few to train a probe"
    assert run_job("retrain-probes", "routerops.orchestration.scheduler:retrain_probes_job") == f"skipped ({why})"
    (row,) = _runs(settings, "retrain-probes")
    assert row.error is None and "only 0 training examples" in row.details["reason"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert [r.getMessage() for r in caplog.records if "training examples" in r.getMessage()] == [
        f"job retrain-probes finished: skipped ({why})"]


def test_sigterm_stops_the_scheduler_process_cleanly(settings):
    """A real `routerops scheduler` process: it takes the lease, stores its jobs in apscheduler_jobs,
    and on SIGTERM exits 0 and releases the lease (the next instance need not wait for expiry)."""
    import os
    import signal
    import subprocess

    from sqlalchemy import text

    from routerops.db import get_engine
    from routerops.orchestration.scheduler import lease_holder

    proc = subprocess.Popen([sys.executable, "-m", "routerops.orchestration.cli", "scheduler"], env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert _wait_for(lambda: lease_holder(settings) is not None, 60), "scheduler never took the lease"

        def stored_jobs() -> set[str]:
            with get_engine(settings=settings).connect() as conn:
                try:
                    return set(conn.execute(text("SELECT id FROM apscheduler_jobs")).scalars())
                except Exception:  # noqa: BLE001 - table not created yet
                    return set()

        assert _wait_for(lambda: stored_jobs() == {"retrain-router", "retrain-probes", "refit-cascade", "judge-exploration",
                                                    "monitor", "live-drift"}, 30)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert lease_holder(settings) is None


def test_retrain_skips_rows_the_registered_version_was_trained_on(settings, monkeypatch):
    """`routerops train router` registered version 1 (and compared it: the version's description);
    the nightly retrain then has nothing new to learn from and says so in one line."""
    from pathlib import Path

    from routerops import registry
    from routerops.importers.core import import_file
    from routerops.orchestration.cli import cli

    prefs = Path(__file__).resolve().parents[1] / "fixtures" / "router" / "prefs.jsonl"
    assert import_file(settings, "native", prefs, progress=False).accepted == 220
    monkeypatch.setenv("ROUTEROPS_RETRAIN_MIN_NEW_ROWS", "1")
    monkeypatch.setenv("ROUTEROPS_ROUTER_STRONG_NAME", "gpt-4-1106-preview")
    monkeypatch.setenv("ROUTEROPS_ROUTER_WEAK_NAME", "mixtral-8x7b-instruct-v0.1")
    monkeypatch.setenv("ROUTEROPS_GOLDEN_SET", str(settings.data_dir / "no-golden.jsonl"))
    trained = CliRunner().invoke(cli, ["train", "router", "--val-fraction", "0.3", "--no-progress"])
    assert trained.exit_code == 0, trained.output
    assert "challenger v1 vs champion (none yet): no-champion" in trained.output
    version = registry.client(settings).get_model_version("mf-router", "1")
    assert version.tags["routerops.data_max_preference_id"] == "220"
    assert version.description.startswith("# Challenger v1 vs champion (none)")
    assert "| holdout |" in version.description and "| apgr |" in version.description  # newest judgements

    result = CliRunner().invoke(cli, ["scheduler", "--once", "retrain-router"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "retrain-router: skipped (no new rows since version 1 of mf-router)"
    (row,) = _runs(settings, "retrain-router")
    assert row.status == "skipped" and row.details["new_rows"] == 0 and row.details["since_version"] == "1"
    assert [str(v.version) for v in registry.client(settings).search_model_versions("name = 'mf-router'")] == ["1"]
