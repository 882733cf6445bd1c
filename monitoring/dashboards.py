"""Evidently workspace: one project whose dashboard plots every monitor run over time.

Each run adds two snapshots to the project "routerops monitoring" in settings.resolved_evidently_workspace:
the drift report (per-column drift of router scores and output statistics; tag "drift") and a
one-row summary (tag "summary") whose MeanValue metrics carry the run's figures: PGR, baseline PGR,
strong-call share, alpha, drift share, quality (weak, strong, routed) and, per model, exact-match
rate, similarity and length change, and per fleet model (issue 27) its traffic share, USD spent, mean
latency and measured quality (golden replay, exploration win rate) for the per-model panels ("Fleet:
..."). A null PGR (strong not better than weak) is NaN there, a gap in the PGR line, the "PGR
defined" panel shows 0 for that run, and the PGR panel's subtitle gives the latest run's reason.
Panels of fractions carry two constant series, 0 and 1, that keep their y axis at 0-1 with
fractional ticks (AXIS_SERIES). The dashboard panels (created once; panels a later release adds are
added to an existing project) read those metrics.

A running Evidently UI learns of files written by another process only through a file watcher
(inotify), and a watcher cannot see files created in a directory it has not started watching yet:
a project created after the UI started (new project folder, then its metadata inside) or the first
snapshot (new snapshots folder, then the file) can be missed for good. So the project, its panels
and its snapshots folder are created before any UI starts (`ensure_project`, run by `routerops up`,
by the compose `migrate` step and by `routerops monitor ui`, the UI launcher), and later runs only
add files to folders the UI already watches. When ROUTEROPS_EVIDENTLY_URL names the running UI, the
monitor also asks it to reload the project after each run (a missed event then costs nothing).
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import Any

import httpx
import pandas as pd

from routerops.monitoring.drift import quiet_evidently
from routerops.settings import Settings

log = logging.getLogger(__name__)

PROJECT_NAME = "routerops monitoring"
TAB = "Monitoring"

# Panels of fractions (PGR, shares, qualities, alpha...) also plot two constant series, 0 and 1: the
# Evidently UI scales its y axis to the data alone, so one run's strong share of 0.25 sat on a "0"
# tick and alpha 0.919 on "1"; with 0 and 1 in every such panel the axis spans 0-1 with fractional ticks.
AXIS_SERIES = [("axis_0", "(axis 0)"), ("axis_1", "(axis 1)")]
PGR_PANEL = "PGR at the live alpha"
# summary column -> (panel title, legend)
PANELS: list[tuple[str, list[tuple[str, str]]]] = [
    (PGR_PANEL, [("pgr", "PGR"), ("baseline_pgr", "baseline PGR")]),
    ("Strong-call share", [("strong_share", "strong share")]),
    ("PGR defined (1) or null (0: strong not better than weak, or no labels)",
     [("pgr_defined", "PGR defined"), ("baseline_pgr_defined", "baseline PGR defined")]),
    ("Quality on the golden replay", [("quality_weak", "weak"), ("quality_strong", "strong"),
                                      ("quality_routed", "routed")]),
    ("Alpha", [("alpha", "alpha")]),
    ("Drift share (Evidently)", [("drift_share", "share of drifted columns")]),
    ("Output drift: exact match vs recorded", [("weak_exact_match", "weak"), ("strong_exact_match", "strong")]),
    ("Output drift: similarity vs recorded", [("weak_similarity", "weak"), ("strong_similarity", "strong")]),
    ("Output drift: length change", [("weak_length_change", "weak"), ("strong_length_change", "strong")]),
]
# Live traffic (monitoring/live_drift.py): snapshots tagged "live"
UNBOUNDED_PANELS = {"Output drift: length change"}  # relative change: not a fraction in 0-1
LIVE_PANELS: list[tuple[str, list[tuple[str, str]]]] = [
    ("Live: strong-call share vs the reference at the same alphas",
     [("live_strong_share", "live"), ("live_expected_strong_share", "expected (reference)")]),
    ("Live: drift share (router score and prompt statistics)", [("live_drift_share", "share of drifted columns")]),
    ("Live: router-score drift (Wasserstein, normed; drift above 0.1)", [("live_router_score_drift", "router score")]),
]


# Per fleet model (issue 27): one panel per figure, one line per model (summary columns model_<name>_<figure>)
MODEL_PANELS: list[tuple[str, str]] = [
    ("Fleet: traffic share per model (request log, monitor window)", "share"),
    ("Fleet: measured quality per model (golden replay)", "quality_golden"),
    ("Fleet: measured quality per model (exploration win rate, monitor window)", "quality_exploration"),
    ("Fleet: USD spent per model (request log, monitor window)", "cost_usd"),
    ("Fleet: mean latency per model in seconds (request log, monitor window)", "latency_s"),
]
UNBOUNDED_MODEL_FIGURES = {"cost_usd", "latency_s"}


def model_column(model: str, figure: str) -> str:
    return "model_" + "".join(c if c.isalnum() else "_" for c in model.lower()) + f"_{figure}"


def _model_columns(result) -> dict[str, float]:  # noqa: ANN001 - routerops.monitoring.replay.MonitorResult
    """Per model of the run: traffic share and USD (0 without traffic), mean latency and measured quality
    (NaN when there is none: a gap in its line)."""
    nan = float("nan")
    out: dict[str, float] = {}
    for row in (result.metrics.get("models") or {}).get("rows", []):
        t = row.get("traffic") or {}
        golden, explo = row.get("golden") or {}, row.get("exploration") or {}
        for figure, value in (("share", t.get("share", 0.0)), ("cost_usd", t.get("cost_usd", 0.0)),
                              ("latency_s", t.get("mean_latency_s")), ("quality_golden", golden.get("quality")),
                              ("quality_exploration", explo.get("quality"))):
            out[model_column(row["model"], figure)] = nan if value is None else float(value)
    return out


def _run_models(result) -> list[str]:  # noqa: ANN001
    return [r["model"] for r in (result.metrics.get("models") or {}).get("rows", [])]


def model_panels(models: list[str]) -> list[tuple[str, list[tuple[str, str]]]]:
    """The per-model panels for these models (one series each)."""
    return [(title, [(model_column(m, figure), m) for m in models]) for title, figure in MODEL_PANELS]


def category_panel(category: str) -> tuple[str, list[tuple[str, str]]]:
    """One panel per golden-set category: its PGR, baseline PGR and strong share (summary columns)."""
    col = category_column(category)
    return (f"Category {category}: PGR and strong share",
            [(f"{col}_pgr", "PGR"), (f"{col}_baseline_pgr", "baseline PGR"), (f"{col}_strong_share", "strong share")])


def category_column(category: str) -> str:
    return "cat_" + "".join(c if c.isalnum() else "_" for c in category.lower())


def summary_row(result) -> dict[str, float]:  # noqa: ANN001 - routerops.monitoring.replay.MonitorResult
    od = result.metrics["output_drift"]
    q = result.metrics.get("quality") or {}
    nan = float("nan")
    return {
        # a null PGR is NaN here: a gap in its line, and 0 in the "PGR defined" panel says why
        "pgr": nan if result.pgr is None else result.pgr,
        "baseline_pgr": nan if result.baseline_pgr is None else result.baseline_pgr,
        "pgr_defined": float(result.pgr is not None),
        "baseline_pgr_defined": float(result.baseline_pgr is not None),
        **{f"quality_{k}": float(q[k]) if k in q else nan for k in ("weak", "strong", "routed")},
        "strong_share": nan if result.strong_share is None else result.strong_share,
        "alpha": result.alpha,
        "drift_share": result.drift_share or 0.0,
        **{f"{w}_exact_match": od[w]["exact_match_rate"] for w in ("weak", "strong")},
        **{f"{w}_similarity": od[w]["similarity"] for w in ("weak", "strong")},
        **{f"{w}_length_change": od[w]["length_change"] for w in ("weak", "strong")},
        **_category_columns(result),
        **_model_columns(result),
        **{col: float(col[-1]) for col, _ in AXIS_SERIES},
    }


def _category_columns(result) -> dict[str, float]:  # noqa: ANN001
    """Per reported category (enough labelled traces): PGR (NaN when null), baseline, strong share."""
    nan = float("nan")
    out: dict[str, float] = {}
    for row in (result.metrics.get("categories") or {}).get("rows", []):
        if not row.get("reported"):
            continue
        col = category_column(row["category"])
        for key in ("pgr", "baseline_pgr", "strong_share"):
            out[f"{col}_{key}"] = nan if row.get(key) is None else float(row[key])
    return out


def _reported_categories(result) -> list[str]:  # noqa: ANN001
    return [r["category"] for r in (result.metrics.get("categories") or {}).get("rows", []) if r.get("reported")]


def get_project(settings: Settings, categories: list[str] = (), models: list[str] = ()):  # noqa: ANN201
    """The workspace and our project (Workspace, Project), created with its dashboard on first use; a
    panel is added for each category not shown yet, and the per-model panels gain a line for each
    model not shown yet (a model no longer reported keeps its line: its history stays visible)."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from evidently.sdk.models import DashboardTabModel, PanelMetric
    from evidently.sdk.panels import line_plot_panel
    from evidently.ui.workspace import Workspace

    path = settings.resolved_evidently_workspace
    path.mkdir(parents=True, exist_ok=True)
    ws = Workspace(str(path))
    found = ws.search_project(PROJECT_NAME)
    if found:
        project = found[0]
    else:
        project = ws.create_project(PROJECT_NAME, description="Golden-trace replays of the live router pair")
    model = ws.get_dashboard(project.id)
    shown = {pid for tab in model.tabs for pid in tab.panels}
    have: dict[str, Any] = {}
    for panel in model.panels:  # one panel per title, one that a tab shows
        if panel.id in shown and panel.title not in have:
            have[panel.title] = panel
    keep = {panel.id for panel in have.values()}
    changed = len(keep) != len(model.panels) or any(len(set(t.panels)) != len(t.panels) for t in model.tabs)
    if changed:  # duplicates (evidently's add_panel lists a new panel twice in its tab) go
        model.panels = [panel for panel in model.panels if panel.id in keep]
        for tab in model.tabs:
            tab.panels = list(dict.fromkeys(pid for pid in tab.panels if pid in keep))
    wanted = [(p, "summary") for p in PANELS] + [(p, "live") for p in LIVE_PANELS]
    wanted += [(category_panel(c), "summary") for c in categories]
    if models:  # the models already shown first, then the new ones
        shown_models = [v.legend for p in have.values() if p.title == MODEL_PANELS[0][0] for v in p.values
                        if v.legend not in {legend for _, legend in AXIS_SERIES}]
        wanted += [(p, "summary") for p in model_panels(list(dict.fromkeys([*shown_models, *models])))]
    unbounded = {title for title, figure in MODEL_PANELS if figure in UNBOUNDED_MODEL_FIGURES}
    # panels added (or changed) by a later release, or for a new category, appear in an existing project too
    for (title, series), tag in wanted:
        if tag == "summary" and title not in UNBOUNDED_PANELS and title not in unbounded:
            series = [*series, *AXIS_SERIES]
        values = [PanelMetric(legend=legend, metric="MeanValue", metric_labels={"column": col}, tags=[tag])
                  for col, legend in series]
        if title not in have:
            panel = line_plot_panel(title, values, size="half")
            model.panels.append(panel)
            tab = next((t for t in model.tabs if t.title == TAB), None)
            if tab is None:
                tab = DashboardTabModel(title=TAB, panels=[])
                model.tabs.append(tab)
            tab.panels.append(panel.id)
            changed = True
        elif [v.legend for v in have[title].values] != [legend for _, legend in series]:
            have[title].values = values  # in place: the panel keeps its id and its place
            changed = True
    if changed:
        ws.save_dashboard(project.id, model)
    return ws, project


