"""POST /v1/feedback: a client's verdict on an earlier response, recorded as a preference.

Acknowledged (201) only once committed; with the database unreachable the answer is 503
(code database_unavailable, Retry-After) and nothing is stored, so a client can retry safely.
Owner, idempotence, size and rate rules: routerops.serving.feedback and docs/security.md."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from routerops.db.session import is_connectivity
from routerops.redact import redact
from routerops.serving.api.body import parse_json_object
from routerops.serving.api.deps import StateDep, user
from routerops.serving.auth import Principal
from routerops.serving.errors import ApiError, validation_message
from routerops.serving.feedback import FeedbackError, FeedbackRateLimiter, record_feedback
from routerops.serving.schemas import FeedbackRequest, openapi_body

log = logging.getLogger(__name__)

router = APIRouter()


@router.post("/v1/feedback", openapi_extra=openapi_body(FeedbackRequest))
async def feedback(request: Request, state: StateDep, principal: Principal = user) -> JSONResponse:
    limiter: FeedbackRateLimiter = request.app.state.feedback_limiter
    wait = limiter.hit(principal.name)
    if wait is not None:
        raise ApiError(429, f"too many feedback requests from key {principal.name!r} (limit "
                            f"{state.settings.feedback_rate_limit}); retry in {wait:.0f}s", code="rate_limited",
                       headers={"retry-after": str(int(wait + 0.999))})
    payload = parse_json_object(await request.body())
    try:
        fb = FeedbackRequest.model_validate(payload)
    except ValidationError as exc:
        message, param = validation_message(list(exc.errors()))
        raise ApiError(400, message, param=param, code="invalid_request") from None
    writer = state.request_log
    if writer is not None and writer.pending(fb.request_id):  # served while the database was down
        await run_in_threadpool(writer.flush)
        if writer.pending(fb.request_id):
            state.metrics.feedback_unavailable.inc()
            raise ApiError(503, f"feedback not recorded: request {fb.request_id!r} was served while the database "
                                "was unreachable and its log row is not stored yet; retry in a few seconds",
                           code="database_unavailable", headers={"retry-after": "5"})
    try:
        result = await run_in_threadpool(record_feedback, state.settings, fb, principal)
    except FeedbackError as exc:
        raise ApiError(exc.status, exc.message, param=exc.param, code=exc.code) from None
    except SQLAlchemyError as exc:  # nothing was committed: the client must not take it as recorded
        if not is_connectivity(exc):
            raise  # not an outage: the generic handler answers 500 and logs the trace
        log.warning("feedback on %s not recorded: %s: %s", fb.request_id, type(exc).__name__,
                    redact(str(exc).splitlines()[0][:300]) if str(exc) else "")
        state.metrics.feedback_unavailable.inc()
        raise ApiError(503, f"feedback not recorded: the database is unreachable ({type(exc).__name__}); "
                            "nothing was stored, retry later", code="database_unavailable",
                       headers={"retry-after": "5"}) from None
    return JSONResponse({"request_id": result.request_id, "preference_id": result.preference_id,
                         "recorded": result.recorded, "replaced": result.replaced, "outcome_id": result.outcome_id,
                         "detail": result.detail},
                        status_code=201)
