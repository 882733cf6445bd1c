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