def pgr_note(result) -> str:  # noqa: ANN001 - routerops.monitoring.replay.MonitorResult
    """What the PGR panel says under its title about the latest run: its PGR, or why it is null."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    pgr = "null" if result.pgr is None else f"{result.pgr:.3f}"
    base = "null" if result.baseline_pgr is None else f"{result.baseline_pgr:.3f}"
    note = f"Latest run ({when}, alpha {result.alpha:.3f}): PGR {pgr}, baseline {base}"
    if result.pgr_null_reason:
        note += f". PGR is null (no point plotted): {result.pgr_null_reason}"
    elif result.baseline_pgr_null_reason:
        note += f". Baseline is null: {result.baseline_pgr_null_reason}"
    return note


def _set_subtitle(settings: Settings, project, title: str, subtitle: str) -> None:  # noqa: ANN001
    from evidently.ui.workspace import Workspace

    # a fresh reader: a workspace object keeps the dashboard it read first, and saving that copy
    # would undo the panel changes get_project has just saved
    ws = Workspace(str(settings.resolved_evidently_workspace))
    model = ws.get_dashboard(project.id)
    for panel in model.panels:
        if panel.title == title:
            panel.subtitle = subtitle
    ws.save_dashboard(project.id, model)


def ensure_project(settings: Settings) -> str:
    """Create the project, its dashboard and its (empty) snapshots folder if missing; returns the
    project id. Run before any Evidently UI starts on the workspace (see the module docstring)."""
    from evidently.ui.storage.local.base import SNAPSHOTS_DIR_NAME

    _, project = get_project(settings)
    (settings.resolved_evidently_workspace / str(project.id) / SNAPSHOTS_DIR_NAME).mkdir(parents=True, exist_ok=True)
    return str(project.id)


def notify_ui(settings: Settings, project_id: str) -> bool:
    """Ask the running UI (settings.evidently_url) to reload the project's snapshots from disk.
    Best effort: the snapshots are on disk either way, so a UI that is down only logs a warning."""
    if not settings.evidently_url:
        return False

    url = f"{settings.evidently_url.rstrip('/')}/api/projects/{project_id}/reload"
    try:
        httpx.get(url, timeout=10.0).raise_for_status()
    except httpx.HTTPError as exc:
        log.warning("Evidently UI at %s did not reload the project: %s", settings.evidently_url, exc)
        return False
    return True


def add_run_snapshots(settings: Settings, result, drift) -> dict[str, Any]:  # noqa: ANN001
    from evidently import Report
    from evidently.metrics import MeanValue

    ws, project = get_project(settings, _reported_categories(result), _run_models(result))
    now = datetime.now(UTC).replace(tzinfo=None)
    row = summary_row(result)
    meta = {"monitor_run_id": result.run_id, "router_version": str(result.metrics.get("router_version"))}
    summary = Report([MeanValue(column=c) for c in row], tags=["summary"], metadata=meta)
    with quiet_evidently():
        snap = summary.run(current_data=pd.DataFrame([row]), timestamp=now)
    ids = {"summary": str(ws.add_run(project.id, snap).id)}  # add_run returns a SnapshotRef
    if drift.snapshot is not None:  # tagged "drift" by routerops.monitoring.replay
        ids["drift"] = str(ws.add_run(project.id, drift.snapshot).id)
    _set_subtitle(settings, project, PGR_PANEL, pgr_note(result))  # a missing point says why
    return {"workspace": str(settings.resolved_evidently_workspace), "project_id": str(project.id),
            "snapshots": ids, "ui_reloaded": notify_ui(settings, str(project.id))}


def add_live_snapshots(settings: Settings, result, drift, row: dict[str, float]) -> dict[str, Any]:  # noqa: ANN001 - live_drift.LiveDriftResult
    """A live-drift run: its figures (tag "live") and Evidently's drift report (tag "live-drift")."""
    from evidently import Report
    from evidently.metrics import MeanValue

    ws, project = get_project(settings)
    now = datetime.now(UTC).replace(tzinfo=None)
    meta = {"live_drift_run_id": result.run_id, "router_version": str(result.router_version)}
    with quiet_evidently():
        snap = Report([MeanValue(column=c) for c in row], tags=["live"], metadata=meta).run(
            current_data=pd.DataFrame([row]), timestamp=now)
    ids = {"live": str(ws.add_run(project.id, snap).id)}
    if drift.snapshot is not None:  # tagged "live-drift" by routerops.monitoring.live_drift
        ids["live-drift"] = str(ws.add_run(project.id, drift.snapshot).id)
    return {"workspace": str(settings.resolved_evidently_workspace), "project_id": str(project.id),
            "snapshots": ids, "ui_reloaded": notify_ui(settings, str(project.id))}
