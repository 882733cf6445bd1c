"""Live drift: today's traffic against what the live router saw at training time. No labels needed.

A router version carries `reference_X`, the model inputs of up to 2,000 reference prompts (training
data), so the reference distribution of its scores for the live pair and of the standardized prompt
statistics is known. Each run reads the request logs of the last `live_drift_window_hours` that the
live version scored (p_strong_wins set) and compares, with Evidently's data-drift preset:
- `router_score`: live P(strong wins) vs the reference prompts' scores;
- the prompt statistics (length, lines, code, digits, ...; training/prompt_features.py) of the
  stored prompts vs the reference's, when the router reads them and prompts are stored.
Evidently picks the test per column (reference > 1,000 rows: normed Wasserstein distance, drift above
0.1). The run calls it drift (alert `live_drift`) when `router_score` drifts or when at least
`live_drift_share` of all compared columns drift. The strong-call share of the window is compared
with the share the same alphas give on the reference prompts; a gap above
`live_strong_share_tolerance` (absolute) opens `strong_share_shift`. Fewer than
`live_drift_min_requests` scored requests: the run is recorded as skipped and open alerts stay as
they are (nothing was measured). Each run is a `live_drift_runs` row and two Evidently snapshots
(tags "live" and "live-drift") on the monitoring dashboard.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from routerops.db import session_scope
from routerops.db.models import LiveDriftRun, RequestLog
from routerops.jsonsafe import json_safe
from routerops.models.prompt_features import FEATURES
from routerops.monitoring import alerts as alerts_mod
from routerops.monitoring.dashboards import add_live_snapshots
from routerops.monitoring.drift import DriftResult, drift_report
from routerops.monitoring.live_router import load_live_router
from routerops.settings import Settings

log = logging.getLogger(__name__)

SCORE_COLUMN = "router_score"


@dataclass
class LiveWindow:
    """The scored requests of the window, oldest first."""

    created_at: list[datetime]
    scores: np.ndarray
    alphas: np.ndarray
    prompts: list[str | None]


@dataclass
class LiveDriftResult:
    run_id: str
    status: str  # ok | skipped
    router_version: str | None
    n_requests: int
    strong_share: float | None = None
    expected_strong_share: float | None = None
    drift_detected: bool | None = None
    drift_share: float | None = None
    reason: str | None = None  # why skipped
    metrics: dict[str, Any] = field(default_factory=dict)
    alerts_opened: list[int] = field(default_factory=list)


def read_window(settings: Settings, router_version: str, hours: float) -> LiveWindow:
    since = datetime.now(UTC) - timedelta(hours=hours)
    with session_scope(settings) as s:
        rows = s.execute(
            select(RequestLog.created_at, RequestLog.p_strong_wins, RequestLog.alpha, RequestLog.prompt)
            .where(RequestLog.created_at >= since, RequestLog.p_strong_wins.is_not(None),
                   RequestLog.router_version == router_version)
            .order_by(RequestLog.created_at)).all()
    return LiveWindow([r[0] for r in rows], np.asarray([r[1] for r in rows], dtype=np.float64),
                      np.asarray([0.5 if r[2] is None else r[2] for r in rows], dtype=np.float64),
                      [r[3] for r in rows])


def expected_share(reference_scores: np.ndarray, alphas: np.ndarray) -> float:
    """The strong share the requests' own alphas would give on the reference prompts."""
    ref = np.sort(reference_scores)
    above = len(ref) - np.searchsorted(ref, alphas, side="left")  # reference scores >= alpha
    return float((above / len(ref)).mean())


def share_by_hour(window: LiveWindow) -> list[dict[str, Any]]:
    buckets: dict[datetime, list[bool]] = defaultdict(list)
    for ts, score, alpha in zip(window.created_at, window.scores, window.alphas, strict=True):
        buckets[ts.replace(minute=0, second=0, microsecond=0)].append(bool(score >= alpha))
    return [{"hour": h.isoformat(), "n": len(v), "strong_share": sum(v) / len(v)} for h, v in sorted(buckets.items())]


