"""Dependencies shared by the routes: the app's serving state and API-key auth (both via request.app.state).

Error answers are counted by ErrorCountMiddleware, not here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from routerops.backends.factory import BackendPair
from routerops.serving.auth import Authenticator, AuthError, Principal
from routerops.serving.errors import ApiError
from routerops.serving.exploration import Explorer
from routerops.serving.failover import Guard
from routerops.serving.metrics import ServingMetrics
from routerops.serving.request_log import RequestLogWriter
from routerops.serving.routing import RouterState
from routerops.serving.strategies import Strategy
from routerops.settings import Settings


@dataclass(frozen=True)
class ServingState:
    """What the app factory builds once and every route reads (stored as app.state.serving)."""

    settings: Settings
    pair: BackendPair
    router_state: RouterState
    metrics: ServingMetrics
    strategies: dict[str, Strategy]
    auth: Authenticator
    guard: Guard | None = None  # failover and the backends' circuit breakers
    request_log: RequestLogWriter | None = None  # buffered, never-raising request-log writes
    fleet: Any = None  # routerops.serving.fleet.FleetServing: the fleet table, its decision and strategies
    explorer: Explorer | None = None  # background answers of the other model (exploration)


def get_state(request: Request) -> ServingState:
    return request.app.state.serving


StateDep = Annotated[ServingState, Depends(get_state)]


def require(scope: str):  # noqa: ANN201
    """A dependency that authenticates the request's key and checks it has `scope`."""

    async def dependency(request: Request) -> Principal:
        state = get_state(request)
        try:
            principal = await run_in_threadpool(state.auth.authenticate, request.headers.get("authorization"),
                                                request.headers.get("x-api-key"))
        except AuthError as exc:
            headers = {"www-authenticate": 'Bearer realm="routerops"'} if exc.status == 401 else None
            raise ApiError(exc.status, exc.message, code="invalid_api_key", headers=headers) from None
        except SQLAlchemyError as exc:  # a database key cannot be checked while the database is down
            raise ApiError(503, f"cannot check the API key: the key store is unreachable ({type(exc).__name__}); "
                                "retry later", code="auth_unavailable", headers={"retry-after": "5"}) from None
        if scope == "admin" and not principal.is_admin:
            raise ApiError(403, f"key {principal.name!r} has scope 'user'; this endpoint needs 'admin'",
                           code="insufficient_scope")
        return principal

    return dependency


user, admin = Depends(require("user")), Depends(require("admin"))
