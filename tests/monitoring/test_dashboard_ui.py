"""The Evidently UI shows every monitor run, as a user sees it: start the UI the way `routerops up`
and compose do (`routerops monitor ui`), open it, run the monitor several times from another process
path, and ask the running UI for the project and its snapshots after each run.

The bug this guards against: a UI that started before the project existed never saw it (its file
watcher cannot see files in folders created after it started). The first runs here go without
ROUTEROPS_EVIDENTLY_URL, so only the pre-created project and folders make them visible; the last
run sets it and checks the UI was asked to reload.
"""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
from click.testing import CliRunner
from conftest import FIXTURES
from serving_helpers import free_port, wait_for
from sqlalchemy import select

from routerops.db import session_scope
from routerops.db.models import MonitorRun
from routerops.monitoring.dashboards import PANELS, PROJECT_NAME

NO_GAP = FIXTURES / "monitoring/no_gap"


def _replay_pair_env(monkeypatch) -> None:  # noqa: ANN001
    outputs = str(NO_GAP / "outputs.jsonl")
    for role in ("WEAK", "STRONG"):
        monkeypatch.setenv(f"ROUTEROPS_{role}_BACKEND", "replay")
        monkeypatch.setenv(f"ROUTEROPS_{role}_MODEL", f"{role.lower()}-fixture")
        monkeypatch.setenv(f"ROUTEROPS_{role}_REPLAY_FILE", outputs)


def _projects(ui: str) -> dict[str, str]:
    response = httpx.get(f"{ui}/api/projects", timeout=30)
    response.raise_for_status()
    return {p["name"]: p["id"] for p in response.json()}


def _snapshot_ids(ui: str, project_id: str) -> set[str]:
    response = httpx.get(f"{ui}/api/projects/{project_id}/snapshots", timeout=30)
    response.raise_for_status()
    return {s["id"] for s in response.json()}


def test_running_ui_lists_the_project_and_every_new_snapshot(settings, monkeypatch, tmp_path):
    from routerops.orchestration.cli import cli

    _replay_pair_env(monkeypatch)
    port = free_port()
    ui = f"http://127.0.0.1:{port}"
    log = (tmp_path / "ui.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "routerops.orchestration.cli", "monitor", "ui", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        wait_for(lambda: _ok(ui), timeout_s=120)
        assert httpx.get(ui, timeout=30).status_code == 200  # the page a user opens
        # the project and its panels are there before any monitor run
        projects = _projects(ui)
        assert PROJECT_NAME in projects, projects
        project_id = projects[PROJECT_NAME]
        assert _snapshot_ids(ui, project_id) == set()
        dashboard = httpx.get(f"{ui}/api/v2/dashboards/{project_id}", timeout=30)
        assert dashboard.status_code == 200
        assert {p["title"] for p in dashboard.json()["panels"]} >= {title for title, _ in PANELS}

        seen: set[str] = set()
        for i in range(3):
            if i == 2:
                monkeypatch.setenv("ROUTEROPS_EVIDENTLY_URL", ui)
            result = CliRunner().invoke(cli, ["monitor", "run", "--golden", str(NO_GAP / "golden.jsonl"),
                                              "--no-recalibrate"])
            assert result.exit_code == 0, result.output
            with session_scope(settings) as s:
                row = s.scalars(select(MonitorRun).order_by(MonitorRun.started_at.desc())).first()
                written = set(row.metrics["evidently"]["snapshots"].values())
                assert row.metrics["evidently"]["project_id"] == project_id
                assert row.metrics["evidently"]["ui_reloaded"] is (i == 2)
            assert len(written) == 2  # the summary and the drift report
            # the running UI lists the new snapshots (a watched folder: seen within seconds)
            wait_for(lambda w=written: w <= _snapshot_ids(ui, project_id), timeout_s=30)
            listed = _snapshot_ids(ui, project_id)
            assert listed == seen | written, (sorted(listed), sorted(seen), sorted(written))
            seen |= written
        assert list(_projects(ui)) == [PROJECT_NAME]  # one project, never a duplicate
        listed = httpx.get(f"{ui}/api/projects/{project_id}/snapshots", timeout=30).json()
        assert sorted(t for snap in listed for t in snap["tags"]) == ["drift"] * 3 + ["summary"] * 3
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
