"""Alerts: one open row per dedupe key until the condition recovers; a Slack-compatible webhook.

A monitor run reports, per dedupe key, whether its condition holds now. A condition that starts
holding opens an alert row and posts it ({"text", "blocks"}) with retries and exponential backoff;
while it keeps holding nothing more is sent (one regression = one alert); when it stops holding the
row is resolved, and a later regression opens (and sends) a new one. An open alert whose delivery
failed is re-sent on the next run. Serving's /metrics reads `active_alert_gauges(session)`; the
monitor also writes the same gauges to a Prometheus textfile (node-exporter textfile collector).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from prometheus_client import CollectorRegistry, Gauge, write_to_textfile
from sqlalchemy import select
from sqlalchemy.orm import Session

from routerops.db.models import Alert
from routerops.db.monitor_gauges import KINDS, active_alert_gauges, open_category_regressions  # noqa: F401
from routerops.settings import Settings

if TYPE_CHECKING:
    from routerops.monitoring.categories import CategoryFigures

log = logging.getLogger(__name__)

# Kinds whose gauge always exists on /metrics (0 when none is open); any other kind gets its gauge
# from its first alert on (active_alert_gauges).


@dataclass
class Condition:
    kind: str
    dedupe_key: str
    active: bool | None  # None: not measurable this run (e.g. no labels): leave any open alert as is
    message: str = ""
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class Delivery:
    delivered: bool
    attempts: int
    error: str | None = None


def slack_payload(alert_kind: str, message: str, fields: dict[str, Any]) -> dict[str, Any]:
    lines = "\n".join(f"*{k}*: {v}" for k, v in fields.items())
    return {
        "text": f"[routerops] {alert_kind}: {message}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": f"routerops {alert_kind}"}},
            {"type": "section", "text": {"type": "mrkdwn", "text": message}},
            *([{"type": "section", "text": {"type": "mrkdwn", "text": lines}}] if lines else []),
        ],
    }


def send_webhook(url: str, payload: dict[str, Any], *, retries: int = 3, backoff_s: float = 0.5,
                 timeout_s: float = 10.0) -> Delivery:
    """POST JSON; retry on connection errors, 429 and 5xx with backoff_s * 2**attempt between tries.
    A 4xx other than 429 is not retried (the payload or URL is wrong; retrying will not help)."""

    error = None
    attempts = 0
    for attempt in range(retries + 1):
        attempts += 1
        try:
            resp = httpx.post(url, json=payload, timeout=timeout_s)
            if resp.status_code < 300:
                return Delivery(True, attempts)
            error = f"HTTP {resp.status_code}: {resp.text[:200]}"
            if 400 <= resp.status_code < 500 and resp.status_code != 429:
                break
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        if attempt < retries:
            time.sleep(backoff_s * 2**attempt)
    log.warning("webhook delivery failed after %d attempt(s): %s", attempts, error)
    return Delivery(False, attempts, error)


def _deliver(alert: Alert, settings: Settings) -> None:
    if not settings.alert_webhook_url:
        alert.last_error = "no webhook configured (ROUTEROPS_ALERT_WEBHOOK_URL)"
        return
    result = send_webhook(settings.alert_webhook_url, alert.payload.get("webhook") or {},
                          retries=settings.alert_webhook_retries, backoff_s=settings.alert_webhook_backoff_s)
    alert.attempts = (alert.attempts or 0) + result.attempts
    alert.delivered = result.delivered
    alert.last_error = result.error


def _regressed(pgr: float | None, baseline: float | None, tolerance: float) -> bool | None:
    """PGR below its baseline by more than `tolerance`; None when either is undefined (null or NaN)."""
    if pgr is None or baseline is None or not (math.isfinite(pgr) and math.isfinite(baseline)):
        return None
    return pgr < baseline - tolerance


def pgr_regression_condition(dedupe_key: str, pgr: float | None, baseline: float | None, tolerance: float,
                             *, alpha: float, golden_name: str, payload: dict[str, Any]) -> Condition:
    """PGR below its baseline by more than `tolerance`. A PGR that cannot be computed (None: strong
    not better than weak, or no labels) is never a regression: the condition is unmeasurable
    (active None), so it neither opens nor resolves an alert."""
    regressed = _regressed(pgr, baseline, tolerance)
    message = (f"PGR at alpha {alpha:.3f} is {pgr:.3f}, baseline {baseline:.3f} (tolerance {tolerance}) "
               f"on {golden_name}") if regressed else ""
    return Condition("pgr_regression", dedupe_key, regressed, message=message, payload=payload)


def category_regression_condition(golden_key: str, figures: CategoryFigures, tolerance: float, *, alpha: float,
                                  golden_name: str, min_traces: int, run_id: str | None = None) -> Condition:
    """One category's PGR below its baseline by more than `tolerance` (the aggregate rule), keyed per
    category. A category under `min_traces` labelled traces (not reported) or with a null PGR or
    baseline is unmeasurable (active None): it neither opens nor resolves that category's alert."""
    f = figures
    regressed = _regressed(f.pgr, f.baseline_pgr, tolerance) if f.reported else None
    message = (f"category {f.category!r}: PGR at alpha {alpha:.3f} is {f.pgr:.3f}, baseline {f.baseline_pgr:.3f} "
               f"(tolerance {tolerance}, {f.n_labelled} labelled traces) on {golden_name}") if regressed else ""
    payload = {"run_id": run_id, "category": f.category, "pgr": f.pgr, "baseline_pgr": f.baseline_pgr,
               "n_labelled": f.n_labelled, "min_traces": min_traces, "alpha": alpha, "golden_set": golden_name}
    key = f"category_regression:{golden_key}:{f.category}"
    if len(key) > 200:  # alerts.dedupe_key is VARCHAR(200): a long category name goes in as its hash
        key = f"category_regression:{golden_key}:sha1-{hashlib.sha1(f.category.encode()).hexdigest()}"
    return Condition("category_regression", key, regressed, message=message, payload=payload)


