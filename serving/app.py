"""The OpenAI-compatible API: `create_app(settings) -> FastAPI`.

Endpoints: POST /v1/chat/completions (streaming included), GET /v1/models, POST /v1/feedback,
GET /healthz (no auth: ok/degraded and fixed reasons), GET /metrics, and admin: GET /admin/status,
POST /admin/reload, POST /admin/ingest, GET /admin/feedback. /docs, /redoc and /openapi.json are
public unless ROUTEROPS_PUBLIC_DOCS=false (docs/security.md). Every chat response carries the `routerops` field and x-routerops-* headers
(see routerops.serving.schemas.RouterOpsInfo). Blocking work (models, database, MLflow) runs in a threadpool.

The routes live in serving/api/routes (one module per resource), their shared dependencies (state,
auth) in serving/api/deps.py; this factory only builds the state and assembles them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from routerops.backends.base import Backend
from routerops.backends.factory import BackendPair, make_fleet_backends, make_pair
from routerops.fleet import load_fleet, pair_fleet, settings_for_fleet
from routerops.redact import install_log_redaction
from routerops.serving.api.deps import ServingState
from routerops.serving.api.main import api_router
from routerops.serving.api.middleware import INGEST_MAX_BYTES, BodyLimitMiddleware, ErrorCountMiddleware
from routerops.serving.auth import Authenticator
from routerops.serving.errors import install_error_handlers
from routerops.serving.exploration import Explorer
from routerops.serving.failover import Guard
from routerops.serving.feedback import FeedbackRateLimiter
from routerops.serving.fleet import build_fleet
from routerops.serving.metrics import ServingMetrics
from routerops.serving.request_log import Prices, RequestLogWriter
from routerops.serving.routing import RouterState
from routerops.serving.strategies import ServingContext, build_strategies
from routerops.settings import Settings

__all__ = ["INGEST_MAX_BYTES", "BodyLimitMiddleware", "create_app"]

log = logging.getLogger(__name__)


def bound_registry_calls(settings: Settings) -> None:
    """MLflow reads its HTTP retry policy from the environment at each call; an operator's explicit
    MLFLOW_HTTP_REQUEST_* setting wins."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(settings.serving_registry_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(max(1, settings.serving_registry_timeout_s))))


def create_app(settings: Settings, pair: BackendPair | None = None,
               backends: dict[str, Backend] | None = None) -> FastAPI:
    """The API over the configured fleet (ROUTEROPS_FLEET_FILE) or pair (or `pair`, for callers that
    built their own backends; `backends` replaces fleet models' backends by name)."""
    install_log_redaction()  # URIs in any log line of the server (ours, uvicorn's, MLflow's) are masked
    bound_registry_calls(settings)
    if settings.fleet_file is not None:
        fleet = load_fleet(settings.fleet_file)
        settings = settings_for_fleet(settings, fleet)
        fleet_backends, fleet_pair = make_fleet_backends(settings, fleet, overrides=backends)
        pair = pair or fleet_pair
    else:
        fleet = None
        pair = pair or make_pair(settings)
    router_state = RouterState(settings)
    metrics = ServingMetrics()
    router_state.on_change.append(lambda snap: metrics.set_router(snap.version, snap.alpha))
    metrics.set_router(None, settings.alpha)
    prices = Prices.from_settings(settings, pair.weak.name, pair.strong.name)
    if fleet is None:  # the two-model settings: a fleet of two
        fleet = pair_fleet(settings, pair.weak.name, pair.strong.name, prices.by_role)
        fleet_backends = {pair.weak.name: pair.weak, pair.strong.name: pair.strong}
    guard = Guard(settings, pair, metrics, fleet=fleet_backends)
    ctx = ServingContext(settings, pair, router_state, prices, guard)
    strategies = build_strategies(ctx)
    fleet_serving = build_fleet(ctx, fleet, fleet_backends, strategies)
    request_log = RequestLogWriter(settings, metrics)
    explorer = Explorer(settings, pair, ctx.prices, metrics, fleet=fleet, fleet_backends=fleet_backends)
    state = ServingState(settings=settings, pair=pair, router_state=router_state, metrics=metrics,
                         strategies=strategies, auth=Authenticator(settings), guard=guard, request_log=request_log,
                         fleet=fleet_serving, explorer=explorer)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(fleet_serving.router.tokens.seed, settings)
        result = await run_in_threadpool(router_state.reload)
        if result["error"]:
            metrics.reload_errors.inc()
            log.warning("initial router load: %s", result["error"])
        # imports behind the strategies' availability checks (torch...) happen here, not in a request
        await run_in_threadpool(lambda: [s.unavailable() for s in strategies.values()])
        router_state.start()
        request_log.start()
        try:
            yield
        finally:
            router_state.stop()
            await run_in_threadpool(explorer.stop)
            await run_in_threadpool(request_log.stop)

    docs = settings.public_docs  # the API's description only, no data (docs/security.md)
    app = FastAPI(title="routerops", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible LLM routing: router, cascade and speculative strategies.",
                  docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
                  openapi_url="/openapi.json" if docs else None)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(ErrorCountMiddleware, metrics=metrics)  # added last: outermost, sees the 413s too
    install_error_handlers(app)
    app.state.serving = state
    app.state.feedback_limiter = FeedbackRateLimiter(settings.feedback_rate_limit)
    app.state.settings, app.state.router_state, app.state.metrics = settings, router_state, metrics
    app.state.pair, app.state.strategies = pair, strategies
    app.include_router(api_router)
    return app
