"""Test helpers for serving: a real uvicorn server on a free loopback port, in a thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "serving"
RECORDED_PAIR = FIXTURES / "recorded_pair.jsonl"
WEAK = "mixtral-8x7b-instruct-v0.1"
STRONG = "gpt-4-1106-preview"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(app, timeout_s: float = 60.0, port: int | None = None,  # noqa: ANN001
                   log_level: str = "warning") -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1:<port> (default: a free one); yields the base URL; stops it."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level,
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def wait_for(predicate, timeout_s: float = 30.0, interval_s: float = 0.2):  # noqa: ANN001, ANN201
    """Poll predicate() until it returns something truthy; return it, or fail with the last value."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s (last: {last!r})")


def healthz(base_url: str, admin_key: str | None = None) -> dict:
    """The public /healthz, or with an admin key the detailed /admin/status."""
    if admin_key is None:
        return httpx.get(f"{base_url}/healthz", timeout=10).json()
    r = httpx.get(f"{base_url}/admin/status", headers={"Authorization": f"Bearer {admin_key}"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()
