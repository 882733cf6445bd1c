"""GET /healthz (no auth: status and fixed reasons only), GET /admin/status (admin: the detail, credentials
masked) and GET /metrics (Prometheus, with the monitor's active alerts and latest run as gauges)."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from routerops.db import session_scope
from routerops.db.monitor_gauges import MonitorGauges, read_monitor_gauges
from routerops.db.session import check_sqlite_file
from routerops.redact import redact
from routerops.serving.api.deps import ServingState, StateDep, admin, user
from routerops.serving.auth import Principal

log = logging.getLogger("routerops.serving.app")  # the logger name the server log has always used

router = APIRouter()


def _database_problem(state: ServingState) -> str | None:
    """Why the database cannot take writes now, or None (no query: a stat of a SQLite file)."""
    try:
        check_sqlite_file(state.settings.resolved_database_url)
    except Exception as exc:  # noqa: BLE001 - SqliteFileGone: the file was deleted under us
        return redact(exc)
    writer = state.request_log
    if writer is not None and writer.failing:
        return f"request-log writes failing; {len(writer)} row(s) buffered"
    return None


def _breakers(state: ServingState) -> dict:
    if state.guard is None:
        return {}
    return {role: {k: v for k, v in b.items() if k != "name"} for role, b in state.guard.snapshot().items()}


def _reasons(state: ServingState, breakers: dict, database: str | None) -> list[str]:
    """Fixed phrases, never an exception's text: an unauthenticated caller reads them."""
    reasons = []
    if state.router_state.last_error:
        reasons.append("router reload failing")
    reasons += [f"{role} backend circuit {b['state']}" for role, b in breakers.items() if b["state"] != "closed"]
    if state.guard is not None and state.fleet is not None and state.fleet.fleet.from_file:  # the fleet's others
        pair = {state.pair.weak.name, state.pair.strong.name}
        reasons += [f"fleet model {name} circuit {b['state']}" for name, b in state.guard.fleet_snapshot().items()
                    if name not in pair and b["state"] != "closed"]
    if database:
        reasons.append("database unavailable")
    return reasons


@router.get("/healthz")
async def healthz(state: StateDep) -> dict:
    """Liveness for load balancers and strangers: ok/degraded and why, in fixed words (detail: /admin/status)."""
    reasons = _reasons(state, _breakers(state), _database_problem(state))
    return {"status": "degraded" if reasons else "ok", "reasons": reasons}


@router.get("/admin/status")
async def admin_status(state: StateDep, _principal: Principal = admin) -> dict:
    """What /healthz summarises, in detail (errors with credentials masked)."""
    router_state, pair = state.router_state, state.pair
    snap = router_state.snapshot
    breakers = _breakers(state)
    database = _database_problem(state)
    reasons = _reasons(state, breakers, database)
    # the fleet (its dial may be calibrated now) and the strategies' availability (the cascade's may read
    # the database) are worked out off the event loop
    fleet = await run_in_threadpool(state.fleet.health, state.guard) if state.fleet is not None else None
    strategies = await run_in_threadpool(lambda: {name: s.unavailable() or "available"
                                                  for name, s in state.strategies.items()})
    return {
        "status": "degraded" if reasons else "ok", "reasons": reasons,
        "router_model": state.settings.router_model_name, "router_version": snap.version,
        "router_loaded_at": snap.loaded_at, "alpha": snap.alpha, "alpha_source": snap.alpha_source,
        "alpha_reason": snap.alpha_reason,
        "routing": "router" if snap.router is not None else redact(snap.no_router_reason),
        "last_reload_error": router_state.last_error, "last_reload_check": router_state.last_check,
        "database": database or "ok",
        "backends": {role: {"name": b.name, "kind": type(b).__name__,
                            **({"circuit": breakers[role]} if role in breakers else {})}
                     for role, b in (("weak", pair.weak), ("strong", pair.strong))},
        "failover": state.settings.failover,
        "strategies": strategies,
        "fleet": fleet,
    }


@router.get("/metrics")
async def prometheus(state: StateDep, _principal: Principal = user) -> Response:
    def read_monitor() -> MonitorGauges:
        with session_scope(state.settings) as session:
            return read_monitor_gauges(session)

    try:  # the monitor writes alerts and runs to the shared database; /metrics shows them as gauges
        gauges = await run_in_threadpool(read_monitor)
        state.metrics.set_alert_gauges(gauges.alerts)
        state.metrics.set_monitor(gauges)
    except Exception as exc:  # noqa: BLE001 - metrics must still render if the DB hiccups
        log.warning("could not read alert gauges: %s", exc)
    if state.guard is not None:  # breakers change state inside requests; read them now
        state.guard.refresh_metrics()
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
