"""Alpha recalibration after a replay.

Mode (from settings): `target_pgr` set -> the alpha reaching that PGR at the least strong share on
the replay's labelled traces (labels are needed for PGR, so only the golden set can answer);
otherwise `target_strong_share` set -> the alpha keeping that share of calls on the strong model,
computed on recent live router scores (request_logs.p_strong_wins) when at least
`recalibration_min_requests` arrived within `recalibration_window_hours`, else on the replay's
scores. Neither set -> no recalibration. The proposal goes through routerops.alpha.propose_alpha:
within `alpha_max_step` of the live alpha it is active at once, beyond it waits as "pending" for
`routerops alpha approve ID`. Changes smaller than MIN_CHANGE are not recorded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from routerops import metrics
from routerops.alpha import live_alpha, propose_alpha
from routerops.db.models import RequestLog
from routerops.settings import Settings

log = logging.getLogger(__name__)

MIN_CHANGE = 1e-3


@dataclass
class Recalibration:
    mode: str | None  # "target_pgr" | "target_strong_share" | None
    recommended: float | None
    live: float
    change_id: int | None = None
    status: str | None = None  # active | pending | None (no change recorded)
    reason: str = ""
    source_of_scores: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def recent_live_scores(session: Session, settings: Settings) -> np.ndarray:
    since = datetime.now(UTC) - timedelta(hours=settings.recalibration_window_hours)
    rows = session.scalars(select(RequestLog.p_strong_wins).where(
        RequestLog.created_at >= since, RequestLog.p_strong_wins.is_not(None)))
    return np.asarray([float(x) for x in rows], dtype=np.float64)


def recalibrate(session: Session, settings: Settings, *, scores: np.ndarray, weak_q: np.ndarray,
                strong_q: np.ndarray, router_version: str | None, monitor_run_id: str | None,
                apply: bool = True, router: object | None = None) -> Recalibration:
    """Recommend (and, with apply, propose) an alpha from the replay's labelled traces. `router` (the
    live one) decides which alpha is live now (routerops/alpha.py)."""
    live = live_alpha(session, settings, router).alpha  # type: ignore[arg-type]
    if settings.target_pgr is not None:
        mode = "target_pgr"
        if len(scores) == 0:
            return Recalibration(mode, None, live, reason="no labelled traces to calibrate on")
        try:
            recommended = metrics.alpha_for_pgr(scores, weak_q, strong_q, settings.target_pgr)
        except ValueError as exc:  # no gap, or target out of reach: say so, change nothing
            return Recalibration(mode, None, live, reason=str(exc))
        curve = metrics.pgr_curve(scores, weak_q, strong_q)
        share = metrics.strong_share_at(scores, recommended)
        reason = (f"reach PGR {settings.target_pgr:.3f} at the least strong share on the golden replay "
                  f"(n={len(scores)}, strong share {share:.3f}, q_weak {curve.q_weak:.3f}, "
                  f"q_strong {curve.q_strong:.3f})")
        source = "golden"
    elif settings.target_strong_share is not None:
        mode = "target_strong_share"
        live_scores = recent_live_scores(session, settings)
        if len(live_scores) >= settings.recalibration_min_requests:
            use, source = live_scores, "request_logs"
        else:
            use, source = scores, "golden"
        if len(use) == 0:
            return Recalibration(mode, None, live, reason="no router scores to calibrate on")
        recommended = metrics.alpha_for_strong_share(use, settings.target_strong_share)
        reason = (f"keep strong share {settings.target_strong_share:.3f} on {len(use)} {source} scores "
                  f"(realised {metrics.strong_share_at(use, recommended):.3f})")
    else:
        return Recalibration(None, None, live, reason="no target configured (target_pgr / target_strong_share)")
    result = Recalibration(mode, float(recommended), live, reason=reason, source_of_scores=source)
    if apply and abs(recommended - live) >= MIN_CHANGE:
        change = propose_alpha(session, settings, float(recommended), reason=reason, source="recalibration",
                               router_version=router_version, monitor_run_id=monitor_run_id)
        result.change_id, result.status = change.id, change.status
        log.info("alpha %.4f -> %.4f (%s): %s", live, recommended, change.status, reason)
    return result
