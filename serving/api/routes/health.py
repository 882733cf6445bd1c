"""GET /healthz (no auth) and GET /metrics (Prometheus, with the monitor's active alerts and latest run as gauges)."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from routerops.db import session_scope
from routerops.db.monitor_gauges import MonitorGauges, read_monitor_gauges
from routerops.serving.api.deps import StateDep, user
from routerops.serving.auth import Principal

log = logging.getLogger("routerops.serving.app")  # the logger name the server log has always used

router = APIRouter()


@router.get("/healthz")
async def healthz(state: StateDep) -> dict:
    router_state, pair = state.router_state, state.pair
    snap = router_state.snapshot
    breakers = {role: {k: v for k, v in b.items() if k != "name"} for role, b in state.guard.snapshot().items()} \
        if state.guard is not None else {}
    return {
        "status": "degraded" if router_state.last_error or any(b["state"] != "closed" for b in breakers.values())
        else "ok",
        "router_model": state.settings.router_model_name, "router_version": snap.version,
        "router_loaded_at": snap.loaded_at, "alpha": snap.alpha, "alpha_source": snap.alpha_source,
        "alpha_reason": snap.alpha_reason,
        "routing": "router" if snap.router is not None else snap.no_router_reason,
        "last_reload_error": router_state.last_error, "last_reload_check": router_state.last_check,
        "backends": {role: {"name": b.name, "kind": type(b).__name__,
                            **({"circuit": breakers[role]} if role in breakers else {})}
                     for role, b in (("weak", pair.weak), ("strong", pair.strong))},
        "failover": state.settings.failover,
        "strategies": {name: s.unavailable() or "available" for name, s in state.strategies.items()},
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
