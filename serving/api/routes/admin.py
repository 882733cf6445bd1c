"""Admin-scope endpoints: POST /admin/reload, GET /admin/feedback, POST /admin/ingest."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from routerops.db import session_scope
from routerops.db.models import PreferenceLog
from routerops.importers import FORMATS, ImportFailed, import_file
from routerops.serving.api.deps import StateDep, admin
from routerops.serving.auth import Principal
from routerops.serving.errors import ApiError

router = APIRouter()


@router.post("/admin/reload")
async def admin_reload(state: StateDep, _principal: Principal = admin) -> dict:
    result = await run_in_threadpool(state.router_state.reload)
    if result["error"]:
        state.metrics.reload_errors.inc()
    return result


@router.get("/admin/feedback")
async def admin_feedback(state: StateDep, limit: int = 50, _principal: Principal = admin) -> dict:
    def rows() -> list[dict]:
        with session_scope(state.settings) as session:
            q = (select(PreferenceLog).where(PreferenceLog.source == "feedback")
                 .order_by(PreferenceLog.id.desc()).limit(max(1, min(limit, 1000))))
            return [{"id": r.id, "request_id": r.request_id, "model_a": r.model_a, "model_b": r.model_b,
                     "winner": r.winner, "judge": r.judge, "created_at": r.created_at.isoformat()}
                    for r in session.scalars(q)]

    return {"data": await run_in_threadpool(rows)}


@router.post("/admin/ingest", openapi_extra={"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def admin_ingest(request: Request, state: StateDep, format: str,  # noqa: A002
                       filename: str = "upload.jsonl", _principal: Principal = admin) -> JSONResponse:
    """Body: the raw file (e.g. curl --data-binary @file). Runs H1's importer in one transaction."""
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
            report = import_file(state.settings, format, path, progress=False)
        return {k: v for k, v in vars(report).items() if isinstance(v, str | int | float | dict | list | None)}

    try:
        report = await run_in_threadpool(run)
    except ImportFailed as exc:
        raise ApiError(400, f"import failed, nothing written: {exc}", code="import_failed") from None
    return JSONResponse({"format": format, "filename": filename, "report": report}, status_code=201)
