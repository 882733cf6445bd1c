"""ASGI middleware of the API: the body size limit and the error counter."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from routerops.serving.errors import ApiError, error_body

INGEST_MAX_BYTES = 512 * 1024 * 1024


class BodyTooLarge(ApiError):
    """Raised from inside `receive` once the body read so far passes the limit (a 413 via ApiError's
    handler; the middleware answers it itself if it surfaces there)."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body is over the limit of {limit} bytes", code="request_too_large")


class BodyLimitMiddleware:
    """413 for a body over the limit: at once when Content-Length says so, else while reading it.

    A chunked body has no Content-Length: the bytes are counted as they arrive and reading stops at
    the limit, so the server never holds more than the limit (plus one chunk) of any body."""

    def __init__(self, app, max_bytes: int):  # noqa: ANN001
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):  # noqa: ANN001
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = INGEST_MAX_BYTES if scope["path"].startswith("/admin/ingest") else self.max_bytes
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                body = error_body(f"request body of {int(value)} bytes is over the limit of {limit} bytes",
                                  "invalid_request_error", None, "request_too_large")
                await JSONResponse(body, status_code=413)(scope, receive, send)
                return
        seen = 0
        started = False

        async def counting_receive():  # noqa: ANN202
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message) -> None:  # noqa: ANN001
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as exc:  # read outside a route (no handler): answer here if we still can
            if started:
                raise
            await JSONResponse(error_body(exc.message, exc.type, None, exc.code), status_code=413)(
                scope, receive, send)


class ErrorCountMiddleware:
    """Counts every answer with status >= 400 in routerops_request_errors_total{status}, whatever
    produced it (validation, auth, routing, the body limit). 500s from the last-resort handler are
    counted there: they are answered outside this middleware."""

    def __init__(self, app, metrics):  # noqa: ANN001
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):  # noqa: ANN001
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message) -> None:  # noqa: ANN001
            if message["type"] == "http.response.start" and message["status"] >= 400:
                self.metrics.errors.labels(str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)
