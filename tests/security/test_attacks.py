"""The attacks of issue 26, against a real server (uvicorn on 127.0.0.1, the recorded replay pair,
SQLite): what a stranger and a user key can see and do. Each test names the attack it replays."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from serving_helpers import RECORDED_PAIR, STRONG, WEAK, free_port, running_server, wait_for

ROOT = Path(__file__).resolve().parents[2]
USER_A, USER_B, ADMIN = "sec-user-a-0123456789", "sec-user-b-0123456789", "sec-admin-0123456789"
SECRET = "s3cret-Pa55"  # the password in every credentialed URI below: it must appear nowhere
PROMPT = "What's a fun fact about cats?"
RATE = 40  # feedback requests per key per minute in these servers


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def make_settings(data_dir: Path, **overrides):  # noqa: ANN201
    from routerops.settings import Settings

    values = dict(data_dir=data_dir, weak_backend="replay", strong_backend="replay", weak_model=WEAK,
                  strong_model=STRONG, replay_file=RECORDED_PAIR, api_keys=[USER_A, USER_B], admin_api_keys=[ADMIN],
                  # an MLflow server with credentials that is not there: its URI is in reload errors
                  mlflow_tracking_uri=f"http://routerops:{SECRET}@127.0.0.1:{free_port()}",
                  serving_registry_retries=0, serving_registry_timeout_s=1.0, reload_interval_s=600,
                  max_body_bytes=20_000, feedback_rate_limit=f"{RATE}/minute", request_log_retry_interval_s=0.3)
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from routerops.db import dispose_engines, migrate
    from routerops.serving.app import create_app

    root = tmp_path_factory.mktemp("security")
    settings = make_settings(root / "data")
    settings.ensure_data_dir()
    migrate.upgrade("head", settings=settings)
    logs = Collect()
    logging.getLogger().addHandler(logs)
    old_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.INFO)
    try:
        with running_server(create_app(settings), log_level="info") as base:
            logging.getLogger("uvicorn.access").addHandler(logs)  # it does not propagate
            yield base, settings, logs
    finally:
        logging.getLogger().removeHandler(logs)
        logging.getLogger("uvicorn.access").removeHandler(logs)
        logging.getLogger().setLevel(old_level)
        dispose_engines()


def chat(base: str, key: str = USER_A, model: str = WEAK, **body) -> httpx.Response:  # noqa: ANN003
    return httpx.post(f"{base}/v1/chat/completions", headers=auth(key), timeout=60,
                      json={"model": model, "messages": [{"role": "user", "content": PROMPT}], **body})


def feedback(base: str, key: str, **body) -> httpx.Response:  # noqa: ANN003
    return httpx.post(f"{base}/v1/feedback", headers=auth(key), json=body, timeout=30)


# --- item 1: what a stranger sees ---------------------------------------------------------------
def test_healthz_tells_strangers_status_and_reason_only(served) -> None:  # noqa: ANN001
    base, settings, _ = served
    r = httpx.get(f"{base}/healthz", timeout=10)
    assert r.status_code == 200
    assert r.json() == {"status": "degraded", "reasons": ["router reload failing"]}  # MLflow is not there
    detail = httpx.get(f"{base}/admin/status", headers=auth(ADMIN), timeout=10)
    assert detail.status_code == 200
    assert SECRET not in detail.text
    assert "routerops:***@127.0.0.1" in detail.json()["last_reload_error"]  # the admin still sees which server
    assert "***@" in detail.json()["routing"]
    assert httpx.get(f"{base}/admin/status", headers=auth(USER_A), timeout=10).status_code == 403
    r = httpx.get(f"{base}/admin/status", timeout=10)
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="routerops"'


def test_no_credential_in_any_answer_to_a_user_key(served) -> None:  # noqa: ANN001
    base, _, _ = served
    for r in (chat(base, model="router"), httpx.get(f"{base}/v1/models", headers=auth(USER_A), timeout=10),
              chat(base, model="cascade")):
        assert SECRET not in r.text, r.text
    info = chat(base, model="router").json()["routerops"]
    assert "registry unreachable" in info["reason"] and SECRET not in info["reason"]


def test_replay_error_shows_no_server_path(served) -> None:  # noqa: ANN001
    base, _, _ = served
    r = httpx.post(f"{base}/v1/chat/completions", headers=auth(USER_A), timeout=30,
                   json={"model": WEAK, "messages": [{"role": "user", "content": "a prompt never recorded"}]})
    assert r.status_code == 502
    message = r.json()["error"]["message"]
    assert "no recorded output" in message and RECORDED_PAIR.name in message
    assert str(RECORDED_PAIR.parent) not in message


def test_server_log_masks_credentials_and_query_strings(served) -> None:  # noqa: ANN001
    base, _, logs = served
    r = httpx.get(f"{base}/v1/models?api_key=query-string-key-123", headers=auth(USER_A), timeout=10)
    assert r.status_code == 200
    wait_for(lambda: "GET /v1/models" in logs.text, timeout_s=5)
    assert "query-string-key-123" not in logs.text  # the access log drops the query string
    assert "initial router load" in logs.text and "routerops:***@" in logs.text
    assert SECRET not in logs.text


def test_backend_error_masks_the_backend_credentials(tmp_path: Path) -> None:
    from routerops.serving.app import create_app

    dead = f"http://svc:{SECRET}@127.0.0.1:{free_port()}/v1"  # nothing listens: a connection error
    settings = make_settings(tmp_path / "data", weak_backend="openai", weak_base_url=dead, failover="none",
                             http_max_retries=0, http_timeout_s=2.0, breaker_fail_max=100)
    settings.ensure_data_dir()
    from routerops.db import migrate

    migrate.upgrade("head", settings=settings)
    with running_server(create_app(settings)) as base:
        r = chat(base, model=WEAK)
        assert r.status_code == 502, r.text
        assert SECRET not in r.text
        for path in ("/healthz", "/v1/models"):
            assert SECRET not in httpx.get(f"{base}{path}", headers=auth(USER_A), timeout=10).text
        assert SECRET not in httpx.get(f"{base}/admin/status", headers=auth(ADMIN), timeout=10).text


def test_mlflow_tags_mask_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A monitor run whose PGR is null for a reason quoting a credentialed URI: the tag is masked."""
    import mlflow

    from routerops.monitoring.replay import MonitorResult
    from routerops.monitoring.reporting import log_monitor_run
    from routerops.settings import Settings

    monkeypatch.chdir(tmp_path)
    settings = Settings(data_dir=tmp_path / "data", mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    settings.ensure_data_dir()
    od = {"exact_match_rate": 1.0, "similarity": 1.0, "length_change": 0.0}
    result = MonitorResult(run_id="0" * 32, status="ok", n_traces=0, pgr=None, baseline_pgr=None, strong_share=None,
                           alpha=0.5, drift_detected=False, drift_share=None, regression=False,
                           metrics={"output_drift": {"weak": od, "strong": od}},
                           pgr_null_reason=f"no live router: registry http://u:{SECRET}@mlflow:5000 unreachable")
    run_id = log_monitor_run(settings, result, [], np.array([0.2, 0.7]))
    tags = mlflow.MlflowClient(settings.resolved_tracking_uri).get_run(run_id).data.tags
    assert "u:***@mlflow" in tags["pgr_null_reason"] and SECRET not in str(tags)


# --- item 2: feedback -------------------------------------------------------------------------------
def test_feedback_only_by_the_requests_own_key(served) -> None:  # noqa: ANN001
    base, _, _ = served
    rid = chat(base, USER_A).json()["routerops"]["request_id"]
    r = feedback(base, USER_B, request_id=rid, thumbs="down")
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_request_owner", r.text
    assert feedback(base, USER_A, request_id=rid, thumbs="down").status_code == 201
    assert feedback(base, ADMIN, request_id=rid, thumbs="up").status_code == 201  # an admin may


def test_feedback_is_one_vote_per_request_and_key(served) -> None:  # noqa: ANN001
    from sqlalchemy import select

    from routerops.db import session_scope
    from routerops.db.models import PreferenceLog, RequestLog

    base, settings, _ = served
    rid = chat(base, USER_A).json()["routerops"]["request_id"]
    answers = [feedback(base, USER_A, request_id=rid, thumbs="down") for _ in range(3)]
    assert [a.status_code for a in answers] == [201] * 3
    assert [a.json()["replaced"] for a in answers] == [False, True, True]
    last = feedback(base, USER_A, request_id=rid, thumbs="up")
    with session_scope(settings) as s:
        rows = s.scalars(select(PreferenceLog).where(PreferenceLog.request_id == rid)).all()
        assert [(p.id, p.winner, p.feedback_key) for p in rows] == [(last.json()["preference_id"], "a", "env-user-1")]
        assert len(s.get(RequestLog, rid).extra["feedback"]) == 1  # replaced, not appended


def test_feedback_size_and_model_limits(served) -> None:  # noqa: ANN001
    base, settings, _ = served
    rid = chat(base, USER_A).json()["routerops"]["request_id"]
    r = feedback(base, USER_A, request_id=rid, preference={"winner": "b", "other_model": "my-own-model"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_found"
    assert r.json()["error"]["param"] == "preference.other_model"
    # under the body limit, over the answer limit
    big = "x" * (settings.feedback_max_answer_chars + 1)
    settings_body = {"winner": "b", "other_model": STRONG, "other_answer": big}
    r = httpx.post(f"{base}/v1/feedback", headers=auth(USER_A), timeout=30,
                   json={"request_id": rid, "preference": settings_body})
    assert r.status_code in (400, 413)
    if r.status_code == 400:
        assert r.json()["error"]["code"] == "answer_too_long"
    r = feedback(base, USER_A, request_id=rid, preference={"winner": "b", "other_model": STRONG,
                                                          "other_answer": "short and fine"})
    assert r.status_code == 201, r.text


def test_feedback_rate_limit_per_key(served) -> None:  # noqa: ANN001
    base, _, _ = served
    codes = [feedback(base, USER_B, request_id=f"missing-{i}", thumbs="up").status_code for i in range(RATE + 2)]
    assert codes.count(429) >= 2 and set(codes) <= {404, 429}, codes
    r = feedback(base, USER_B, request_id="missing", thumbs="up")
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["code"] == "rate_limited"
    rid = chat(base, USER_A).json()["routerops"]["request_id"]  # another key is not limited by B's
    assert feedback(base, USER_A, request_id=rid, thumbs="up").status_code == 201


def test_one_key_cannot_trigger_or_steer_a_retrain(served) -> None:  # noqa: ANN001
    from routerops.db import session_scope
    from routerops.importers.store import load_outcomes, load_preferences
    from routerops.orchestration.scheduler import _new_rows
    from routerops.training.router_data import cap_feedback_per_key

    base, settings, _ = served
    strict = settings.model_copy(update={"retrain_min_new_rows": 20, "feedback_max_key_share": 0.1})
    before, _, _ = _new_rows(strict, "retrain-router")
    ids = [chat(base, USER_A).json()["routerops"]["request_id"] for _ in range(12)]
    for rid in ids:
        assert feedback(base, USER_A, request_id=rid, thumbs="down").status_code == 201
    new, _, _ = _new_rows(strict, "retrain-router")
    # 12 thumbs-down make 12 preference and 12 outcome rows; A's rows count at most 2 (10% of 20)
    assert new - before <= 2, (before, new)
    with session_scope(settings) as s:
        prefs, outcomes = load_preferences(s), load_outcomes(s)
    kept_p, kept_o, per_key = cap_feedback_per_key(prefs, outcomes, 0.1)
    assert per_key["env-user-1"]["rows"] >= 24
    assert per_key["env-user-1"]["kept"] == max(1, int(0.1 * (len(prefs) + len(outcomes))))
    assert len(kept_p) + len(kept_o) < len(prefs) + len(outcomes)


# --- items 3, 4, 6: bodies and types ----------------------------------------------------------------
def _bench():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("bench_body_limit", ROOT / "benchmarks" / "bench_body_limit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chunked_body_refused_while_reading(served) -> None:  # noqa: ANN001
    base, settings, _ = served
    port = int(base.rsplit(":", 1)[1])
    bench = _bench()
    bench.KEY = USER_A
    status, sent, answer = bench.send_chunked(port, 50_000_000)
    assert status == 413, answer
    assert sent < 10_000_000  # stopped long before the 50 MB
    assert b"request_too_large" in answer or status == 413


def test_memory_under_a_200mb_chunked_body(tmp_path: Path) -> None:
    """A real `routerops serve` process: its RSS grows by less than 10 MB while a client sends 200 MB."""
    bench = _bench()
    proc, port = bench.start_server(tmp_path / "data", tmp_path / "server.log")
    try:
        result = bench.measure(port, proc.pid, 200)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"\nserver memory growth under a 200 MB chunked body: {result['growth_mb']} MB ({result})")
    assert result["status"] == 413 and result["growth_mb"] < 10, result


def test_deeply_nested_json_is_a_400_and_keeps_the_connection(served) -> None:  # noqa: ANN001
    base, _, _ = served
    with httpx.Client(base_url=base, headers=auth(USER_A), timeout=30) as client:
        for path in ("/v1/chat/completions", "/v1/feedback"):
            r = client.post(path, content=b"[" * 15_000, headers={"content-type": "application/json"})
            assert r.status_code == 400, r.text
            assert "nested too deeply" in r.json()["error"]["message"]
        nested: object = "x"
        for _ in range(40):  # parses, but deeper than any request we take
            nested = [nested]
        r = client.post("/v1/chat/completions", json={"model": WEAK, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi", "extra": nested}]}]})
        assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"]
        assert client.get("/v1/models").status_code == 200  # the same keep-alive connection still serves


def test_strict_types(served) -> None:  # noqa: ANN001
    base, _, _ = served
    for field, value in (("max_tokens", True), ("stream", "yes"), ("temperature", "0.5")):
        r = chat(base, **{field: value})
        assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text


def test_every_error_answer_is_counted(served) -> None:  # noqa: ANN001
    import re

    base, _, _ = served

    def count(status: str) -> float:
        text = httpx.get(f"{base}/metrics", headers=auth(ADMIN), timeout=10).text
        m = re.search(rf'^routerops_request_errors_total{{status="{status}"}} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0

    before = {s: count(s) for s in ("400", "401", "404", "413")}
    chat(base, max_tokens=True)
    httpx.get(f"{base}/v1/models", timeout=10)
    feedback(base, USER_A, request_id="nope-404", thumbs="up")
    httpx.post(f"{base}/v1/chat/completions", headers=auth(USER_A), content=b"x" * 30_000, timeout=10)
    assert {s: count(s) - before[s] for s in before} == {"400": 1, "401": 1, "404": 1, "413": 1}


# --- item 5: the SQLite file deleted under the running server -------------------------------------
def test_deleted_sqlite_database_is_an_outage(tmp_path: Path) -> None:
    from sqlalchemy import select

    from routerops.db import dispose_engines, migrate, session_scope
    from routerops.db.models import RequestLog
    from routerops.serving.app import create_app

    settings = make_settings(tmp_path / "data")
    settings.ensure_data_dir()
    migrate.upgrade("head", settings=settings)
    db = settings.data_dir / "routerops.db"
    try:
        with running_server(create_app(settings)) as base:
            assert chat(base).status_code == 200
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
            during = [chat(base).json()["routerops"]["request_id"] for _ in range(2)]  # served, rows buffered
            r = feedback(base, USER_A, request_id=during[0], thumbs="up")
            assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable", r.text
            health = httpx.get(f"{base}/healthz", timeout=10).json()
            assert health["status"] == "degraded" and "database unavailable" in health["reasons"]
            assert not db.exists()  # nothing re-created an empty database behind the operator's back
            # the operator restores the database (a new file): the buffered rows land in it
            env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEROPS_")} | {
                "ROUTEROPS_DATA_DIR": str(settings.data_dir), "PYTHONPATH": str(ROOT)}
            subprocess.run([sys.executable, "-m", "routerops.orchestration.cli", "db", "upgrade"], env=env,
                           check=True, capture_output=True, cwd=ROOT)

            def stored() -> bool:
                with session_scope(settings) as s:
                    return set(s.scalars(select(RequestLog.id))) >= set(during)

            wait_for(stored, timeout_s=30)
            assert feedback(base, USER_A, request_id=during[0], thumbs="up").status_code == 201
            assert httpx.get(f"{base}/healthz", timeout=10).json()["status"] in ("ok", "degraded")
    finally:
        dispose_engines()
