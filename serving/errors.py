"""Errors in OpenAI's format: {"error": {"message", "type", "param", "code"}}; never a stack trace."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from routerops.db.session import is_connectivity

log = logging.getLogger(__name__)

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error",
               429: "rate_limit_error",
               502: "backend_error", 503: "service_unavailable"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type_: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type_ or ERROR_TYPES.get(status, "api_error")
        self.headers = headers


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), status_code=exc.status,
                        headers=exc.headers)


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One readable line for pydantic errors, and the first offending field as `param`."""
    parts, param = [], None
    for err in errors[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        param = param or loc or None
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(exc.errors()))
        return JSONResponse(error_body(message, "invalid_request_error", param, "invalid_request"), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), ERROR_TYPES.get(exc.status_code, "api_error")),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(SQLAlchemyError)
    async def _database(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        if not is_connectivity(exc):
            return await _unexpected(request, exc)
        log.warning("%s %s: database unreachable: %s", request.method, request.url.path,
                    str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
        return JSONResponse(error_body(f"the database is unreachable ({type(exc).__name__}); retry later",
                                       "service_unavailable", None, "database_unavailable"), status_code=503,
                            headers={"retry-after": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        metrics = getattr(request.app.state, "metrics", None)
        if metrics is not None:  # answered outside ErrorCountMiddleware
            metrics.errors.labels("500").inc()
        return JSONResponse(error_body(f"internal error ({type(exc).__name__}); see the server log",
                                       "api_error", None, "internal_error"), status_code=500)
