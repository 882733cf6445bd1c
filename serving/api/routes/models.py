"""GET /v1/models: the strategies and plain models a client can ask for, with their availability."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from routerops.redact import redact
from routerops.serving.api.deps import StateDep, user
from routerops.serving.auth import Principal

router = APIRouter()


@router.get("/v1/models")
async def list_models(state: StateDep, _principal: Principal = user) -> dict:
    data = []
    fleet = state.fleet.fleet if state.fleet is not None else None
    # a strategy's availability may read the database (the cascade's config): not on the event loop
    reasons = await run_in_threadpool(lambda: {name: s.unavailable() for name, s in state.strategies.items()})
    for name in state.strategies:
        reason = reasons[name]
        kind = "strategy" if name in ("router", "cascade", "speculative") else "model"
        info = {"kind": kind, "available": reason is None, "unavailable_reason": redact(reason) if reason else None}
        entry = fleet.get(name) if fleet is not None else None
        if entry is not None:  # a fleet model: its prices and tags
            info.update(price_in=entry.price_in, price_out=entry.price_out, tags=list(entry.tags))
        data.append({"id": name, "object": "model", "created": 0, "owned_by": "routerops", "routerops": info})
    return {"object": "list", "data": data}
