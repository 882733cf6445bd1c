"""Jobs killed midway (SIGKILL: no cleanup runs) leave nothing half-written, and the next run succeeds.

Each job runs as a real `routerops` subprocess on the test's stores; ROUTEROPS_DEBUG_PAUSE_AT stops it
at a named checkpoint (routerops/checkpoint.py) and writes a marker file, then the test kills it.
- training: killed before the model is logged, and between the registry write and the challenger
  alias: no version appears in the first case, a complete one (all its tags) in the second; the
  dead runs end KILLED in MLflow and the next training registers the challenger;
- monitor (as the scheduler runs it): killed inside its final transaction: no "ok" row, no alert, no
  alpha change; killed while logging to MLflow: its outcome stands, its MLflow run is left RUNNING;
  the next run marks the dead monitor run and job runs interrupted, the dead MLflow run KILLED, and
  records itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FIXTURES, clean_env
from sqlalchemy import func, select

PREFS = FIXTURES / "router" / "prefs.jsonl"
NO_GAP = FIXTURES / "monitoring" / "no_gap"


def _env(settings, extra: dict[str, str]) -> dict[str, str]:  # noqa: ANN001
    base = clean_env()
    return base | {"ROUTEROPS_DATA_DIR": str(settings.data_dir), "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"],
                   "ROUTEROPS_DATABASE_URL": settings.resolved_database_url} | extra


def _run(env: dict[str, str], args: list[str], cwd: Path, timeout_s: float = 300) -> str:
    proc = subprocess.run([sys.executable, "-m", "routerops.orchestration.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout_s)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def _kill_at(env: dict[str, str], args: list[str], point: str, tmp: Path, timeout_s: float = 300) -> None:
    """Start the job, wait until it reaches `point`, SIGKILL it there."""
    marker = tmp / f"paused-{point}"
    log = tmp / f"{point}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "routerops.orchestration.cli", *args], cwd=tmp, stdout=out,
                                stderr=subprocess.STDOUT,
                                env=env | {"ROUTEROPS_DEBUG_PAUSE_AT": point, "ROUTEROPS_DEBUG_PAUSE_MARKER": str(marker)})
    try:
        deadline = time.monotonic() + timeout_s
        while not marker.exists():
            assert proc.poll() is None, f"job ended ({proc.returncode}) before {point}: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"job did not reach {point}: {log.read_text()[-3000:]}"
            time.sleep(0.2)
        assert marker.read_text().split() == [str(proc.pid), point]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture
def train_env(settings, static_embedder_dir: Path, tmp_path: Path) -> dict[str, str]:  # noqa: ANN001
    """The router fixture's preferences in the store; training on the (fast) static embedder."""
    from routerops.importers.core import import_file
    from routerops.settings import Settings

    own = tmp_path / "embedder"
    shutil.copytree(static_embedder_dir, own)
    extra = {"ROUTEROPS_EMBEDDING_BACKEND": "static", "ROUTEROPS_EMBEDDING_STATIC_PATH": str(own)}
    import_file(Settings(data_dir=settings.data_dir), "native", PREFS, progress=False)
    return _env(settings, extra)


