"""Failover and circuit breaking against honest faulty upstreams: real OpenAI-compatible HTTP servers
on 127.0.0.1 started here (uvicorn in a thread), the API on uvicorn, the pair on the `openai` backend
kind. No champion router is registered, so the router strategy sends everything to strong and the
weak model is reached by its name: no router training is needed.

Faults: nothing listening (connection refused), 500, 429, a hang past the client timeout, a 400, and
a stream dropped before / after its first token (the server kills the connection mid-body).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from serving_helpers import free_port, healthz, running_server

KEY = "failover-test-key-0123456789"
ADMIN = "failover-admin-key-0123456789"
WEAK, STRONG = "weak-m", "strong-m"
PROMPT = "name three colours"
TIMEOUT_S = 0.6  # the backends' HTTP timeout; the "hang" fault sleeps past it


class Dropped(RuntimeError):
    """Raised inside a streaming body: uvicorn then cuts the connection without ending the body."""


def upstream_app() -> FastAPI:
    """OpenAI chat completions; app.state.mode[model] picks the fault: ok, 500, 429, 400, hang,
    drop_before (stream cut before any token), drop_after (cut after the first token)."""
    app = FastAPI()
    app.state.mode = {}
    app.state.calls = Counter()

    @app.post("/v1/chat/completions")
    async def completions(request: Request):  # noqa: ANN202
        body = await request.json()
        model, prompt = body["model"], body["messages"][-1]["content"]
        mode = app.state.mode.get(model, "ok")
        app.state.calls[model] += 1
        if mode in ("500", "429", "400"):
            return JSONResponse({"error": {"message": f"{model} fault {mode}"}}, status_code=int(mode),
                                headers={"retry-after": "0"} if mode == "429" else {})
        if mode == "hang":
            await asyncio.sleep(TIMEOUT_S * 4)
        words = [f"{model}", " says:", *(" " + w for w in prompt.split())]
        if body.get("stream"):
            async def events():  # noqa: ANN202
                yield ": keep-alive\n\n"
                if mode == "drop_before":
                    raise Dropped("connection dropped before the first token")
                for i, w in enumerate(words):
                    if mode == "drop_after" and i == 2:
                        raise Dropped("connection dropped after two tokens")
                    chunk = {"object": "chat.completion.chunk", "model": model,
                             "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]}
                    yield f"data: {json.dumps(chunk)}\n\n"
                    await asyncio.sleep(0)
                last = {"object": "chat.completion.chunk", "model": model,
                        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
                yield f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        text = "".join(words)
        return {"id": "u", "object": "chat.completion", "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": len(words), "total_tokens": 10 + len(words)}}

    return app


@contextmanager
def serve_on(app: FastAPI, port: int) -> Iterator[str]:
    """uvicorn on a given port (the refused-connection backend comes alive there later)."""
    with running_server(app, timeout_s=30, port=port) as base:
        yield f"{base}/v1"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from routerops.db import dispose_engines, migrate

    root = tmp_path_factory.mktemp("failover")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'data' / 'mlflow.db'}")
    settings = make_settings(root / "data", "http://unused", "http://unused")
    settings.ensure_data_dir()
    migrate.upgrade("head", settings=settings)
    yield root / "data"
    dispose_engines()
    mp.undo()


def make_settings(data_dir: Path, weak_url: str, strong_url: str, **overrides):  # noqa: ANN201
    from routerops.settings import Settings

    values = dict(data_dir=data_dir, weak_backend="openai", strong_backend="openai", weak_model=WEAK,
                  strong_model=STRONG, weak_base_url=weak_url, strong_base_url=strong_url, api_keys=[KEY], admin_api_keys=[ADMIN],
                  router_model_name="router-never-approved", http_timeout_s=TIMEOUT_S, http_max_retries=1,
                  http_backoff_s=0.01, weak_price_in=1.0, weak_price_out=2.0, strong_price_in=10.0,
                  strong_price_out=20.0, reload_interval_s=60.0)
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def faulty(data_dir: Path):  # noqa: ANN201
    """One upstream for both models, its fault set per model; the API with a breaker that never trips."""
    from routerops.serving.app import create_app

    upstream = upstream_app()
    with running_server(upstream) as up:
        settings = make_settings(data_dir, f"{up}/v1", f"{up}/v1", breaker_fail_max=1000)
        with running_server(create_app(settings)) as api:
            yield api, upstream, settings


@pytest.fixture(autouse=True)
def _healthy(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "faulty" in request.fixturenames:
        request.getfixturevalue("faulty")[1].state.mode.clear()


def chat(api: str, model: str, stream: bool = False, **kw) -> httpx.Response:  # noqa: ANN003
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "stream": stream, **kw}
    return httpx.post(f"{api}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"},
                      timeout=30)


def sse(response: httpx.Response) -> list[dict]:
    return [json.loads(line[5:]) for line in response.text.splitlines()
            if line.startswith("data:") and line[5:].strip() != "[DONE]"]


def log_row(settings, request_id: str):  # noqa: ANN001, ANN201
    from routerops.db import session_scope
    from routerops.db.models import RequestLog

    with session_scope(settings) as session:
        row = session.get(RequestLog, request_id)
        assert row is not None, f"no request log row {request_id}"
        session.expunge(row)
        return row


def metric(api: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{api}/metrics", headers={"authorization": f"Bearer {KEY}"}, timeout=10).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, value = line.rsplit(" ", 1)
            got = head[len(name):].strip("{}")
            if ",".join(sorted(got.split(","))) == want or (not labels and not got):
                return float(value)
    return 0.0


# --- non-streaming faults ---------------------------------------------------------------------------
@pytest.mark.parametrize(("fault", "kind"), [("500", "HTTP 500"), ("429", "HTTP 429"), ("hang", "ReadTimeout")])
def test_weak_fault_is_served_by_strong(faulty, fault: str, kind: str) -> None:
    api, upstream, settings = faulty
    upstream.state.mode[WEAK] = fault
    before = metric(api, "routerops_failovers_total", backend=WEAK, error=kind)
    calls = upstream.state.calls[WEAK]
    t0 = time.perf_counter()
    r = chat(api, WEAK)
    elapsed = time.perf_counter() - t0
    assert r.status_code == 200, r.text
    body = r.json()
    info = body["routerops"]
    reason = f"weak unavailable ({kind}); served by strong"
    assert body["model"] == STRONG and body["choices"][0]["message"]["content"] == f"{STRONG} says: {PROMPT}"
    assert info["model"] == STRONG and info["reason"].startswith(reason)
    assert info["failover"]["from_model"] == WEAK and info["failover"]["to_role"] == "strong"
    assert r.headers["x-routerops-failover"] == reason and r.headers["x-routerops-model"] == STRONG
    assert upstream.state.calls[WEAK] - calls == 2  # its own retry first (max_retries=1), then failover
    if fault == "hang":
        assert elapsed >= 2 * TIMEOUT_S
    row = log_row(settings, info["request_id"])
    assert row.model_chosen == STRONG and row.model_requested == WEAK
    assert row.extra["failover"]["reason"] == reason and row.extra["role"] == "strong"
    assert [a["error"] for a in row.extra["failover"]["attempts"]] == [kind]
    # cost: the failed attempt returned no usage (0), the strong answer is priced as strong
    assert row.cost_usd == pytest.approx((10 * 10.0 + body["usage"]["completion_tokens"] * 20.0) / 1e6)
    assert metric(api, "routerops_failovers_total", backend=WEAK, error=kind) == before + 1


def test_strong_fault_on_the_router_is_served_by_weak(faulty) -> None:
    api, upstream, settings = faulty
    upstream.state.mode[STRONG] = "500"
    r = chat(api, "router")
    assert r.status_code == 200, r.text
    info = r.json()["routerops"]
    assert info["model"] == WEAK and info["strategy"] == "router"
    assert info["reason"].startswith("strong unavailable (HTTP 500); served by weak; first choice: no champion")
    row = log_row(settings, info["request_id"])
    assert row.strategy == "router" and row.model_chosen == WEAK
    assert row.cost_usd == pytest.approx((10 * 1.0 + r.json()["usage"]["completion_tokens"] * 2.0) / 1e6)


def test_both_down_is_a_502_naming_both(faulty) -> None:
    api, upstream, _ = faulty
    upstream.state.mode.update({WEAK: "500", STRONG: "429"})
    r = chat(api, "router")
    assert r.status_code == 502
    message = r.json()["error"]["message"]
    assert "strong (strong-m) unavailable" in message and "weak (weak-m) unavailable" in message
    assert "HTTP 429" in message and "HTTP 500" in message


def test_a_request_the_backend_refuses_does_not_fail_over(faulty) -> None:
    api, upstream, _ = faulty
    upstream.state.mode[WEAK] = "400"
    strong_calls = upstream.state.calls[STRONG]
    r = chat(api, WEAK)
    assert r.status_code == 502 and "HTTP 400" in r.json()["error"]["message"]
    assert upstream.state.calls[STRONG] == strong_calls  # a 400 is the request's fault, not weak's health


# --- the cascade: an unavailable rung is skipped to the next ----------------------------------------
def test_cascade_skips_an_unavailable_rung(faulty, static_embedder_dir: Path, tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sqlalchemy import select

    from routerops.db import session_scope
    from routerops.db.models import CascadeStepLog
    from routerops.models.embedders.static import StaticEmbedder
    from routerops.models.probes.features import text_features
    from routerops.models.probes.model import DeferralProbe
    from routerops.serving.cascade import CascadeConfig, save_cascade_config

    api, upstream, settings = faulty
    prompts = [f"{PROMPT} {i}" for i in range(4)]  # a real text probe on the static embedder
    X = text_features(StaticEmbedder(static_embedder_dir), prompts, [f"{WEAK} says: {p}" for p in prompts])
    DeferralProbe(LogisticRegression().fit(X, [0, 1, 0, 1]),
                  {"kind": "text", "feature_key": "text", "embedding_backend": "static",
                   "embedding_model": str(static_embedder_dir)}).save(tmp_path / "probe")
    with session_scope(settings) as s:  # threshold 1: the probe never accepts, weak's answer always escalates
        save_cascade_config(s, CascadeConfig(models=[WEAK, STRONG], thresholds=[1.0], probe_uri=str(tmp_path / "probe")))

    upstream.state.mode[WEAK] = "500"
    before = metric(api, "routerops_failovers_total", backend=WEAK, error="HTTP 500")
    r = chat(api, "cascade")
    assert r.status_code == 200, r.text
    info = r.json()["routerops"]
    assert info["model"] == STRONG and info["strategy"] == "cascade" and info["escalated"] is True
    assert info["reason"] == "weak unavailable (HTTP 500); served by strong"
    assert r.headers["x-routerops-failover"] == "weak unavailable (HTTP 500); served by strong"
    assert info["failover"]["attempts"][0]["error"] == "HTTP 500" and info["failover"]["to_model"] == STRONG
    assert metric(api, "routerops_failovers_total", backend=WEAK, error="HTTP 500") == before + 1
    row = log_row(settings, info["request_id"])
    assert row.model_chosen == STRONG and row.extra["failover"]["from_model"] == WEAK
    with session_scope(settings) as s:  # only the rung that answered has a cascade_steps row
        steps = s.scalars(select(CascadeStepLog).where(CascadeStepLog.request_id == info["request_id"])).all()
        assert [(x.step, x.model, x.accepted) for x in steps] == [(1, STRONG, True)]

    upstream.state.mode.clear()
    upstream.state.mode[STRONG] = "500"  # weak answers, the probe doubts it, strong is down: weak's answer
    r = chat(api, "cascade")
    assert r.status_code == 200, r.text
    info = r.json()["routerops"]
    assert info["model"] == WEAK and info["escalated"] is False
    assert info["reason"].startswith("strong unavailable (HTTP 500); served by weak; probe P(good)=")
    assert info["reason"].endswith("< 1.000, no later rung available: kept weak-m's answer")

    upstream.state.mode[WEAK] = "500"
    r = chat(api, "cascade")
    assert r.status_code == 502 and "every rung of the cascade is unavailable" in r.json()["error"]["message"]


# --- streams ----------------------------------------------------------------------------------------
def test_stream_broken_before_its_first_token_fails_over(faulty) -> None:
    api, upstream, settings = faulty
    upstream.state.mode[WEAK] = "drop_before"
    r = chat(api, WEAK, stream=True)
    assert r.status_code == 200
    assert r.headers["x-routerops-failover"].startswith("weak unavailable (")
    events = sse(r)
    head, last = events[0]["routerops"], events[-1]
    assert head["model"] == STRONG and head["failover"]["from_model"] == WEAK
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert text == f"{STRONG} says: {PROMPT}" and last["choices"][0]["finish_reason"] == "stop"
    row = log_row(settings, head["request_id"])
    assert row.model_chosen == STRONG and row.completion == text and row.extra["failover"]["from_role"] == "weak"


def test_stream_broken_after_its_first_token_ends_with_an_error_event(faulty) -> None:
    api, upstream, settings = faulty
    upstream.state.mode[WEAK] = "drop_after"
    strong_calls = upstream.state.calls[STRONG]
    before = metric(api, "routerops_stream_errors_total", backend=WEAK)
    r = chat(api, WEAK, stream=True)
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
    events = sse(r)
    err = events[-1]["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == "backend_error"
    assert "backend failed mid-stream" in err["message"] and "broke" in err["message"]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if "choices" in e)
    assert text == f"{WEAK} says:"  # what came before the cut, and no finish_reason chunk
    assert not any(e["choices"][0].get("finish_reason") for e in events if "choices" in e)
    assert upstream.state.calls[STRONG] == strong_calls  # tokens were out: no silent switch of model
    row = log_row(settings, events[0]["routerops"]["request_id"])
    assert row.extra["finish_reason"] == "error" and row.completion == text and "broke" in row.extra["stream_error"]
    assert metric(api, "routerops_stream_errors_total", backend=WEAK) == before + 1


# --- failover off -----------------------------------------------------------------------------------
def test_failover_none_answers_502(faulty) -> None:
    from routerops.backends.factory import make_pair
    from routerops.serving.failover import BackendsUnavailable, Guard

    _, upstream, settings = faulty
    upstream.state.mode[WEAK] = "500"
    strong_calls = upstream.state.calls[STRONG]
    off = settings.model_copy(update={"failover": "none"})
    guard = Guard(off, make_pair(off))
    with pytest.raises(BackendsUnavailable, match=r"weak \(weak-m\) unavailable.*HTTP 500"):
        guard.attempt("weak", lambda b: b.generate([{"role": "user", "content": PROMPT}], _params()))
    assert upstream.state.calls[STRONG] == strong_calls


def _params():  # noqa: ANN202
    from routerops.backends.base import GenerationParams

    return GenerationParams(max_new_tokens=16)


# --- circuit breaker: a weak backend with nothing listening, which later comes up ----------------------
def test_breaker_opens_skips_probes_and_closes(data_dir: Path) -> None:
    from routerops.serving.app import create_app

    weak_port = free_port()  # nothing listens here until the end of the test
    upstream = upstream_app()
    with running_server(upstream) as up:
        settings = make_settings(data_dir, f"http://127.0.0.1:{weak_port}/v1", f"{up}/v1",
                                 breaker_fail_max=2, breaker_reset_s=1.5)
        with running_server(create_app(settings)) as api:
            def ask() -> dict:
                r = chat(api, WEAK)
                assert r.status_code == 200, r.text
                return r.json()["routerops"]

            def circuit() -> dict:
                return healthz(api, ADMIN)["backends"]["weak"]["circuit"]

            assert circuit()["state"] == "closed"
            for _ in range(2):  # two refused calls (each with its own retry) open the circuit
                info = ask()
                assert info["model"] == STRONG
                assert info["reason"].startswith("weak unavailable (ConnectError); served by strong")
            health = healthz(api, ADMIN)
            assert health["backends"]["weak"]["circuit"]["state"] == "open" and health["status"] == "degraded"
            assert healthz(api) == {"status": "degraded", "reasons": ["weak backend circuit open"]}
            assert metric(api, "routerops_circuit_state", backend=WEAK) == 2.0
            assert metric(api, "routerops_circuit_state", backend=STRONG) == 0.0

            t0 = time.perf_counter()
            info = ask()  # skipped without a call
            assert info["reason"].startswith("weak unavailable (circuit open); served by strong")
            assert time.perf_counter() - t0 < 1.0
            assert metric(api, "routerops_circuit_skips_total", backend=WEAK) == 1.0
            assert metric(api, "routerops_failovers_total", backend=WEAK, error="circuit open") == 1.0

            time.sleep(1.6)  # the half-open probe still finds nothing listening: open again
            info = ask()
            assert info["reason"].startswith("weak unavailable (ConnectError)")
            assert circuit()["state"] == "open"

            with serve_on(upstream_app(), weak_port):  # weak comes up; the next probe closes the circuit
                time.sleep(1.6)
                info = ask()
                assert info["model"] == WEAK and info["failover"] is None
                assert circuit() == {"state": "closed", "consecutive_failures": 0, "fail_max": 2, "reset_s": 1.5}
                assert metric(api, "routerops_circuit_state", backend=WEAK) == 0.0
                assert httpx.get(f"{api}/healthz", timeout=10).json()["status"] == "ok"


def test_breaker_lets_exactly_one_probe_through() -> None:
    from routerops.backends.base import BackendError
    from routerops.serving.breaker import BackendBreaker, CircuitOpen

    changes: list[str] = []
    breaker = BackendBreaker("m", fail_max=2, reset_s=0.2, on_change=lambda _name, state: changes.append(state))
    down = BackendError("down", unavailable=True)
    breaker.failure(breaker.acquire(), down)
    breaker.success(breaker.acquire())  # a success resets the count of consecutive failures
    breaker.failure(breaker.acquire(), down)
    assert breaker.state == "closed" and breaker.failures == 1
    breaker.failure(breaker.acquire(), down)
    assert breaker.state == "open" and changes == ["open"]
    with pytest.raises(CircuitOpen, match="next probe in"):
        breaker.acquire()
    time.sleep(0.25)
    assert breaker.acquire() is True  # the probe
    with pytest.raises(CircuitOpen, match="a probe request is testing it now"):
        breaker.acquire()
    breaker.release(True)  # a bad request says nothing about health: still half-open, next call probes
    assert breaker.state == "half-open" and breaker.acquire() is True
    breaker.success(True)
    assert breaker.state == "closed" and changes == ["open", "half-open", "closed"]
    assert breaker.acquire() is False