def frames(router, window: LiveWindow, reference_scores: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:  # noqa: ANN001
    """Reference and live frames: router score, plus prompt statistics where the router has them."""

    ref = pd.DataFrame({SCORE_COLUMN: reference_scores})
    cur = pd.DataFrame({SCORE_COLUMN: window.scores})
    ref_stats = router.reference_prompt_stats()
    stored = [p for p in window.prompts if p is not None]
    if ref_stats is not None and stored:
        ref = pd.concat([ref, pd.DataFrame(ref_stats, columns=list(FEATURES))], axis=1)
        # the reference is stored in float16: round live values the same way, or a discrete statistic
        # (a count) reads as a different category on each side
        live = router.prompt_stats(stored).astype(np.float16).astype(np.float32)
        live_stats = pd.DataFrame(live, columns=list(FEATURES))
        cur = pd.concat([cur.reset_index(drop=True), live_stats], axis=1)  # stats rows: stored prompts only
    # a column constant on both sides carries no signal (and Evidently cannot test it)
    keep = [c for c in ref.columns if c == SCORE_COLUMN or ref[c].nunique() > 1 or cur[c].nunique() > 1]
    return ref[keep], cur[keep]


def decide(drift: DriftResult, share_threshold: float) -> bool:
    score_drifted = bool(drift.columns.get(SCORE_COLUMN, {}).get("drifted"))
    return score_drifted or drift.drift_share >= share_threshold


def run_live_drift(settings: Settings, *, write_dashboards: bool = True, router=None) -> LiveDriftResult:  # noqa: ANN001
    """One live-drift check of the champion router; recorded as a live_drift_runs row."""

    router = router if router is not None else load_live_router(settings)
    version = getattr(router, "version", None)
    with session_scope(settings) as s:
        row = LiveDriftRun(router_version=version, window_hours=settings.live_drift_window_hours)
        s.add(row)
        s.flush()
        run_id = row.id
    try:
        result = _measure(settings, run_id, router, version)
        if result.status == "ok" and write_dashboards:
            try:
                result.metrics["evidently"] = add_live_snapshots(settings, result, result.metrics.pop("_drift"), summary_row(result))
            except Exception as exc:  # noqa: BLE001 - the measurement stands even if the UI store fails
                log.exception("writing live-drift Evidently snapshots failed")
                result.metrics["evidently_error"] = f"{type(exc).__name__}: {exc}"
        result.metrics.pop("_drift", None)
        with session_scope(settings) as s:
            row = s.get(LiveDriftRun, run_id)
            row.status, row.finished_at = result.status, datetime.now(UTC)
            row.n_requests, row.strong_share = result.n_requests, result.strong_share
            row.expected_strong_share, row.drift_detected = result.expected_strong_share, result.drift_detected
            row.drift_share, row.metrics = result.drift_share, json_safe(result.metrics)
            row.error = result.reason
        return result
    except Exception as exc:
        with session_scope(settings) as s:
            row = s.get(LiveDriftRun, run_id)
            row.status, row.finished_at, row.error = "failed", datetime.now(UTC), f"{type(exc).__name__}: {exc}"
        raise


def _skipped(run_id: str, version: str | None, n: int, reason: str) -> LiveDriftResult:
    log.info("live drift skipped: %s", reason)
    return LiveDriftResult(run_id, "skipped", version, n, reason=reason, metrics={"reason": reason})


def _measure(settings: Settings, run_id: str, router, version: str | None) -> LiveDriftResult:  # noqa: ANN001
    if router is None:
        return _skipped(run_id, None, 0, "no champion router: nothing routes, nothing to compare")
    reference = router.reference_scores(settings.strong_router_name, settings.weak_router_name)
    if reference is None:
        return _skipped(run_id, version, 0, f"router version {version} carries no reference prompts "
                                            "(trained before routerops.mf-router/2): retrain it")
    window = read_window(settings, version, settings.live_drift_window_hours)
    n = len(window.scores)
    if n < settings.live_drift_min_requests:
        return _skipped(run_id, version, n, f"{n} scored requests of router version {version} in the last "
                                            f"{settings.live_drift_window_hours:g} h, fewer than "
                                            f"ROUTEROPS_LIVE_DRIFT_MIN_REQUESTS={settings.live_drift_min_requests}")
    ref_df, cur_df = frames(router, window, reference)
    drift = drift_report(ref_df, cur_df, timestamp=datetime.now(UTC).replace(tzinfo=None), tags=["live-drift"],
                         metadata={"live_drift_run_id": run_id, "router_version": str(version)})
    detected = decide(drift, settings.live_drift_share)
    share = float((window.scores >= window.alphas).mean())
    expected = expected_share(reference, window.alphas)
    shifted = abs(share - expected) > settings.live_strong_share_tolerance
    m: dict[str, Any] = {
        "router_version": version, "n_requests": n, "n_with_prompt": sum(p is not None for p in window.prompts),
        "n_reference": len(reference), "window_hours": settings.live_drift_window_hours,
        "strong_share": share, "expected_strong_share": expected,
        "strong_share_tolerance": settings.live_strong_share_tolerance, "strong_share_by_hour": share_by_hour(window),
        "score_mean": {"live": float(window.scores.mean()), "reference": float(reference.mean())},
        "drift": drift.to_dict(), "drift_share_threshold": settings.live_drift_share, "drift_detected": detected,
        "_drift": drift,
    }
    key = f"{settings.router_model_name}:{settings.strong_router_name}>{settings.weak_router_name}"
    conditions = [
        alerts_mod.Condition(
            "live_drift", f"live_drift:{key}", detected,
            message=(f"live traffic drifted from router version {version}'s reference: "
                     f"{', '.join(drift.drifted_columns)} (share {drift.drift_share:.2f})" if detected else ""),
            payload={"live_drift_run_id": run_id, "drifted_columns": drift.drifted_columns,
                     "drift_share": drift.drift_share, "router_version": version, "n_requests": n}),
        alerts_mod.Condition(
            "strong_share_shift", f"strong_share_shift:{key}", shifted,
            message=(f"strong-call share {share:.3f} over the last {settings.live_drift_window_hours:g} h vs "
                     f"{expected:.3f} expected from router version {version}'s reference at the same alphas"
                     if shifted else ""),
            payload={"live_drift_run_id": run_id, "strong_share": share, "expected_strong_share": expected,
                     "router_version": version, "n_requests": n}),
    ]
    with session_scope(settings) as s:
        opened = [a.id for a in alerts_mod.process_conditions(s, settings, conditions)]
    m["alerts_opened"] = opened
    return LiveDriftResult(run_id, "ok", version, n, share, expected, detected, drift.drift_share,
                           metrics=m, alerts_opened=opened)


def summary_row(result: LiveDriftResult) -> dict[str, float]:
    nan = float("nan")
    score_col = result.metrics.get("drift", {}).get("columns", {}).get(SCORE_COLUMN, {})
    return {
        "live_strong_share": nan if result.strong_share is None else result.strong_share,
        "live_expected_strong_share": nan if result.expected_strong_share is None else result.expected_strong_share,
        "live_drift_share": nan if result.drift_share is None else result.drift_share,
        "live_router_score_drift": float(score_col.get("score") or nan) if score_col else nan,
        "live_requests": float(result.n_requests),
    }