def test_training_killed_midway_leaves_no_half_registered_version(settings, train_env, tmp_path) -> None:  # noqa: ANN001
    from routerops import registry

    args = ["train", "router", "--max-iter", "40", "--val-fraction", "0.3", "--no-progress"]
    client = registry.client(settings)

    def versions() -> list:
        return client.search_model_versions(f"name = '{settings.router_model_name}'")

    _kill_at(train_env, args, "logging-model", tmp_path)  # everything computed, nothing registered
    assert versions() == []

    _kill_at(train_env, args, "registered", tmp_path)  # the version is written, the alias not yet
    (v1,) = versions()
    # the one registry write carried every tag: the version is complete, just not the challenger
    assert {"formulation", "embedder", "calibration_pair", "alpha_at_share_0.3", "routerops.run_id"} <= set(v1.tags)
    assert registry.version_by_alias(settings.router_model_name, registry.CHALLENGER, settings) is None

    out = _run(train_env, args, tmp_path)
    assert f"registered: {settings.router_model_name} version 2 (alias challenger)" in out
    assert registry.version_by_alias(settings.router_model_name, registry.CHALLENGER, settings).version == "2"
    assert {str(v.version) for v in versions()} == {"1", "2"}
    exp = client.get_experiment_by_name(settings.mlflow_experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`routerops.kind` = 'mf-router'")
    statuses = sorted(r.info.status for r in runs)
    assert statuses == ["FINISHED", "KILLED", "KILLED"], statuses  # the dead runs no longer look live


def test_monitor_killed_midway_records_nothing_half_done(settings, tmp_path) -> None:  # noqa: ANN001
    from routerops.db import session_scope
    from routerops.db.models import Alert, AlphaChange, JobRun, MonitorRun

    outputs = str(NO_GAP / "outputs.jsonl")
    env = _env(settings, {f"ROUTEROPS_{r}_{k}": v for r in ("WEAK", "STRONG") for k, v in
                          (("BACKEND", "replay"), ("MODEL", f"{r.lower()}-fixture"), ("REPLAY_FILE", outputs))}
               | {"ROUTEROPS_GOLDEN_SET": str(NO_GAP / "golden.jsonl")})
    args = ["scheduler", "--once", "monitor"]  # as the scheduler runs it: a job_runs row too

    def counts() -> tuple[int, int]:
        with session_scope(settings) as s:
            return s.scalar(select(func.count(Alert.id))), s.scalar(select(func.count(AlphaChange.id)))

    before = counts()
    _kill_at(env, args, "monitor-commit", tmp_path)
    with session_scope(settings) as s:
        (dead,) = s.scalars(select(MonitorRun)).all()
        assert dead.status == "running" and dead.finished_at is None and dead.pgr is None
        assert dead.metrics["owner"].rpartition(":")[0] == socket.gethostname()
    assert counts() == before

    # killed again while logging to MLflow (its outcome committed): its MLflow run is left RUNNING
    _kill_at(env, args, "monitor-mlflow", tmp_path)
    (running,) = monitor_runs(settings)
    assert running.info.status == "RUNNING"

    out = _run(env, args, tmp_path)
    assert "monitor: ok" in out
    with session_scope(settings) as s:
        rows = {r.id: r for r in s.scalars(select(MonitorRun))}
        assert rows[dead.id].status == "interrupted" and rows[dead.id].finished_at is not None
        assert "ended before the run finished" in rows[dead.id].error
        logged = rows[running.data.tags["monitor_run_id"]]  # its outcome stands; only the MLflow link is missing
        assert logged.status == "ok" and "mlflow_run_id" not in logged.metrics
        (done,) = [r for r in rows.values() if r.id not in {dead.id, logged.id}]
        assert done.status == "ok" and done.n_traces == 6 and done.metrics["routing"] == "all-strong"
        assert "mlflow_run_id" in done.metrics  # the follow-up links were written after the commit
        jobs = s.scalars(select(JobRun).where(JobRun.job == "monitor").order_by(JobRun.id)).all()
        assert [j.status for j in jobs] == ["interrupted", "interrupted", "ok"]
        assert "ended before the job finished" in jobs[0].error
        assert jobs[2].details["monitor_run_id"] == done.id
    status = {r.info.run_id: r.info.status for r in monitor_runs(settings)}
    assert status == {running.info.run_id: "KILLED", done.metrics["mlflow_run_id"]: "FINISHED"}


def monitor_runs(settings) -> list:  # noqa: ANN001
    from routerops import registry

    client = registry.client(settings)
    exp = client.get_experiment_by_name(settings.mlflow_experiment)
    return client.search_runs([exp.experiment_id], "tags.`routerops.kind` = 'monitor'")


def test_a_live_or_foreign_running_row_is_left_alone(settings) -> None:  # noqa: ANN001
    """Only a dead local process (or a day-old row) counts as interrupted."""
    from datetime import UTC, datetime, timedelta

    from routerops.db import session_scope
    from routerops.db.models import MonitorRun
    from routerops.monitoring.replay import mark_interrupted

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    now = datetime.now(UTC)
    rows = {"live": (f"{host}:{os.getpid()}", now), "elsewhere": ("other-host:1", now),
            "dead": (f"{host}:{dead.pid}", now), "old": ("other-host:1", now - timedelta(hours=25))}
    with session_scope(settings) as s:
        for name, (who, started) in rows.items():
            s.add(MonitorRun(id=name, golden_set="g", started_at=started, metrics={"owner": who}))
    with session_scope(settings) as s:
        assert sorted(mark_interrupted(s)) == ["dead", "old"]
    with session_scope(settings) as s:
        status = {r.id: r.status for r in s.scalars(select(MonitorRun))}
    assert status == {"live": "running", "elsewhere": "running", "dead": "interrupted", "old": "interrupted"}
