"""`routerops approve`: a person moves `champion` on a real MLflow SQLite registry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from routerops.orchestration.cli import cli

MODEL = "mf-router"


@pytest.fixture
def two_versions(settings):
    """`mf-router` versions 1 and 2 (a trivial pyfunc), `challenger` on 2, no `champion` yet."""
    import mlflow

    from routerops import registry

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):  # noqa: ANN001
            return model_input

    registry.configure_mlflow(settings)
    for _ in range(2):
        with mlflow.start_run():
            mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=["mlflow"],
                                    registered_model_name=MODEL)
    registry.set_challenger(MODEL, 2, settings)
    return registry.client(settings)


def approve(*args: str):
    return CliRunner().invoke(cli, ["approve", *args])


def test_approve_moves_champion_and_records_who_and_when(two_versions, settings, monkeypatch):
    from routerops import registry

    assert registry.version_by_alias(MODEL, "champion", settings) is None
    before = datetime.now(UTC) - timedelta(seconds=1)
    result = approve("1", "--by", "alice")
    assert result.exit_code == 0, result.output
    assert "mf-router@champion -> version 1" in result.output
    c = two_versions
    assert str(c.get_model_version_by_alias(MODEL, "champion").version) == "1"
    tags = c.get_model_version(MODEL, "1").tags
    assert tags["approved_by"] == "alice"
    assert before <= datetime.fromisoformat(tags["approved_at"]) <= datetime.now(UTC)
    assert "replaced_champion" not in tags
    assert str(c.get_model_version_by_alias(MODEL, "challenger").version) == "2"  # untouched

    # the next approval records whom it replaced; the approver defaults to $ROUTEROPS_USER
    monkeypatch.setenv("ROUTEROPS_USER", "bob")
    result = approve("2")
    assert result.exit_code == 0, result.output
    assert str(c.get_model_version_by_alias(MODEL, "champion").version) == "2"
    tags2 = c.get_model_version(MODEL, "2").tags
    assert tags2["approved_by"] == "bob" and tags2["replaced_champion"] == "1"
    assert str(c.get_model_version_by_alias(MODEL, "challenger").version) == "2"
    assert c.get_model_version(MODEL, "1").tags["approved_by"] == "alice"  # history kept


def test_approve_missing_version_is_a_clear_error_and_changes_nothing(two_versions):
    c = two_versions
    assert approve("1", "--by", "alice").exit_code == 0
    for bad in ("99", "abc"):
        result = approve(bad, "--by", "mallory")
        assert result.exit_code != 0
        assert f"cannot approve mf-router version {bad}" in result.output
        assert str(c.get_model_version_by_alias(MODEL, "champion").version) == "1"
        assert str(c.get_model_version_by_alias(MODEL, "challenger").version) == "2"
    assert c.get_model_version(MODEL, "1").tags["approved_by"] == "alice"
    assert "approved_by" not in c.get_model_version(MODEL, "2").tags

    result = approve("1", "--model", "no-such-model")
    assert result.exit_code != 0 and "cannot approve no-such-model version 1" in result.output


def test_experiment_is_a_model_training_experiment(settings):
    """MLflow 3 shows an experiment without a kind as a GenAI one (empty Traces page): ours says
    "model training", and the link `routerops up` prints opens its runs table."""
    from routerops import registry

    experiment_id = registry.configure_mlflow(settings)
    c = registry.client(settings)
    assert c.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    # an experiment made before this (no tag) gets it on the next start
    c.delete_experiment_tag(experiment_id, "mlflow.experimentKind")
    registry.configure_mlflow(settings)
    assert c.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert registry.experiment_ui_url("http://127.0.0.1:5000/", experiment_id) == (
        f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning")


@pytest.mark.slow
def test_approve_goes_through_the_running_mlflow_server_without_importing_mlflow(two_versions, settings):
    """With `routerops up`'s MLflow server running on the registry, approve uses its REST API: the
    command never imports MLflow (3-4 s of CPU, 10-12 s on a loaded machine, for ~10 ms of work)."""
    import os
    import subprocess
    import sys
    import time

    import httpx
    from serving_helpers import free_port

    from routerops import registry
    from routerops.console_scripts import console_script

    port = free_port()
    server = subprocess.Popen(
        [console_script("mlflow"), "server", "--backend-store-uri", settings.resolved_tracking_uri,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "mlflow server did not start"
            time.sleep(0.5)
        registry.write_up_state(settings, url)
        code = ("import sys; from routerops.orchestration.cli import cli; "
                "cli(sys.argv[1:], standalone_mode=False); print('mlflow imported:', 'mlflow' in sys.modules, "
                "'db imported:', 'routerops.db' in sys.modules)")
        run = lambda *args: subprocess.run([sys.executable, "-c", code, *args], capture_output=True,  # noqa: E731
                                           text=True, env=os.environ.copy(), timeout=120)
        out = run("approve", "1", "--by", "carol")
        assert out.returncode == 0, out.stderr
        assert "mf-router@champion -> version 1" in out.stdout and "mlflow imported: False db imported: False" in out.stdout
        out = run("approve", "2", "--by", "dave")
        assert out.returncode == 0, out.stderr
        c = two_versions
        assert str(c.get_model_version_by_alias(MODEL, "champion").version) == "2"
        tags = c.get_model_version(MODEL, "2").tags
        assert tags["approved_by"] == "dave" and tags["replaced_champion"] == "1"
        assert c.get_model_version(MODEL, "1").tags["approved_by"] == "carol"
        bad = run("approve", "99", "--by", "mallory")
        assert bad.returncode != 0 and "cannot approve mf-router version 99" in bad.stderr
        assert str(c.get_model_version_by_alias(MODEL, "champion").version) == "2"
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    # the server gone, approve falls back to MLflow's client
    assert registry.local_mlflow_server(settings) is None
