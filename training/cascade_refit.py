"""Refit the live cascade's thresholds from logged, labelled steps and register the result as a
challenger. Nothing here changes the live configuration (serving_state "cascade"): a person approves
the challenger (`routerops approve --model cascade-config N`) and activates the champion
(`routerops cascade activate`).

The registered model `cascade-config` holds one version per refit: its artifact is the config JSON
(cascade_config/config.json), tagged with the objective and the expected quality and cost.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from routerops import registry
from routerops.db import session_scope
from routerops.models.cascade_config import CascadeConfig, load_cascade_config
from routerops.redact import redact_values
from routerops.settings import Settings
from routerops.training.cascade_eval import search, threshold_grid
from routerops.training.cascade_logged import logged_table

log = logging.getLogger(__name__)

CONFIG_MODEL_NAME = "cascade-config"
CONFIG_ARTIFACT = "cascade_config"
CONFIG_FILE = "config.json"


class RefitError(RuntimeError):
    pass


@dataclass
class RefitResult:
    config: object  # routerops.serving.cascade.CascadeConfig (the challenger)
    n_requests: int
    skipped: dict[str, int]
    live_thresholds: list[float]
    model_version: str | None
    run_id: str | None


def register_config(config, settings: Settings, *, tags: dict[str, str] | None = None,  # noqa: ANN001
                    name: str = CONFIG_MODEL_NAME) -> tuple[str, str]:
    """Log the config as a run artifact, register it as a new version and point `challenger` at it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    registry.configure_mlflow(settings)
    c = registry.client(settings)
    with mlflow.start_run(run_name="cascade-config-refit") as run, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / CONFIG_FILE
        path.write_text(json.dumps(config.to_dict(), indent=1))
        mlflow.log_artifact(str(path), CONFIG_ARTIFACT)
        mlflow.log_params({"models": ",".join(config.models), "objective": config.objective})
        mlflow.log_metrics({f"expected_{k}": float(v) for k, v in config.expected.items()})
        source = f"{run.info.artifact_uri}/{CONFIG_ARTIFACT}"
        run_id = run.info.run_id
    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(name, description="Cascade ladders and thresholds (refit from live logs)")
    mv = c.create_model_version(name, source, run_id=run_id, tags=redact_values(dict(tags or {})))
    registry.set_challenger(name, mv.version, settings)
    return str(mv.version), run_id


def load_registered_config(version_or_alias: str, settings: Settings, name: str = CONFIG_MODEL_NAME):  # noqa: ANN201
    """The CascadeConfig stored in a registered version (a number or an alias such as champion)."""
    import mlflow

    uri = f"models:/{name}/{version_or_alias}" if version_or_alias.isdigit() else f"models:/{name}@{version_or_alias}"
    pinned = registry.pin_model_uri(uri, "cascade config", settings)
    c = registry.client(settings)
    mv = c.get_model_version(name, pinned.version)
    mlflow.set_tracking_uri(settings.resolved_tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source))
    path = local / CONFIG_FILE if local.is_dir() else local
    return CascadeConfig.from_dict(json.loads(path.read_text())), str(mv.version)


def refit_cascade_thresholds(settings: Settings, *, budget: float | None = None, quality_target: float | None = None,
                             since_days: float | None = None, min_requests: int = 50, grid_size: int = 21,
                             explored_only: bool = True, register: bool = True) -> RefitResult:
    """Refit the live ladder's thresholds on logged, labelled requests for a budget (max quality) or a
    target quality (min cost); without either, the live config's own objective. Registers the new
    config as `cascade-config@challenger`; the live config is read, never written."""

    if budget is not None and quality_target is not None:
        raise RefitError("give at most one of budget or quality_target")
    since = datetime.now(UTC) - timedelta(days=since_days) if since_days else None
    with session_scope(settings) as session:
        live = load_cascade_config(session)
        if live is None:
            raise RefitError("no live cascade config to refit (run `routerops cascade calibrate` first)")
        table = logged_table(session, live.models, since=since, explored_only=explored_only)
    if budget is None and quality_target is None:
        budget, quality_target = live.budget, live.quality_target
        if (budget is None) == (quality_target is None):
            raise RefitError(f"the live config's objective is {live.objective!r}; give a budget or a quality target")
    if table.n < min_requests:
        raise RefitError(f"only {table.n} labelled requests ran the whole ladder {live.models} "
                         f"(need {min_requests}; skipped: {table.skipped}); raise explore_rate or label more")
    outcomes = table.outcome_table()
    grids = {m: threshold_grid(outcomes.score[m], grid_size) for m in live.models}
    plan = search(outcomes, budget=budget, quality_target=quality_target, ladders=[live.models], grids=grids)
    if plan is None:
        goal = f"mean cost <= {budget}" if budget is not None else f"quality >= {quality_target}"
        raise RefitError(f"no thresholds for {live.models} reach {goal} on {table.n} logged requests")
    config = CascadeConfig(
        models=list(live.models), thresholds=list(plan.thresholds), probe_uri=live.probe_uri,
        scorer_uri=live.scorer_uri, explore_rate=live.explore_rate,
        objective="max_quality_under_budget" if budget is not None else "min_cost_at_quality",
        budget=budget, quality_target=quality_target,
        expected={"logged_quality": plan.quality, "logged_cost": plan.cost, "logged_requests": float(table.n)},
        source=f"logs:{table.n} requests" + (f" since {since.isoformat()}" if since else ""),
        plans=dict(live.plans), classifier=live.classifier)  # the per-category plans are kept as they are
    version = run_id = None
    if register:
        version, run_id = register_config(config, settings, tags={
            "objective": config.objective, "n_requests": str(table.n),
            "thresholds": json.dumps(config.to_dict()["thresholds"]),
            "live_thresholds": json.dumps(CascadeConfig.to_dict(live)["thresholds"])})
    log.info("cascade refit on %d requests: %s (live thresholds %s) -> version %s", table.n, plan.describe(),
             live.thresholds, version)
    return RefitResult(config, table.n, table.skipped, list(live.thresholds), version, run_id)


def refit_cascade_job(settings: Settings) -> dict:
    """Scheduler entry: refit for the live config's own objective; a missing config or too few logs
    is a skip, not a failure."""
    try:
        res = refit_cascade_thresholds(settings)
    except RefitError as exc:
        return {"status": "skipped", "reason": str(exc)}
    return {"model_version": res.model_version, "n_requests": res.n_requests,
            "thresholds": res.config.to_dict()["thresholds"], "live_thresholds": res.live_thresholds}
