"""POST /v1/feedback: a client's verdict on an earlier response, recorded as a preference."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from serving.api.deps import StateDep, user
from serving.auth import Principal
from serving.errors import ApiError, validation_message
from serving.schemas import FeedbackRequest

router = APIRouter()


@router.post("/v1/feedback")
async def feedback(request: Request, state: StateDep, principal: Principal = user) -> JSONResponse:
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
        result = await run_in_threadpool(record_feedback, state.settings, fb, principal.name)
    except FeedbackError as exc:
        raise ApiError(exc.status, exc.message, param=exc.param) from None
    return JSONResponse({"request_id": result.request_id, "preference_id": result.preference_id,
                         "recorded": result.recorded, "detail": result.detail}, status_code=201)
