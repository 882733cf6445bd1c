"""ASGI middleware of the API."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from routerops.serving.errors import error_body

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
