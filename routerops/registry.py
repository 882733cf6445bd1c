"""MLflow tracking and registry helpers: one place that knows our URIs, names and aliases.

Nothing here runs at import time; every function configures MLflow from the Settings it is given.
Promotion is by alias: training sets `challenger`, a person moves `champion` (`routerops approve`
or the MLflow UI). Nothing in routerops moves `champion` on its own.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from routerops.owner import owner_gone
from routerops.settings import Settings, get_settings

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"

# MLflow 3 shows an experiment as a GenAI one (Traces page, "Detect Issues") unless it is told
# otherwise: the tag says "model training", and the UI's own switch (3.17 reads only that one,
# defaulting to GenAI) is set by `workflowType=machine_learning` in the link `routerops up` prints.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def experiment_ui_url(base_url: str, experiment_id: str) -> str:
    """The MLflow UI link that opens our experiment on its runs table (not the GenAI traces page)."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


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
    if experiment is None or experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
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


class ApprovalError(RuntimeError):
    """The version cannot be approved (no such model or version); the message says why."""


def approve(name: str, version: str | int, approved_by: str | None = None,
            settings: Settings | None = None) -> LiveVersion:
    """Move `champion` to `version` and record who and when on the version (as the UI would).

    Through the MLflow server `routerops up` runs on the same registry when it is up (its REST API,
    a few ms), else with MLflow's client. The client costs `import mlflow` and its SQL store, 3-4 s
    of CPU (10-12 s on a loaded 2-core machine) for four registry calls of ~10 ms; see
    docs/walkthrough.md."""
    settings = settings or get_settings()
    who = approved_by or os.environ.get("ROUTEROPS_USER") or getpass.getuser()
    server = local_mlflow_server(settings)
    store = _RestRegistry(server) if server else _ClientRegistry(settings)
    mv = store.get_version(name, str(version))  # ApprovalError if missing
    previous = store.alias_version(name, CHAMPION)
    # Tags first: if tagging fails, champion has not moved without an approval record.
    store.set_tag(name, mv["version"], "approved_by", who)
    store.set_tag(name, mv["version"], "approved_at", datetime.now(UTC).isoformat())
    if previous is not None and previous != mv["version"]:
        store.set_tag(name, mv["version"], "replaced_champion", previous)
    store.set_alias(name, CHAMPION, mv["version"])
    return LiveVersion(name=name, version=mv["version"], run_id=mv.get("run_id"), source=mv.get("source", ""))


# `routerops up` records its MLflow server here (removed when it stops), for commands of the same
# data dir that can use the running server instead of importing MLflow.
UP_STATE_FILE = "up.json"


def write_up_state(settings: Settings, mlflow_url: str | None) -> Path:
    path = settings.data_dir / UP_STATE_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"mlflow_url": mlflow_url, "registry_uri": settings.resolved_registry_uri,
                               "pid": os.getpid()}))
    tmp.replace(path)
    return path


def local_mlflow_server(settings: Settings) -> str | None:
    """The URL of the MLflow server `routerops up` runs on this data dir's registry, if it answers now."""
    try:
        state = json.loads((settings.data_dir / UP_STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    url = state.get("mlflow_url")
    if not url or state.get("registry_uri") != settings.resolved_registry_uri:
        return None
    try:
        ok = httpx.get(f"{url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return None
    return url if ok else None


class _RestRegistry:
    """MLflow's registry REST API (the same calls MlflowClient makes against a tracking server)."""

    def __init__(self, url: str):
        self.http = httpx.Client(base_url=f"{url}/api/2.0/mlflow", timeout=30.0)

    def _call(self, method: str, path: str, **kwargs) -> dict:  # noqa: ANN003
        resp = self.http.request(method, path, **kwargs)
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = {"message": resp.text}
            raise ApprovalError(body.get("message") or resp.text) if resp.status_code < 500 else \
                RuntimeError(f"MLflow server: HTTP {resp.status_code}: {body.get('message', resp.text)}")
        return resp.json()

    def get_version(self, name: str, version: str) -> dict:
        mv = self._call("GET", "/model-versions/get", params={"name": name, "version": version})["model_version"]
        return {**mv, "version": str(mv["version"])}

    def alias_version(self, name: str, alias: str) -> str | None:
        try:
            return str(self._call("GET", "/registered-models/alias",
                                  params={"name": name, "alias": alias})["model_version"]["version"])
        except ApprovalError:  # no such alias yet
            return None

    def set_tag(self, name: str, version: str, key: str, value: str) -> None:
        self._call("POST", "/model-versions/set-tag", json={"name": name, "version": version, "key": key,
                                                            "value": value})

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._call("POST", "/registered-models/alias", json={"name": name, "alias": alias, "version": version})


class _ClientRegistry:
    """The same four operations with MLflow's Python client on the configured registry."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.client = client(settings)

    def get_version(self, name: str, version: str) -> dict:
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version(name, version)
        except MlflowException as exc:
            raise ApprovalError(exc.message) from None
        return {"version": str(mv.version), "run_id": mv.run_id, "source": mv.source}

    def alias_version(self, name: str, alias: str) -> str | None:
        live = version_by_alias(name, alias, self.settings)
        return None if live is None else live.version

    def set_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(name, version, key, value)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)


DATA_ID_TAG_PREFIX = "routerops.data_"  # + max_preference_id / max_outcome_id: the newest rows a version saw
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
