"""The live routing threshold alpha: the newest active row of alpha_history, else the setting.

Serving reads it; monitoring's recalibration and `routerops alpha set|approve` write it. A change
beyond the configured bound is stored as "pending" and only goes live when a person approves it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from routerops.db.models import AlphaChange
from routerops.settings import Settings


@dataclass(frozen=True)
class LiveAlpha:
    alpha: float
    source: str  # "settings" or the alpha_history row's source
    change_id: int | None


def live_alpha(session: Session, settings: Settings) -> LiveAlpha:
    row = session.scalars(
        select(AlphaChange).where(AlphaChange.status == "active").order_by(AlphaChange.id.desc()).limit(1)
    ).first()
    if row is None:
        return LiveAlpha(settings.alpha, "settings", None)
    return LiveAlpha(row.alpha, row.source, row.id)


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
