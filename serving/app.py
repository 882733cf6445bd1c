"""The OpenAI-compatible API: `create_app(settings) -> FastAPI`.

Endpoints: POST /v1/chat/completions (streaming included), GET /v1/models, POST /v1/feedback,
GET /healthz (no auth), GET /metrics, and admin: POST /admin/reload, POST /admin/ingest,
GET /admin/feedback. Every chat response carries the `routerops` field and x-routerops-* headers
(see serving.schemas.RouterOpsInfo). Blocking work (models, database, MLflow) runs in a threadpool.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from routerops.backends.base import BackendError, GenerationParams
from routerops.backends.factory import BackendPair, make_pair
from routerops.db.models import new_id
from routerops.settings import Settings
from serving.auth import Authenticator, AuthError, Principal
from serving.errors import ApiError, error_body, install_error_handlers, validation_message
from serving.metrics import ServingMetrics
from serving.request_log import LogEntry, Prices, write_entry
from serving.routing import RouterState
from serving.schemas import ChatCompletionRequest, FeedbackRequest, RouterOpsInfo
from serving.strategies import Outcome, ServingContext, Strategy, StrategyUnavailable, build_strategies

log = logging.getLogger(__name__)

INGEST_MAX_BYTES = 512 * 1024 * 1024


class BodyLimitMiddleware:
    """413 before reading a body whose Content-Length is over the limit (chat reads re-check size)."""

    def __init__(self, app, max_bytes: int):  # noqa: ANN001
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):  # noqa: ANN001
        if scope["type"] == "http":
            limit = INGEST_MAX_BYTES if scope["path"].startswith("/admin/ingest") else self.max_bytes
            for name, value in scope.get("headers", []):
                if name == b"content-length" and value.isdigit() and int(value) > limit:
                    body = error_body(f"request body of {int(value)} bytes is over the limit of {limit} bytes",
                                      "invalid_request_error", None, "request_too_large")
                    await JSONResponse(body, status_code=413)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _headers(info: RouterOpsInfo) -> dict[str, str]:
    return {
        "x-routerops-model": info.model, "x-routerops-strategy": info.strategy,
        "x-routerops-p-strong": "" if info.p_strong_wins is None else f"{info.p_strong_wins:.6f}",
        "x-routerops-alpha": "" if info.alpha is None else f"{info.alpha:.6f}",
        "x-routerops-cost-usd": f"{info.estimated_cost_usd:.8f}", "x-routerops-request-id": info.request_id,
        "x-routerops-router-version": info.router_version or "",
    }


def _info(out: Outcome, request_id: str) -> RouterOpsInfo:
    return RouterOpsInfo(model=out.model, strategy=out.strategy, p_strong_wins=out.p_strong_wins, alpha=out.alpha,
                         router_version=out.router_version, estimated_cost_usd=round(out.cost_usd, 10),
                         request_id=request_id, reason=out.reason, escalated=out.escalated,
                         routing_latency_ms=None if out.routing_ms is None else round(out.routing_ms, 3),
                         probe_score=out.probe_score, speculative=out.spec)


def create_app(settings: Settings, pair: BackendPair | None = None) -> FastAPI:
    """The API over the configured pair (or `pair`, for callers that built their own backends)."""
    pair = pair or make_pair(settings)
    router_state = RouterState(settings)
    metrics = ServingMetrics()
    router_state.on_change.append(lambda snap: metrics.set_router(snap.version, snap.alpha))
    metrics.set_router(None, settings.alpha)
    ctx = ServingContext(settings, pair, router_state, Prices.from_settings(settings, pair.weak.name, pair.strong.name))
    strategies = build_strategies(ctx)
    auth = Authenticator(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        result = await run_in_threadpool(router_state.reload)
        if result["error"]:
            metrics.reload_errors.inc()
            log.warning("initial router load: %s", result["error"])
        # imports behind the strategies' availability checks (torch...) happen here, not in a request
        await run_in_threadpool(lambda: [s.unavailable() for s in strategies.values()])
        router_state.start()
        try:
            yield
        finally:
            router_state.stop()

    app = FastAPI(title="routerops", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible LLM routing: router, cascade and speculative strategies.")
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    app.state.settings, app.state.router_state, app.state.metrics = settings, router_state, metrics
    app.state.pair, app.state.strategies = pair, strategies

    def require(scope: str):  # noqa: ANN202
        async def dependency(request: Request) -> Principal:
            try:
                principal = await run_in_threadpool(auth.authenticate, request.headers.get("authorization"),
                                                    request.headers.get("x-api-key"))
            except AuthError as exc:
                metrics.errors.labels(str(exc.status)).inc()
                raise ApiError(exc.status, exc.message, code="invalid_api_key") from None
            if scope == "admin" and not principal.is_admin:
                metrics.errors.labels("403").inc()
                raise ApiError(403, f"key {principal.name!r} has scope 'user'; this endpoint needs 'admin'",
                               code="insufficient_scope")
            return principal

        return dependency

    user, admin = Depends(require("user")), Depends(require("admin"))

    # --- chat --------------------------------------------------------------------------------------
    async def parse_chat(request: Request) -> ChatCompletionRequest:
        body = await request.body()
        if len(body) > settings.max_body_bytes:
            raise ApiError(413, f"request body of {len(body)} bytes is over the limit of {settings.max_body_bytes}",
                           code="request_too_large")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"malformed JSON body: {exc}", code="invalid_json") from None
        if not isinstance(payload, dict):
            raise ApiError(400, "the body must be a JSON object", code="invalid_json")
        try:
            return ChatCompletionRequest.model_validate(payload)
        except ValidationError as exc:
            message, param = validation_message(list(exc.errors()))
            raise ApiError(400, message, param=param, code="invalid_request") from None

    def pick(req: ChatCompletionRequest) -> tuple[Strategy, list[dict[str, str]], GenerationParams]:
        messages = req.plain_messages()
        chars = sum(len(m["content"]) for m in messages)
        if chars > settings.max_prompt_chars:
            raise ApiError(400, f"prompt of {chars} characters is over the limit of {settings.max_prompt_chars}",
                           param="messages", code="prompt_too_long")
        if not any(m["role"] == "user" and m["content"].strip() for m in messages):
            raise ApiError(400, "messages need at least one non-empty user message", param="messages",
                           code="invalid_request")
        strategy = strategies.get(req.model)
        if strategy is None:
            raise ApiError(400, f"unknown model {req.model!r}; valid: {', '.join(strategies)}", param="model",
                           code="model_not_found")
        reason = strategy.unavailable()
        if reason:
            raise ApiError(503, f"strategy not available: {reason}", param="model", code="strategy_unavailable")
        requested = req.max_completion_tokens or req.max_tokens or settings.max_new_tokens
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        params = GenerationParams(max_new_tokens=min(requested, settings.max_new_tokens),
                                  temperature=req.temperature if req.temperature is not None else 0.0,
                                  top_p=req.top_p if req.top_p is not None else 1.0, seed=req.seed, stop=stop)
        return strategy, messages, params

    def log_entry(out: Outcome, req: ChatCompletionRequest, messages: list[dict[str, str]], request_id: str,
                  latency_ms: float, principal: Principal, streamed: bool) -> LogEntry:
        from routerops.backends.base import last_user_prompt

        extra = dict(out.extra)
        extra.update(role=out.role, reason=out.reason, weak_model=pair.weak.name, strong_model=pair.strong.name,
                     streamed=streamed, finish_reason=out.finish_reason)
        return LogEntry(request_id=request_id, prompt=last_user_prompt(messages), completion=out.text,
                        strategy=out.strategy, model_requested=req.model, model_chosen=out.model,
                        p_strong_wins=out.p_strong_wins, alpha=out.alpha, router_version=out.router_version,
                        latency_ms=latency_ms, routing_latency_ms=out.routing_ms, prompt_tokens=out.prompt_tokens,
                        completion_tokens=out.completion_tokens, cost_usd=out.cost_usd,
                        api_key_name=principal.name, escalated=out.escalated, probe_score=out.probe_score,
                        spec=out.spec, extra=extra)

    def observe(out: Outcome, seconds: float) -> None:
        metrics.requests.labels(out.strategy, out.model).inc()
        metrics.latency.labels(out.strategy).observe(seconds)
        if out.strategy == "router" and out.role:
            metrics.observe_route(out.role, (out.routing_ms or 0.0) / 1000, out.routing_cached)
        if out.escalated is not None:
            metrics.observe_cascade(out.escalated)
        if out.spec:
            metrics.observe_speculative(out.spec.get("acceptance_rate"))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, principal: Principal = user) -> Response:
        t0 = time.perf_counter()
        req = await parse_chat(request)
        strategy, messages, params = pick(req)
        request_id = new_id()
        created = int(time.time())
        try:
            if not req.stream:
                out = await run_in_threadpool(strategy.run, messages, params)
            else:
                out, deltas = await run_in_threadpool(strategy.stream, messages, params)
        except StrategyUnavailable as exc:
            metrics.errors.labels("503").inc()
            raise ApiError(503, f"strategy not available: {exc}", param="model", code="strategy_unavailable") from None
        except BackendError as exc:
            metrics.errors.labels("502").inc()
            raise ApiError(502, f"backend failed: {exc}", code="backend_error") from None
        except ValueError as exc:  # e.g. a prompt the backend cannot template
            raise ApiError(400, str(exc), code="invalid_request") from None

        if not req.stream:
            latency = (time.perf_counter() - t0) * 1000
            info = _info(out, request_id)
            await run_in_threadpool(write_entry, settings,
                                    log_entry(out, req, messages, request_id, latency, principal, False))
            observe(out, latency / 1000)
            body = {"id": f"chatcmpl-{request_id}", "object": "chat.completion", "created": created,
                    "model": out.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": out.text},
                                 "finish_reason": out.finish_reason, "logprobs": None}],
                    "usage": {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                              "total_tokens": out.prompt_tokens + out.completion_tokens},
                    "routerops": info.model_dump()}
            return JSONResponse(body, headers=_headers(info))

        head = _info(out, request_id)

        def chunk(delta: dict, finish: str | None = None, **more: Any) -> str:
            data = {"id": f"chatcmpl-{request_id}", "object": "chat.completion.chunk", "created": created,
                    "model": out.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **more}
            return f"data: {json.dumps(data)}\n\n"

        async def events() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""}, routerops=head.model_dump())
            parts: list[str] = []
            try:
                async for delta in iterate_in_threadpool(deltas):
                    parts.append(delta)
                    yield chunk({"content": delta})
            except Exception as exc:  # noqa: BLE001 - headers are sent: report in-band, then end
                log.warning("stream %s failed: %s", request_id, exc)
                metrics.errors.labels("502").inc()
                message = f"backend failed mid-stream: {exc}" if isinstance(exc, BackendError) else \
                    f"stream failed ({type(exc).__name__}); see the server log"
                yield f"data: {json.dumps(error_body(message, 'backend_error', None, 'backend_error'))}\n\n"
                yield "data: [DONE]\n\n"
                return
            text = "".join(parts)
            if out.finalize is not None:
                await run_in_threadpool(out.finalize, text)
            latency = (time.perf_counter() - t0) * 1000
            final = _info(out, request_id)
            await run_in_threadpool(write_entry, settings,
                                    log_entry(out, req, messages, request_id, latency, principal, True))
            observe(out, latency / 1000)
            usage = {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                     "total_tokens": out.prompt_tokens + out.completion_tokens}
            yield chunk({}, out.finish_reason, usage=usage, routerops=final.model_dump())
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={**_headers(head), "cache-control": "no-cache"})

    # --- models, health, metrics -------------------------------------------------------------------
    @app.get("/v1/models")
    async def list_models(_principal: Principal = user) -> dict:
        data = []
        for name, strategy in strategies.items():
            reason = strategy.unavailable()
            kind = "strategy" if name in ("router", "cascade", "speculative") else "model"
            data.append({"id": name, "object": "model", "created": 0, "owned_by": "routerops",
                         "routerops": {"kind": kind, "available": reason is None, "unavailable_reason": reason}})
        return {"object": "list", "data": data}

    @app.get("/healthz")
    async def healthz() -> dict:
        snap = router_state.snapshot
        return {
            "status": "degraded" if router_state.last_error else "ok",
            "router_model": settings.router_model_name, "router_version": snap.version,
            "router_loaded_at": snap.loaded_at, "alpha": snap.alpha, "alpha_source": snap.alpha_source,
            "routing": "router" if snap.router is not None else "no champion router: routing to strong",
            "last_reload_error": router_state.last_error, "last_reload_check": router_state.last_check,
            "backends": {role: {"name": b.name, "kind": type(b).__name__}
                         for role, b in (("weak", pair.weak), ("strong", pair.strong))},
            "strategies": {name: s.unavailable() or "available" for name, s in strategies.items()},
        }

    @app.get("/metrics")
    async def prometheus(_principal: Principal = user) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        from monitoring.alerts import active_alert_gauges
        from routerops.db import session_scope

        def read_alerts() -> dict[str, float]:
            with session_scope(settings) as session:
                return active_alert_gauges(session)

        try:  # the monitor writes alerts to the shared database; /metrics shows them as gauges
            metrics.set_alert_gauges(await run_in_threadpool(read_alerts))
        except Exception as exc:  # noqa: BLE001 - metrics must still render if the DB hiccups
            log.warning("could not read alert gauges: %s", exc)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # --- feedback ----------------------------------------------------------------------------------
    @app.post("/v1/feedback")
    async def feedback(request: Request, principal: Principal = user) -> JSONResponse:
        from serving.feedback import FeedbackError, record_feedback

        try:
            payload = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"malformed JSON body: {exc}", code="invalid_json") from None
        try:
            fb = FeedbackRequest.model_validate(payload)
        except ValidationError as exc:
            message, param = validation_message(list(exc.errors()))
            raise ApiError(400, message, param=param, code="invalid_request") from None
        try:
            result = await run_in_threadpool(record_feedback, settings, fb, principal.name)
        except FeedbackError as exc:
            raise ApiError(exc.status, exc.message, param=exc.param) from None
        return JSONResponse({"request_id": result.request_id, "preference_id": result.preference_id,
                             "recorded": result.recorded, "detail": result.detail}, status_code=201)

    # --- admin -------------------------------------------------------------------------------------
    @app.post("/admin/reload")
    async def admin_reload(_principal: Principal = admin) -> dict:
        result = await run_in_threadpool(router_state.reload)
        if result["error"]:
            metrics.reload_errors.inc()
        return result

    @app.get("/admin/feedback")
    async def admin_feedback(limit: int = 50, _principal: Principal = admin) -> dict:
        from sqlalchemy import select

        from routerops.db import session_scope
        from routerops.db.models import PreferenceLog

        def rows() -> list[dict]:
            with session_scope(settings) as session:
                q = (select(PreferenceLog).where(PreferenceLog.source == "feedback")
                     .order_by(PreferenceLog.id.desc()).limit(max(1, min(limit, 1000))))
                return [{"id": r.id, "request_id": r.request_id, "model_a": r.model_a, "model_b": r.model_b,
                         "winner": r.winner, "judge": r.judge, "created_at": r.created_at.isoformat()}
                        for r in session.scalars(q)]

        return {"data": await run_in_threadpool(rows)}

    @app.post("/admin/ingest")
    async def admin_ingest(request: Request, format: str, filename: str = "upload.jsonl",  # noqa: A002
                           _principal: Principal = admin) -> JSONResponse:
        """Body: the raw file (e.g. curl --data-binary @file). Runs H1's importer in one transaction."""
        try:
            from training.importers import FORMATS, ImportFailed, import_file
        except ImportError as exc:
            raise ApiError(503, f"ingestion not available: {exc}", code="ingest_unavailable") from None
        if format not in FORMATS:
            raise ApiError(400, f"unknown format {format!r}; valid: {', '.join(FORMATS)}", param="format")
        data = await request.body()
        if not data:
            raise ApiError(400, "empty upload: send the file as the request body", param="body")
        suffix = "".join(Path(filename).suffixes[-2:]) or ".jsonl"

        def run() -> dict:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"upload{suffix}"
                path.write_bytes(data)
                report = import_file(settings, format, path, progress=False)
            return {k: v for k, v in vars(report).items() if isinstance(v, str | int | float | dict | list | None)}

        try:
            report = await run_in_threadpool(run)
        except ImportFailed as exc:
            raise ApiError(400, f"import failed, nothing written: {exc}", code="import_failed") from None
        return JSONResponse({"format": format, "filename": filename, "report": report}, status_code=201)

    return app
