"""PostgreSQL stopped and started under a serving API (a real throwaway cluster, tests/pg_cluster.py).

While the database is down: chat completions are still served, the cascade with the last config it
read (the request-log rows wait in the
bounded buffer, the oldest dropped when it is full, all counted on /metrics), feedback answers 503 in
the OpenAI error format and stores nothing. Once it is back: the buffer is flushed by the retry timer
(no new request needed) and feedback is recorded again, including on a request served during the
outage.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pg_cluster import PgCluster, pg_bin
from serving_helpers import RECORDED_PAIR, STRONG, WEAK, free_port, running_server, wait_for

KEY = "db-outage-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
ADMIN = {"Authorization": "Bearer db-outage-admin-key-0123456789"}
PROMPT = "What's a fun fact about cats?"
BUFFER = 3


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    if pg_bin() is None:
        # CI and project machines run PostgreSQL: a missing pg_ctl is a broken set-up, not a reason to skip
        pytest.fail("PostgreSQL server binaries (pg_ctl under /usr/lib/postgresql/*/bin) not installed")
    pg = PgCluster(free_port()).init()
    pg.start()
    yield pg
    from routerops.db import dispose_engines

    dispose_engines()
    pg.destroy()


RELOAD_S = 0.5  # the cascade re-reads its config (and the router its alpha) at this pace


@pytest.fixture
def api(cluster: PgCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, static_embedder_dir: Path):  # noqa: ANN201
    from routerops.db import migrate
    from routerops.serving.app import create_app
    from routerops.settings import Settings

    monkeypatch.chdir(tmp_path)
    settings = Settings(data_dir=tmp_path / "data", database_url=cluster.url,
                        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                        weak_backend="replay", strong_backend="replay", weak_model=WEAK, strong_model=STRONG,
                        replay_file=RECORDED_PAIR, api_keys=[KEY], reload_interval_s=RELOAD_S,
                        admin_api_keys=[ADMIN["Authorization"].removeprefix("Bearer ")],
                        request_log_buffer_size=BUFFER, request_log_retry_interval_s=0.3)
    settings.ensure_data_dir()
    migrate.upgrade("head", settings=settings)
    calibrate_cascade(settings, static_embedder_dir, tmp_path / "probe")
    with running_server(create_app(settings)) as base:
        yield base, settings


def calibrate_cascade(settings, embedder_dir: Path, probe_dir: Path) -> None:  # noqa: ANN001
    """A stored cascade config (weak, then strong) with a real text probe on the static embedder."""
    from sklearn.linear_model import LogisticRegression

    from routerops.backends.replay import read_records
    from routerops.db import session_scope
    from routerops.models.embedders.static import StaticEmbedder
    from routerops.models.probes.features import text_features
    from routerops.models.probes.model import DeferralProbe
    from routerops.serving.cascade import CascadeConfig, save_cascade_config

    weak = {r["prompt"]: r["output"] for r in read_records(RECORDED_PAIR) if r["model"] == WEAK}
    prompts = sorted(weak)
    X = text_features(StaticEmbedder(embedder_dir), prompts, [weak[p] for p in prompts])
    pipeline = LogisticRegression().fit(X, [i % 2 for i in range(len(prompts))])
    DeferralProbe(pipeline, {"kind": "text", "feature_key": "text", "embedding_backend": "static",
                             "embedding_model": str(embedder_dir)}).save(probe_dir)
    with session_scope(settings) as session:
        save_cascade_config(session, CascadeConfig(models=[WEAK, STRONG], thresholds=[0.5], probe_uri=str(probe_dir)))


def chat(base: str, stream: bool = False, model: str = WEAK) -> tuple[str, float]:
    t0 = time.perf_counter()
    r = httpx.post(f"{base}/v1/chat/completions", headers=AUTH, timeout=30,
                   json={"model": model, "messages": [{"role": "user", "content": PROMPT}], "stream": stream})
    assert r.status_code == 200, r.text
    if model == "cascade":
        assert r.json()["routerops"]["strategy"] == "cascade"
        return r.json()["routerops"]["request_id"], time.perf_counter() - t0
    if stream:
        assert r.text.rstrip().endswith("data: [DONE]") and '"error"' not in r.text
        return r.headers["x-routerops-request-id"], time.perf_counter() - t0
    assert r.json()["choices"][0]["message"]["content"] == "Cats sleep a lot."
    return r.json()["routerops"]["request_id"], time.perf_counter() - t0


def feedback(base: str, request_id: str) -> httpx.Response:
    return httpx.post(f"{base}/v1/feedback", headers=AUTH, timeout=30,
                      json={"request_id": request_id, "thumbs": "up", "comment": "outage test"})


def metric(base: str, name: str, labels: str = "") -> float:
    text = httpx.get(f"{base}/metrics", headers=AUTH, timeout=30).text
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def stored(settings, ids: list[str]) -> set[str]:  # noqa: ANN001
    from sqlalchemy import select

    from routerops.db import session_scope
    from routerops.db.models import RequestLog

    with session_scope(settings) as s:
        return set(s.scalars(select(RequestLog.id).where(RequestLog.id.in_(ids))))


def test_postgres_stopped_and_started_while_serving(api, cluster: PgCluster, caplog) -> None:  # noqa: ANN001
    from sqlalchemy import func, select

    from routerops.db import session_scope
    from routerops.db.models import PreferenceLog

    base, settings = api
    caplog.set_level(logging.WARNING, logger="serving")
    before, _ = chat(base)
    assert feedback(base, before).status_code == 201
    cascaded, _ = chat(base, model="cascade")  # loads the cascade config
    assert stored(settings, [before, cascaded]) == {before, cascaded}

    cluster.stop()
    time.sleep(RELOAD_S + 0.2)  # the cascade's config is due for a re-read, which fails
    during = [chat(base, model="cascade")[0]]  # served with the last config it loaded
    for i in range(BUFFER + 1):  # with the cascade's row: two more than the buffer holds
        rid, seconds = chat(base, stream=i == 0)
        during.append(rid)
        assert seconds < 5, f"request {i} took {seconds:.1f}s with the database down"
    assert metric(base, "routerops_request_log_write_failures_total", '{error="OperationalError"}') >= 1
    assert metric(base, "routerops_request_log_buffered") == BUFFER
    assert metric(base, "routerops_request_log_dropped_total", '{reason="buffer_full"}') == 2
    for rid in (before, during[-1]):  # a stored request and a buffered one: nothing can be recorded
        r = feedback(base, rid)
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["type"] == "service_unavailable" and err["code"] == "database_unavailable"
        assert err["message"].startswith("feedback not recorded:") and r.headers["retry-after"] == "5"
    assert metric(base, "routerops_feedback_unavailable_total") == 2
    assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
    r = httpx.get(f"{base}/admin/feedback", headers=ADMIN, timeout=30)  # any route reading the database
    assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable", r.text

    cluster.start()
    wait_for(lambda: metric(base, "routerops_request_log_buffered") == 0, timeout_s=30)  # the timer flushed
    assert stored(settings, during) == set(during[2:])  # the two oldest were dropped, the rest kept
    assert metric(base, "routerops_request_log_flushed_total") == BUFFER
    r = feedback(base, during[-1])  # served during the outage, recorded now
    assert r.status_code == 201, r.text
    assert r.json()["recorded"] == "preference"  # a thumbs-up on a weak answer
    assert feedback(base, before).status_code == 201
    after, _ = chat(base)
    assert stored(settings, [after]) == {after}
    with session_scope(settings) as s:  # one row per (request, key), none for the 503s
        assert s.scalar(select(func.count(PreferenceLog.id)).where(PreferenceLog.source == "feedback")) == 2

    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "request log writes failing (OperationalError" in logged
    assert "request log buffer full (3 rows): dropping the oldest" in logged
    assert f"{BUFFER} buffered row(s) written after the database came back" in logged
    assert "feedback on" in logged and "not recorded" in logged
    assert "cascade config unreadable (OperationalError); serving the last one loaded" in logged


def test_a_row_the_database_refuses_is_dropped_not_retried_forever(postgres_url: str, tmp_path: Path) -> None:
    """A non-connectivity failure (PostgreSQL refuses the value) is retried a few times, then dropped
    and counted; it never blocks the rows behind it."""
    from routerops.db import migrate
    from routerops.db.models import new_id
    from routerops.serving.metrics import ServingMetrics
    from routerops.serving.request_log import LogEntry, RequestLogWriter
    from routerops.settings import Settings

    settings = Settings(data_dir=tmp_path / "data", database_url=postgres_url)
    migrate.upgrade("head", settings=settings)
    metrics = ServingMetrics()
    writer = RequestLogWriter(settings, metrics, capacity=10, retry_interval_s=0.05, max_attempts=3)

    def entry(strategy: str) -> LogEntry:
        return LogEntry(new_id(), "p", "a", strategy, WEAK, WEAK, None, None, None, 1.0, None, 1, 1, 0.0, "t")

    bad, good = entry("s" * 41), entry("direct")  # strategy is a String(40)
    assert writer.write(bad) is False and writer.pending(bad.request_id)
    assert writer.write(good) is True  # not in failing mode: a refused value is not an outage
    for _ in range(3):
        writer.flush()
    assert not writer.pending(bad.request_id) and len(writer) == 0
    assert stored(settings, [bad.request_id, good.request_id]) == {good.request_id}
    text = metrics.render().decode()
    assert 'routerops_request_log_dropped_total{reason="rejected"} 1.0' in text
    assert 'routerops_request_log_write_failures_total{error="DataError"} 1.0' in text


def test_rows_buffered_at_shutdown_survive_a_restart(cluster: PgCluster, tmp_path: Path) -> None:
    """The API shut down while PostgreSQL is down spills its buffered rows to a file; the next start,
    PostgreSQL back, writes every one of them."""
    from routerops.db import migrate
    from routerops.serving.app import create_app
    from routerops.serving.request_log_spill import spill_dir, spill_files
    from routerops.settings import Settings

    settings = Settings(data_dir=tmp_path / "data", database_url=cluster.url,
                        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                        weak_backend="replay", strong_backend="replay", weak_model=WEAK, strong_model=STRONG,
                        replay_file=RECORDED_PAIR, api_keys=[KEY], request_log_retry_interval_s=0.3)
    settings.ensure_data_dir()
    migrate.upgrade("head", settings=settings)
    first = create_app(settings)
    with running_server(first) as base:
        before, _ = chat(base)
        cluster.stop()
        during = [chat(base, stream=i == 0)[0] for i in range(3)]
        assert metric(base, "routerops_request_log_buffered") == 3
    assert b"routerops_request_log_spilled_total 3.0" in first.state.metrics.render()
    (spilled,) = spill_files(spill_dir(settings.data_dir))
    cluster.start()
    assert stored(settings, [before, *during]) == {before}

    with running_server(create_app(settings)) as base:
        wait_for(lambda: metric(base, "routerops_request_log_replayed_total") == 3, timeout_s=30)
        assert not spilled.exists()
    assert stored(settings, [before, *during]) == {before, *during}

