"""What serving's /metrics shows of monitoring, read from the shared database at scrape time.

Alerts: routerops_alert_active{kind} per kind (active_alert_gauges below) and
routerops_category_regression_active{category}. The latest finished monitor run (monitor_runs):
PGR, baseline, the tolerance it was judged with, strong share, when it finished, per category
PGR, baseline, strong share and labelled traces, and per fleet model its measured quality by source
(golden replay, exploration win rate, graded outcomes) with the count behind it and the quality floor
(ROUTEROPS_MODEL_QUALITY_FLOOR). A null figure has no sample (absent, not NaN, so no alerting rule can
fire on it); routerops_monitor_pgr_defined says whether PGR was defined.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC

from sqlalchemy import select
from sqlalchemy.orm import Session

from routerops.db.models import Alert, MonitorRun

# Alert kinds whose gauge always exists (0 until the first alert of the kind).
KINDS = ("pgr_regression", "category_regression", "drift", "live_drift", "strong_share_shift")
CATEGORY_FIGURES = ("pgr", "baseline_pgr", "strong_share", "n_labelled")
# a run's per-model figures (routerops.monitoring.per_model): source -> the count its quality is measured on
MODEL_SOURCES = (("golden", "n_labelled"), ("exploration", "n_pairs"), ("outcomes", "n"))


def active_alert_gauges(session: Session) -> dict[str, float]:
    """Prometheus gauges for serving's /metrics: routerops_<kind>_active = 1.0 while an alert of that
    kind is open, else 0.0: every kind in KINDS (those series always exist) and every other kind that
    ever had an alert (so a resolved live_drift reads 0, not a missing series)."""
    open_kinds = set(session.scalars(select(Alert.kind).where(Alert.status == "open")))
    seen = set(session.scalars(select(Alert.kind).distinct()))
    return {f"routerops_{kind}_active": 1.0 if kind in open_kinds else 0.0
            for kind in (*KINDS, *sorted(seen - set(KINDS)))}


def open_category_regressions(session: Session) -> list[str]:
    """Categories with an open category_regression alert (any golden set), sorted."""
    payloads = session.scalars(select(Alert.payload).where(Alert.kind == "category_regression",
                                                            Alert.status == "open"))
    return sorted({str(p["category"]) for p in payloads if p and p.get("category") is not None})



@dataclass(frozen=True)
class MonitorGauges:
    alerts: dict[str, float]  # routerops_<kind>_active -> 0/1
    category_alerts: dict[str, float]  # category -> 1 while its regression alert is open, else 0
    latest: dict[str, float] = field(default_factory=dict)  # routerops_monitor_* -> value (defined ones)
    categories: dict[str, dict[str, float]] = field(default_factory=dict)  # figure -> category -> value
    # (model, source) -> measured quality (defined ones) and -> the count it is measured on (every one)
    model_quality: dict[tuple[str, str], float] = field(default_factory=dict)
    model_quality_count: dict[tuple[str, str], float] = field(default_factory=dict)


def _latest_run(session: Session) -> MonitorRun | None:
    return session.scalars(select(MonitorRun).where(MonitorRun.status == "ok", MonitorRun.finished_at.is_not(None))
                           .order_by(MonitorRun.finished_at.desc()).limit(1)).first()


def read_monitor_gauges(session: Session) -> MonitorGauges:
    alerts = active_alert_gauges(session)
    open_cats = open_category_regressions(session)
    latest: dict[str, float] = {}
    categories: dict[str, dict[str, float]] = {name: {} for name in CATEGORY_FIGURES}
    model_quality: dict[tuple[str, str], float] = {}
    model_quality_count: dict[tuple[str, str], float] = {}
    run = _latest_run(session)
    if run is not None:
        m = run.metrics or {}
        finished = run.finished_at  # SQLite hands back naive datetimes; they are stored in UTC
        finished = finished if finished.tzinfo else finished.replace(tzinfo=UTC)
        latest["routerops_monitor_last_run_timestamp_seconds"] = finished.timestamp()
        latest["routerops_monitor_pgr_defined"] = float(run.pgr is not None)
        for name, value in (("pgr", run.pgr), ("baseline_pgr", run.baseline_pgr), ("strong_share", run.strong_share),
                            ("alpha", run.alpha), ("pgr_tolerance", m.get("pgr_tolerance"))):
            if value is not None:
                latest[f"routerops_monitor_{name}"] = float(value)
        for row in (m.get("categories") or {}).get("rows", []):
            for name in CATEGORY_FIGURES:  # an unreported category (too few traces) has its count only
                value = row.get(name)
                if value is not None and (name == "n_labelled" or row.get("reported")):
                    categories[name][str(row["category"])] = float(value)
        models = m.get("models") or {}
        if models.get("quality_floor") is not None:
            latest["routerops_model_quality_floor"] = float(models["quality_floor"])
        for row in models.get("rows", []):
            for source, count_key in MODEL_SOURCES:
                fig = row.get(source)
                if fig is None:
                    continue
                key = (str(row["model"]), source)
                model_quality_count[key] = float(fig.get(count_key) or 0)
                if fig.get("quality") is not None:
                    model_quality[key] = float(fig["quality"])
    # every category of the latest run has the series (0), and any with an open alert has 1
    cat_alerts = {c: 0.0 for c in categories["n_labelled"]} | {c: 1.0 for c in open_cats}
    return MonitorGauges(alerts, cat_alerts, latest, categories, model_quality, model_quality_count)
