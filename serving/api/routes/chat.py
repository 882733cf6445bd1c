"""POST /v1/chat/completions (streaming included): every response carries the `routerops` field and
x-routerops-* headers (see routerops.serving.schemas.RouterOpsInfo)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from routerops.backends.base import BackendError, GenerationParams, last_user_prompt
from routerops.db.models import new_id
from routerops.redact import redact
from routerops.serving.api.body import parse_json_object
from routerops.serving.api.deps import ServingState, StateDep, user
from routerops.serving.auth import Principal
from routerops.serving.errors import ApiError, error_body, validation_message
from routerops.serving.exploration import ExploreTask
from routerops.serving.fleet import LimitsUnsatisfiable
from routerops.serving.request_log import LogEntry, RequestLogWriter
from routerops.serving.schemas import ChatCompletionRequest, RouterOpsInfo, openapi_body
from routerops.serving.strategies import Outcome, Strategy, StrategyUnavailable

log = logging.getLogger("routerops.serving.app")  # the logger name the server log has always used

router = APIRouter()


def _explore(state: ServingState, out: Outcome, messages: list[dict[str, str]], params: GenerationParams,
             request_id: str) -> None:
    """Hand an explored request to the background explorer (after the user's answer is complete)."""
    fleet_other = out.extra.get("explore_model")  # a fleet decision: the explored model by name
    if state.explorer is None or not out.extra.get("explored") or out.extra.get("failover") \
            or (out.role is None and fleet_other is None):
        return
    if out.finish_reason == "error":
        return
    state.explorer.submit(ExploreTask(
        request_id=request_id, messages=messages, params=params, served_role=out.role or "fleet", served_answer=out.text,
        p_strong_wins=out.p_strong_wins, alpha=out.alpha, router_version=out.router_version,
        propensity=float(out.extra.get("propensity", 1.0)), explore_propensity=float(out.extra["explore_propensity"]),
        category=out.extra.get("category"), served_model=out.model if fleet_other else None, other_model=fleet_other))


def _headers(info: RouterOpsInfo) -> dict[str, str]:
    return {
        "x-routerops-model": info.model, "x-routerops-strategy": info.strategy,
        "x-routerops-p-strong": "" if info.p_strong_wins is None else f"{info.p_strong_wins:.6f}",
        "x-routerops-alpha": "" if info.alpha is None else f"{info.alpha:.6f}",
        "x-routerops-alpha-source": info.alpha_source or "",
        "x-routerops-cost-usd": f"{info.estimated_cost_usd:.8f}", "x-routerops-request-id": info.request_id,
        "x-routerops-router-version": info.router_version or "",
        **({"x-routerops-failover": info.failover.reason} if info.failover else {}),
        **({"x-routerops-fleet-lambda": f"{info.fleet['dial']['lambda']:.6g}"} if info.fleet else {}),
    }


def _info(out: Outcome, request_id: str) -> RouterOpsInfo:
    return RouterOpsInfo(model=out.model, strategy=out.strategy, p_strong_wins=out.p_strong_wins, alpha=out.alpha,
                         alpha_source=out.alpha_source,
                         router_version=out.router_version, estimated_cost_usd=round(out.cost_usd, 10),
                         request_id=request_id, reason=out.reason, escalated=out.escalated,
                         routing_latency_ms=None if out.routing_ms is None else round(out.routing_ms, 3),
                         probe_score=out.probe_score, speculative=out.spec,
                         failover=out.extra.get("failover"), fleet=out.extra.get("fleet"),
                         cascade=out.extra.get("cascade_plan"))


async def parse_chat(request: Request, state: ServingState) -> ChatCompletionRequest:
    settings = state.settings
    body = await request.body()
    if len(body) > settings.max_body_bytes:
        raise ApiError(413, f"request body of {len(body)} bytes is over the limit of {settings.max_body_bytes}",
                       code="request_too_large")
    payload = parse_json_object(body)
    try:
        return ChatCompletionRequest.model_validate(payload)
    except ValidationError as exc:
        message, param = validation_message(list(exc.errors()))
        raise ApiError(400, message, param=param, code="invalid_request") from None


def pick(req: ChatCompletionRequest, state: ServingState) -> tuple[Strategy, list[dict[str, str]], GenerationParams]:
    settings, strategies = state.settings, state.strategies
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
    if req.routerops is not None and req.routerops.category is not None:  # the cascade plan of this category
        strategy = categorized(req, strategy)
    elif req.routerops is not None:  # the request's own limits: decided by the fleet rule
        strategy = limited(req, state)
    reason = strategy.unavailable()
    if reason:
        raise ApiError(503, f"strategy not available: {redact(reason)}", param="model", code="strategy_unavailable")
    category_error = getattr(strategy, "category_error", None)
    problem = category_error() if category_error is not None else None
    if problem:
        raise ApiError(400, problem, param="routerops.category", code="unknown_category")
    requested = req.max_completion_tokens or req.max_tokens or settings.max_new_tokens
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    params = GenerationParams(max_new_tokens=min(requested, settings.max_new_tokens),
                              temperature=req.temperature if req.temperature is not None else 0.0,
                              top_p=req.top_p if req.top_p is not None else 1.0, seed=req.seed, stop=stop)
    return strategy, messages, params


def categorized(req: ChatCompletionRequest, strategy: Strategy) -> Strategy:
    """The cascade bound to the request's category (extra_body routerops.category), or a 400."""
    with_category = getattr(strategy, "with_category", None)
    if req.model != "cascade" or with_category is None:
        raise ApiError(400, f"routerops.category applies to model='cascade', not {req.model!r}",
                       param="routerops.category", code="invalid_request")
    if req.routerops.limits_given():
        raise ApiError(400, "routerops limits (max_cost_usd, min_quality, models) apply to model='router', "
                            "not 'cascade'", param="routerops", code="invalid_request")
    return with_category(req.routerops.category)


def limited(req: ChatCompletionRequest, state: ServingState) -> Strategy:
    """The fleet router bound to the request's limits (extra_body routerops), or a 400 naming the problem."""
    fleet = state.fleet
    if req.model != "router" or fleet is None:
        raise ApiError(400, f"routerops limits (max_cost_usd, min_quality, models) apply to model='router', "
                            f"not {req.model!r}", param="routerops", code="invalid_request")
    unknown = fleet.fleet.unknown(req.routerops.models or [])
    if unknown:
        raise ApiError(400, f"routerops.models names model(s) not in the fleet: {', '.join(map(repr, unknown))}; "
                            f"the fleet has: {', '.join(fleet.fleet.names)}", param="routerops.models",
                       code="model_not_found")
    return fleet.strategy.with_limits(req.routerops)


def log_entry(state: ServingState, out: Outcome, req: ChatCompletionRequest, messages: list[dict[str, str]],
              request_id: str, latency_ms: float, principal: Principal, streamed: bool) -> LogEntry:
    pair = state.pair
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


async def _write_log(state: ServingState, entry: LogEntry) -> None:
    """Store the request's row; a failed write is buffered and retried (RequestLogWriter), never raised
    into the request."""
    writer = state.request_log
    if writer is None:  # a state built without one (older callers): a plain writer, no retry timer
        writer = RequestLogWriter(state.settings, state.metrics)
    await run_in_threadpool(writer.write, entry)


def observe(state: ServingState, out: Outcome, seconds: float) -> None:
    metrics = state.metrics
    metrics.requests.labels(out.strategy, out.model).inc()
    metrics.latency.labels(out.strategy).observe(seconds)
    if out.strategy == "router" and out.role:
        metrics.observe_route(out.role, (out.routing_ms or 0.0) / 1000, out.routing_cached)
    fleet = out.extra.get("fleet")
    p_good = next((c["p_good"] for c in fleet["candidates"] if c["model"] == out.model), None) if fleet else None
    metrics.observe_model(out.model, seconds, out.cost_usd, p_good)
    if out.escalated is not None:
        metrics.observe_cascade(out.escalated)
    if out.spec:
        metrics.observe_speculative(out.spec.get("acceptance_rate"))


@router.post("/v1/chat/completions", openapi_extra=openapi_body(ChatCompletionRequest))
async def chat_completions(request: Request, state: StateDep, principal: Principal = user) -> Response:
    t0 = time.perf_counter()
    metrics = state.metrics
    req = await parse_chat(request, state)
    # a threadpool: a strategy's availability may read its config from the database (the cascade)
    strategy, messages, params = await run_in_threadpool(pick, req, state)
    request_id = new_id()
    created = int(time.time())
    try:
        if not req.stream:
            out = await run_in_threadpool(strategy.run, messages, params)
        else:
            out, deltas = await run_in_threadpool(strategy.stream, messages, params)
    except LimitsUnsatisfiable as exc:
        raise ApiError(400, str(exc), param="routerops", code="limits_unsatisfiable") from None
    except StrategyUnavailable as exc:
        raise ApiError(503, f"strategy not available: {redact(exc)}", param="model",
                       code="strategy_unavailable") from None
    except BackendError as exc:
        raise ApiError(502, f"backend failed: {redact(exc)}", code="backend_error") from None
    except ValueError as exc:  # e.g. a prompt the backend cannot template
        raise ApiError(400, str(exc), code="invalid_request") from None

    if req.metadata and req.metadata.get("category"):  # the cohort the monitor reports on (request log extra)
        out.extra["category"] = str(req.metadata["category"])[:80]
    if not req.stream:
        latency = (time.perf_counter() - t0) * 1000
        info = _info(out, request_id)
        await _write_log(state, log_entry(state, out, req, messages, request_id, latency, principal, False))
        observe(state, out, latency / 1000)
        _explore(state, out, messages, params, request_id)
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
            metrics.errors.labels("502").inc()  # the answer is a 200 already: counted here, in-band
            metrics.stream_errors.labels(out.model).inc()
            message = f"backend failed mid-stream: {redact(exc)}" if isinstance(exc, BackendError) else \
                f"stream failed ({type(exc).__name__}); see the server log"
            yield f"data: {json.dumps(error_body(message, 'backend_error', None, 'backend_error'))}\n\n"
            yield "data: [DONE]\n\n"
            # the row records what the client got: the partial text, cut by an error
            if out.finalize is not None:
                await run_in_threadpool(out.finalize, "".join(parts))
            out.finish_reason = "error"
            out.extra["stream_error"] = str(exc)[:500]
            latency = (time.perf_counter() - t0) * 1000
            await _write_log(state, log_entry(state, out, req, messages, request_id, latency, principal, True))
            return
        text = "".join(parts)
        if out.finalize is not None:
            await run_in_threadpool(out.finalize, text)
        latency = (time.perf_counter() - t0) * 1000
        final = _info(out, request_id)
        await _write_log(state, log_entry(state, out, req, messages, request_id, latency, principal, True))
        observe(state, out, latency / 1000)
        _explore(state, out, messages, params, request_id)
        usage = {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                 "total_tokens": out.prompt_tokens + out.completion_tokens}
        yield chunk({}, out.finish_reason, usage=usage, routerops=final.model_dump())
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={**_headers(head), "cache-control": "no-cache"})
