"""MLflow record of a monitor run: figures as metrics, the full metrics JSON, and two plots
(router score distribution with the live alpha; the PGR curve recorded vs now). A null PGR is no
metric; tags `pgr_status` / `baseline_pgr_status` ("ok" | "null") and `*_null_reason` say why."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from routerops import metrics
from routerops.checkpoint import checkpoint
from routerops.jsonsafe import json_safe
from routerops.monitoring.categories import CategoryFigures, mlflow_metrics
from routerops.monitoring.dashboards import summary_row
from routerops.owner import owner
from routerops.redact import redact_values
from routerops.registry import OWNER_TAG, configure_mlflow, mark_killed_runs
from routerops.settings import Settings


def _plots(result, ok, scores: np.ndarray, out: Path) -> list[Path]:  # noqa: ANN001
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(scores, bins=20, range=(0, 1), alpha=0.8, label="router score now")
    ax.axvline(result.alpha, color="red", linestyle="--", label=f"alpha {result.alpha:.3f}")
    ax.set_xlabel("P(strong wins)")
    ax.set_ylabel("traces")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "score_distribution.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, attr in (("recorded", "_ref"), ("now", "")):
        idx = [i for i, r in enumerate(ok) if getattr(r, f"q_weak{attr}") is not None]
        if not idx:
            continue
        wq = np.asarray([getattr(ok[i], f"q_weak{attr}") for i in idx])
        sq = np.asarray([getattr(ok[i], f"q_strong{attr}") for i in idx])
        try:
            curve = metrics.pgr_curve(scores[idx], wq, sq)
        except ValueError:
            continue
        ax.plot(curve.strong_share, curve.pgr, label=f"{name} (APGR {curve.apgr():.3f})")
    if result.strong_share is not None and result.pgr is not None:
        ax.scatter([result.strong_share], [result.pgr], color="red", zorder=3, label="live alpha now")
    if result.pgr is None and result.pgr_null_reason:
        ax.set_title(result.pgr_null_reason, fontsize=7, wrap=True)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="random")
    ax.set_xlabel("strong-call share")
    ax.set_ylabel("PGR")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "pgr_curve.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def log_monitor_run(settings: Settings, result, ok, scores: np.ndarray) -> str:  # noqa: ANN001
    import mlflow

    configure_mlflow(settings)
    mark_killed_runs(settings, "monitor")  # earlier monitor runs killed while logging here
    tags = {"routerops.kind": "monitor", "monitor_run_id": result.run_id, OWNER_TAG: owner()}
    # A null PGR is logged as no metric (summary_row gives NaN, dropped below) and these tags say why.
    for name, value, reason in (("pgr", result.pgr, result.pgr_null_reason),
                                ("baseline_pgr", result.baseline_pgr, result.baseline_pgr_null_reason)):
        tags[f"{name}_status"] = "ok" if value is not None else "null"
        if value is None and reason:
            tags[f"{name}_null_reason"] = reason
    with mlflow.start_run(run_name=f"monitor-{result.run_id[:8]}", tags=redact_values(tags)) as run:
        mlflow.log_metrics({k: float(v) for k, v in summary_row(result).items() if np.isfinite(v)})
        mlflow.log_metrics({"drift_detected": float(result.drift_detected), "regression": float(result.regression)})
        checkpoint("monitor-mlflow")
        cats = result.metrics.get("categories")
        if cats:
            mlflow.log_metrics(mlflow_metrics([CategoryFigures(**row) for row in cats["rows"]]))
            mlflow.log_param("category_min_traces", cats["min_traces"])
        mlflow.log_dict(_safe(result.metrics), "monitor_metrics.json")
        with tempfile.TemporaryDirectory() as tmp:
            for p in _plots(result, ok, scores, Path(tmp)):
                mlflow.log_artifact(str(p), artifact_path="plots")
        return run.info.run_id


def _safe(m: dict) -> dict:
    return json_safe({k: v for k, v in m.items() if k not in {"evidently", "mlflow_run_id"}})
