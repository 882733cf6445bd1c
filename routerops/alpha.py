"""The live routing threshold alpha, and where it comes from, in this order:

1. the newest active alpha_history row that applies to the live router (set or approved by a person,
   or a bounded recalibration by the monitor; a row recorded for another router version does not
   apply, since each router's scores sit on their own scale);
2. `ROUTEROPS_ALPHA`, when it is set explicitly;
3. the router's own calibration: the alpha that sends `ROUTEROPS_TARGET_STRONG_SHARE` (default 0.3)
   of the reference prompts stored with the router to strong (training/router_model.py);
4. the default 0.5.

Serving reads it; monitoring's recalibration and `routerops alpha set|approve` write it. A change
beyond the configured bound is stored as "pending" and only goes live when a person approves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from routerops.db.models import AlphaChange
from routerops.settings import Settings


@dataclass(frozen=True)
class LiveAlpha:
    alpha: float
    source: str  # the alpha_history row's source, "settings", "router-calibration" or "default"
    change_id: int | None
    reason: str = ""


class CalibratedRouter(Protocol):
    version: str | None

    def alpha_for_share(self, share: float, strong: str | None = None, weak: str | None = None) -> float | None: ...


def live_alpha(session: Session, settings: Settings, router: CalibratedRouter | None = None) -> LiveAlpha:
    query = select(AlphaChange).where(AlphaChange.status == "active")
    if router is not None and router.version is not None:
        query = query.where(or_(AlphaChange.router_version.is_(None), AlphaChange.router_version == router.version))
    row = session.scalars(query.order_by(AlphaChange.id.desc()).limit(1)).first()
    if row is not None:
        return LiveAlpha(row.alpha, row.source, row.id, f"alpha_history #{row.id}: {row.reason}"[:300])
    if "alpha" in settings.model_fields_set:
        return LiveAlpha(settings.alpha, "settings", None, "ROUTEROPS_ALPHA")
    share = settings.target_strong_share
    if router is not None and share is not None:
        try:
            alpha = router.alpha_for_share(share, settings.strong_router_name, settings.weak_router_name)
        except (LookupError, ValueError):  # the router does not know the configured pair
            alpha = None
        if alpha is not None:
            return LiveAlpha(alpha, "router-calibration", None,
                             f"sends {share:.0%} of router version {router.version}'s reference prompts to strong")
    return LiveAlpha(settings.alpha, "default", None, "no alpha set, no router calibration")


def propose_alpha(session: Session, settings: Settings, alpha: float, *, reason: str, source: str,
                  router_version: str | None = None, monitor_run_id: str | None = None,
                  max_step: float | None = None) -> AlphaChange:
    """Record a new alpha. Within max_step of the live value it is active at once; beyond, pending."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    current = live_alpha(session, settings)
    bound = settings.alpha_max_step if max_step is None else max_step
    status = "active" if abs(alpha - current.alpha) <= bound + 1e-12 else "pending"
    change = AlphaChange(alpha=alpha, previous_alpha=current.alpha, status=status, source=source,
                         reason=reason, router_version=router_version, monitor_run_id=monitor_run_id)
    session.add(change)
    session.flush()
    return change


def approve_alpha(session: Session, change_id: int, approved_by: str) -> AlphaChange:
    change = session.get(AlphaChange, change_id)
    if change is None:
        raise LookupError(f"no alpha change with id {change_id}")
    if change.status != "pending":
        raise ValueError(f"alpha change {change_id} is {change.status}, not pending")
    change.status = "active"
    change.approved_by = approved_by
    return change
