"""MLflow tracking and registry helpers: one place that knows our URIs, names and aliases.

Nothing here runs at import time; every function configures MLflow from the Settings it is given.
Promotion is by alias: training sets `challenger`, a person moves `champion` (`routerops approve`
or the MLflow UI). Nothing in routerops moves `champion` on its own.
"""

from __future__ import annotations

import getpass
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from routerops.owner import owner_gone
from routerops.settings import Settings, get_settings

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class PinnedModel:
    """A model URI resolved to something that cannot move: an alias becomes its version now."""

    uri: str  # models:/NAME/VERSION, runs:/RUN_ID/PATH, or a local folder
    version: str | None
    run_id: str | None
    cache_key: tuple[str, ...]  # (store, pinned uri): one cache entry per real model
    local_dir: Path | None  # set for a local folder (nothing to download)


def pin_model_uri(model_uri: str, what: str, settings: Settings | None = None) -> PinnedModel:
    """Resolve models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH or a local folder.
    A missing alias or version raises LookupError naming `what` and the registry."""
    from mlflow.exceptions import MlflowException

    settings = settings or get_settings()
    reg = settings.resolved_registry_uri
    if model_uri.startswith("models:/"):
        rest = model_uri[len("models:/") :]
        if "@" in rest:
            name, alias, number = *rest.split("@", 1), None
        else:
            name, alias, number = rest.rpartition("/")[0], None, rest.rpartition("/")[2]
        if not name or not (alias or number):
            raise ValueError(f"cannot parse model URI {model_uri!r} (models:/NAME@ALIAS or models:/NAME/VERSION)")
        c = client(settings)
        try:
            mv = c.get_model_version_by_alias(name, alias) if alias else c.get_model_version(name, number)
        except MlflowException as exc:
            raise LookupError(f"no {what} at {model_uri} in {reg}: {exc.message}") from None
        pinned = f"models:/{name}/{mv.version}"
        return PinnedModel(pinned, str(mv.version), mv.run_id, (reg, pinned), None)
    if model_uri.startswith("runs:/"):
        run_id = model_uri[len("runs:/") :].split("/", 1)[0]
        return PinnedModel(model_uri, None, run_id, (settings.resolved_tracking_uri, model_uri), None)
    if Path(model_uri).is_dir():
        local = Path(model_uri)
        return PinnedModel(model_uri, None, None, ("file", str(local.resolve())), local)
    raise ValueError(f"unsupported {what} URI {model_uri!r} (models:/NAME@ALIAS, models:/NAME/N, runs:/ID/PATH)")


def download_model(pinned: PinnedModel, what: str, settings: Settings | None = None) -> Path:
    """The model's local folder (downloaded from our stores unless it is local already)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if pinned.local_dir is not None:
        return pinned.local_dir
    settings = settings or get_settings()
    mlflow.set_tracking_uri(settings.resolved_tracking_uri)
    mlflow.set_registry_uri(settings.resolved_registry_uri)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=pinned.uri))
    except MlflowException as exc:
        raise LookupError(f"cannot download {what} {pinned.uri}: {exc.message}") from None


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


OWNER_TAG = "routerops.owner"  # host:pid of the process that started a job's MLflow run (routerops.owner)


def mark_killed_runs(settings: Settings, kind: str) -> list[str]:
    """MLflow runs of a job (tag routerops.kind = `kind`) left RUNNING by a process that is gone
    (killed midway) end as KILLED, so the UI tells them from a live one; returns their ids. A run
    of a live process, or of one on another host less than a day old, is left alone."""

    c = client(settings)
    experiment = c.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is None:
        return []
    killed = []
    runs = c.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING' and "
                         f"tags.`routerops.kind` = '{kind}'", max_results=100)
    for r in runs:
        started = datetime.fromtimestamp(r.info.start_time / 1000, UTC) if r.info.start_time else None
        who = r.data.tags.get(OWNER_TAG)
        if who and owner_gone(who, started):
            c.set_terminated(r.info.run_id, status="KILLED")
            killed.append(r.info.run_id)
            log.warning("%s run %s was killed midway (process %s gone): marked KILLED", kind, r.info.run_id, who)
    return killed
