"""MLflow tracking and registry helpers: one place that knows our URIs, names and aliases.

Nothing here runs at import time; every function configures MLflow from the Settings it is given.
Promotion is by alias: training sets `challenger`, a person moves `champion` (`routerops approve`
or the MLflow UI). Nothing in routerops moves `champion` on its own.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from routerops.settings import Settings, get_settings

CHAMPION = "champion"
CHALLENGER = "challenger"


def configure_mlflow(settings: Settings | None = None) -> str:
    """Point the mlflow module at our stores and make sure our experiment exists; returns its id."""
    import mlflow

    settings = settings or get_settings()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    tracking = settings.resolved_tracking_uri
    if tracking.startswith("sqlite:///"):
        settings.ensure_data_dir()
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(settings.resolved_registry_uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is None:
        # A remote tracking server serves artifacts itself; only local stores get our folder.
        local = not tracking.startswith(("http://", "https://", "databricks"))
        experiment_id = client.create_experiment(
            settings.mlflow_experiment, artifact_location=settings.resolved_artifact_root if local else None
        )
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def client(settings: Settings | None = None):  # noqa: ANN201
    import mlflow

    settings = settings or get_settings()
    return mlflow.MlflowClient(
        tracking_uri=settings.resolved_tracking_uri, registry_uri=settings.resolved_registry_uri
    )


@dataclass(frozen=True)
class LiveVersion:
    name: str
    version: str
    run_id: str | None
    source: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def version_by_alias(name: str, alias: str, settings: Settings | None = None) -> LiveVersion | None:
    """The version an alias points at, or None if the model or alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client(settings).get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
            return None
        raise
    return LiveVersion(name=name, version=str(mv.version), run_id=mv.run_id, source=mv.source)


def pyfunc_artifact_dir(local: Path, artifact: str, what: str) -> Path:
    """The folder holding a named artifact inside a downloaded pyfunc model (our models keep all their
    files beside that artifact)."""
    from mlflow.models import Model

    spec = Model.load(str(local / "MLmodel")).flavors.get("python_function", {}).get("artifacts", {})
    path = spec.get(artifact, {}).get("path")
    if path is None:
        raise ValueError(f"{local} is not {what} (no {artifact!r} artifact)")
    return (local / path).parent


def set_challenger(name: str, version: str | int, settings: Settings | None = None) -> None:
    client(settings).set_registered_model_alias(name, CHALLENGER, str(version))


def approve(name: str, version: str | int, approved_by: str | None = None,
            settings: Settings | None = None) -> LiveVersion:
    """Move `champion` to `version` and record who and when on the version (as the UI would)."""
    c = client(settings)
    mv = c.get_model_version(name, str(version))  # raises a clear MlflowException if missing
    who = approved_by or os.environ.get("ROUTEROPS_USER") or getpass.getuser()
    previous = version_by_alias(name, CHAMPION, settings)
    # Tags first: if tagging fails, champion has not moved without an approval record.
    c.set_model_version_tag(name, str(mv.version), "approved_by", who)
    c.set_model_version_tag(name, str(mv.version), "approved_at", datetime.now(UTC).isoformat())
    if previous is not None and previous.version != str(mv.version):
        c.set_model_version_tag(name, str(mv.version), "replaced_champion", previous.version)
    c.set_registered_model_alias(name, CHAMPION, str(mv.version))
    return LiveVersion(name=name, version=str(mv.version), run_id=mv.run_id, source=mv.source)