def category_conditions(golden_key: str, rows: list[CategoryFigures], tolerance: float, *, alpha: float,
                        golden_name: str, min_traces: int, run_id: str | None = None) -> list[Condition]:
    """One condition per category; none for a set with a single category (its figures are the whole
    set's, and the PGR alert already covers them: one regression, one alert)."""
    if len(rows) < 2:
        return []
    return [category_regression_condition(golden_key, r, tolerance, alpha=alpha, golden_name=golden_name,
                                          min_traces=min_traces, run_id=run_id) for r in rows]


def process_conditions(session: Session, settings: Settings, conditions: list[Condition],
                       monitor_run_id: str | None = None) -> list[Alert]:
    """Open, keep or resolve one alert per condition; returns the alerts opened by this call."""
    opened: list[Alert] = []
    now = datetime.now(UTC)
    for cond in conditions:
        if cond.active is None:
            continue
        open_alert = session.scalars(
            select(Alert).where(Alert.dedupe_key == cond.dedupe_key, Alert.status == "open")
            .order_by(Alert.id.desc()).limit(1)
        ).first()
        if cond.active and open_alert is None:
            alert = Alert(kind=cond.kind, dedupe_key=cond.dedupe_key, status="open", message=cond.message,
                          payload={**cond.payload, "webhook": slack_payload(cond.kind, cond.message, cond.payload)},
                          monitor_run_id=monitor_run_id, attempts=0, delivered=False)
            session.add(alert)
            session.flush()
            _deliver(alert, settings)
            opened.append(alert)
            log.warning("alert opened: %s (%s) delivered=%s", cond.kind, cond.message, alert.delivered)
        elif cond.active and open_alert is not None:
            if not open_alert.delivered and settings.alert_webhook_url:
                _deliver(open_alert, settings)  # an earlier delivery failed: try again now
        elif not cond.active and open_alert is not None:
            open_alert.status = "resolved"
            open_alert.resolved_at = now
            log.info("alert resolved: %s", cond.dedupe_key)
    session.flush()
    return opened


def write_textfile(session: Session, settings: Settings, extra: dict[str, float] | None = None) -> Path:
    """The gauges (and the last run's figures) as a Prometheus textfile in data_dir/metrics/."""

    registry = CollectorRegistry()
    for name, value in {**active_alert_gauges(session), **(extra or {})}.items():
        Gauge(name, f"routerops monitoring: {name}", registry=registry).set(value)
    path = settings.data_dir / "metrics" / "routerops_monitoring.prom"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
    return path
