"""GET /v1/models: the strategies and plain models a client can ask for, with their availability."""

from __future__ import annotations

from fastapi import APIRouter

from routerops.redact import redact
from routerops.serving.api.deps import StateDep, user
from routerops.serving.auth import Principal

router = APIRouter()


@router.get("/v1/models")
async def list_models(state: StateDep, _principal: Principal = user) -> dict:
    data = []
    for name, strategy in state.strategies.items():
        reason = strategy.unavailable()
        kind = "strategy" if name in ("router", "cascade", "speculative") else "model"
        data.append({"id": name, "object": "model", "created": 0, "owned_by": "routerops",
                     "routerops": {"kind": kind, "available": reason is None,
                                   "unavailable_reason": redact(reason) if reason else None}})
    return {"object": "list", "data": data}
