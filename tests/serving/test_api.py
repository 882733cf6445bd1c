"""The API end to end: a real uvicorn server driven by the official openai client.

The fast tests serve a recorded (replay) pair; the routers are real MF routers trained on the router
fixture and registered in a real MLflow store; one slow test serves the local SmolLM2 pair.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from click.testing import CliRunner
from serving_helpers import RECORDED_PAIR, STRONG, WEAK, free_port, healthz, running_server, wait_for

USER_KEY = "test-user-key-0123456789"
ADMIN_KEY = "test-admin-key-0123456789"
ROUTER_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "router" / "prefs.jsonl"
PROMPT = "What's a fun fact about cats?"


def make_settings(data_dir: Path, **overrides):  # noqa: ANN201
    from routerops.settings import Settings

    values = dict(data_dir=data_dir, weak_backend="replay", strong_backend="replay", weak_model=WEAK,
                  strong_model=STRONG, replay_file=RECORDED_PAIR, api_keys=[USER_KEY], admin_api_keys=[ADMIN_KEY],
                  reload_interval_s=0.5, max_body_bytes=20_000, max_prompt_chars=2_000)
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir: migrated database, the router fixture's preferences, two registered MF routers
    (versions 1 and 2, alias challenger only: no champion)."""
    from routerops.db import migrate, session_scope
    from routerops.db.models import PreferenceLog
    from routerops.text import prompt_hash
    from routerops.training.train_router import train_router

    root = tmp_path_factory.mktemp("api")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    data_dir = root / "data"
    settings = make_settings(data_dir)
    settings.ensure_data_dir()
    migrate.upgrade("head", settings=settings)
    with session_scope(settings) as session:
        for line in ROUTER_FIXTURE.read_text().splitlines():
            r = json.loads(line)
            session.add(PreferenceLog(prompt=r["prompt"], prompt_hash=prompt_hash(r["prompt"]), model_a=r["model_a"],
                                      model_b=r["model_b"], winner=r["winner"], soft_label=r.get("soft_label"),
                                      source="fixture", judge=r.get("judge")))
    for seed in (0, 1):
        result = train_router(settings, seed=seed, max_iter=60, progress=False)
        assert result.model_version == str(seed + 1)
    yield data_dir
    mp.undo()


@pytest.fixture(scope="module")
def api(store: Path):  # noqa: ANN201
    from routerops.serving.app import create_app

    settings = make_settings(store)
    with running_server(create_app(settings)) as base_url:
        yield base_url, settings


def client(base_url: str, key: str = USER_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0, timeout=120)


def ask(base_url: str, model: str = "router", prompt: str = PROMPT, **kw):  # noqa: ANN201
    return client(base_url).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}], **kw)


def approve(store: Path, version: str) -> None:
    from routerops.orchestration.cli import cli

    env = {"ROUTEROPS_DATA_DIR": str(store), "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}"}
    result = CliRunner().invoke(cli, ["approve", version, "--by", "test"], env=env)
    assert result.exit_code == 0, result.output
    assert f"version {version}" in result.output


# --- the wire format ---------------------------------------------------------------------------
def test_non_streaming_direct_and_extra_field(api) -> None:
    from routerops.db import session_scope
    from routerops.db.models import RequestLog

    base_url, settings = api
    raw = ask(base_url, model=WEAK)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Cats sleep a lot."  # the recorded weak answer
    assert completion.model == WEAK
    info = completion.model_extra["routerops"]
    assert info["model"] == WEAK and info["strategy"] == "direct"
    assert raw.headers["x-routerops-model"] == WEAK
    assert raw.headers["x-routerops-strategy"] == "direct"
    assert raw.headers["x-routerops-request-id"] == info["request_id"]
    # mixtral's catalog prices (0.6/0.6 USD per 1M tokens) priced the answer
    usage = completion.usage
    assert info["estimated_cost_usd"] == pytest.approx((usage.prompt_tokens + usage.completion_tokens) * 0.6 / 1e6)
    assert float(raw.headers["x-routerops-cost-usd"]) == pytest.approx(info["estimated_cost_usd"], abs=1e-8)
    with session_scope(settings) as session:
        row = session.get(RequestLog, info["request_id"])
        assert row is not None
        assert (row.model_chosen, row.strategy, row.model_requested) == (WEAK, "direct", WEAK)
        assert row.prompt == PROMPT and row.completion == "Cats sleep a lot."
        assert row.completion_tokens == usage.completion_tokens and row.latency_ms > 0
        assert row.api_key_name == "env-user-1"


def test_streaming_matches_non_streaming(api) -> None:
    base_url, _ = api
    full = client(base_url).chat.completions.create(model=STRONG, messages=[{"role": "user", "content": PROMPT}])
    chunks = list(client(base_url).chat.completions.create(
        model=STRONG, messages=[{"role": "user", "content": PROMPT}], stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert len(chunks) > 3  # really streamed in pieces
    first, last = chunks[0].model_extra["routerops"], chunks[-1].model_extra["routerops"]
    assert first["model"] == STRONG and first["request_id"] == last["request_id"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert last["estimated_cost_usd"] > 0  # gpt-4 prices, full answer counted at the end


def test_models_lists_strategies_and_pair(api) -> None:
    base_url, _ = api
    models = {m.id: m for m in client(base_url).models.list().data}
    assert {"router", "cascade", "speculative", WEAK, STRONG} <= set(models)


def test_unknown_model_names_the_valid_ones(api) -> None:
    base_url, _ = api
    with pytest.raises(openai.BadRequestError) as err:
        ask(base_url, model="gpt-17")
    body = err.value.body
    assert "gpt-17" in body["message"] and "router" in body["message"] and WEAK in body["message"]
    assert body["param"] == "model" and body["type"] == "invalid_request_error"


# --- routing and hot reload --------------------------------------------------------------------
def test_no_champion_routes_everything_to_strong(store: Path) -> None:
    from routerops.serving.app import create_app
    from routerops.serving.routing import NO_CHAMPION

    settings = make_settings(store, router_model_name="router-never-approved")
    with running_server(create_app(settings)) as base_url:
        info = ask(base_url).parse().model_extra["routerops"]
        assert info["model"] == STRONG and info["reason"] == NO_CHAMPION and info["router_version"] is None
        health = healthz(base_url, ADMIN_KEY)
        assert health["router_version"] is None and health["status"] == "ok"


def test_hot_reload_after_approve_and_alpha_change(api, store: Path) -> None:
    from routerops.alpha import propose_alpha
    from routerops.db import session_scope

    base_url, settings = api
    approve(store, "1")
    wait_for(lambda: healthz(base_url, ADMIN_KEY)["router_version"] == "1")
    info = ask(base_url).parse().model_extra["routerops"]
    assert info["router_version"] == "1" and info["p_strong_wins"] is not None
    assert info["model"] == (STRONG if info["p_strong_wins"] >= info["alpha"] else WEAK)

    approve(store, "2")
    wait_for(lambda: healthz(base_url, ADMIN_KEY)["router_version"] == "2")
    raw = ask(base_url)
    assert raw.parse().model_extra["routerops"]["router_version"] == "2"
    assert raw.headers["x-routerops-p-strong"] != ""
    p_v2 = raw.parse().model_extra["routerops"]["p_strong_wins"]

    # the live alpha moves with the alpha history: 1.0 sends everything weak, 0.0 everything strong
    for alpha, expected in ((1.0, WEAK), (0.0, STRONG)):
        with session_scope(settings) as session:
            propose_alpha(session, settings, alpha, reason="test", source="manual", max_step=1.0)
        wait_for(lambda a=alpha: healthz(base_url, ADMIN_KEY)["alpha"] == a)
        info = ask(base_url).parse().model_extra["routerops"]
        assert info["alpha"] == alpha and info["model"] == expected, info
        assert info["p_strong_wins"] == p_v2  # the same prompt again: from the routing cache
    metrics = httpx.get(f"{base_url}/metrics", headers={"Authorization": f"Bearer {USER_KEY}"}).text
    # the first ask under each router version embeds the prompt; the two repeats under v2 do not
    assert metric_value(metrics, 'routerops_routing_cache_total{result="miss"}') >= 2
    assert metric_value(metrics, 'routerops_routing_cache_total{result="hit"}') >= 2
    assert 'routerops_router_version_info{version="2"} 1.0' in metrics
    assert "routerops_alpha 0.0" in metrics
    assert 'routerops_requests_total{model="gpt-4-1106-preview",strategy="router"}' in metrics
    assert "routerops_routing_latency_seconds_count" in metrics
    assert "routerops_strong_call_share" in metrics


def metric_value(text: str, series: str) -> float:
    line = next((ln for ln in text.splitlines() if ln.startswith(series + " ")), None)
    assert line is not None, f"{series} missing from /metrics"
    return float(line.split()[-1])


def test_routing_cache_is_per_router_and_bounded(store: Path) -> None:
    """Exact repeats skip the embedder; a new router starts with an empty cache; the LRU keeps `size`."""
    from routerops.models.router import load_router
    from routerops.serving.routing import ScoreBatcher

    settings = make_settings(store)
    pair = (settings.strong_router_name, settings.weak_router_name)
    v1 = load_router(f"models:/{settings.router_model_name}/1", settings)
    v2 = load_router(f"models:/{settings.router_model_name}/2", settings)
    batcher = ScoreBatcher(*pair, cache_size=2)
    try:
        first, hit = batcher.score(v1, PROMPT)
        assert not hit and first == pytest.approx(float(v1.score([PROMPT], *pair)[0]))
        again, hit = batcher.score(v1, PROMPT)
        assert hit and again == first and batcher.scored == 1  # the router saw the prompt once
        other, hit = batcher.score(v2, PROMPT)
        assert not hit and other == pytest.approx(float(v2.score([PROMPT], *pair)[0]))
        assert batcher.scored == 2
        for prompt in ("second prompt", "third prompt"):  # size 2: PROMPT is the least recent, evicted
            batcher.score(v2, prompt)
        assert len(batcher.cache) == 2
        assert batcher.score(v2, "third prompt")[1] and not batcher.score(v2, PROMPT)[1]
        off = ScoreBatcher(*pair, cache_size=0)
        try:
            assert [off.score(v1, PROMPT)[1] for _ in range(2)] == [False, False] and off.scored == 2
        finally:
            off.close()
    finally:
        batcher.close()


def test_metrics_show_open_monitoring_alerts(api) -> None:
    from routerops.db import session_scope
    from routerops.db.models import Alert
    from routerops.monitoring.alerts import KINDS

    base_url, settings = api
    headers = {"Authorization": f"Bearer {USER_KEY}"}
    assert "pgr_regression" in KINDS
    before = httpx.get(f"{base_url}/metrics", headers=headers).text
    assert 'routerops_alert_active{kind="pgr_regression"} 0.0' in before
    with session_scope(settings) as session:
        session.add(Alert(kind="pgr_regression", dedupe_key="test:pgr", message="PGR fell"))
    try:
        after = httpx.get(f"{base_url}/metrics", headers=headers).text
        assert 'routerops_alert_active{kind="pgr_regression"} 1.0' in after
    finally:
        with session_scope(settings) as session:
            session.query(Alert).filter(Alert.dedupe_key == "test:pgr").delete()


def test_metrics_show_the_latest_monitor_run_and_category_alerts(api) -> None:
    from datetime import UTC, datetime, timedelta

    from routerops.db import session_scope
    from routerops.db.models import Alert, MonitorRun

    base_url, settings = api
    headers = {"Authorization": f"Bearer {USER_KEY}"}
    before = httpx.get(f"{base_url}/metrics", headers=headers).text
    assert 'routerops_alert_active{kind="category_regression"} 0.0' in before
    assert "routerops_monitor_pgr " not in before  # no monitor run yet: no figures at all
    now = datetime.now(UTC)
    rows = [{"category": "coding", "n": 12, "n_labelled": 12, "reported": True, "strong_share": 0.5,
             "pgr": 0.31, "baseline_pgr": 0.8},
            {"category": "math", "n": 11, "n_labelled": 11, "reported": True, "strong_share": 1.0,
             "pgr": None, "pgr_null_reason": "no gap", "baseline_pgr": 0.7},
            {"category": "tiny", "n": 2, "n_labelled": 2, "reported": False}]
    with session_scope(settings) as session:
        session.add(MonitorRun(golden_set="old.jsonl", status="ok", finished_at=now - timedelta(hours=1),
                               pgr=0.99, baseline_pgr=0.99, metrics={"categories": {"rows": [
                                   {"category": "gone", "n_labelled": 20, "reported": True, "pgr": 0.9}]}}))
        session.add(MonitorRun(golden_set="g.jsonl", status="ok", finished_at=now, pgr=None, baseline_pgr=0.72,
                               strong_share=0.6, alpha=0.4, metrics={"pgr_tolerance": 0.1,
                                                                     "categories": {"rows": rows}}))
        session.add(MonitorRun(golden_set="g.jsonl", status="failed", finished_at=now + timedelta(minutes=1)))
        session.add(Alert(kind="category_regression", dedupe_key="test:cat:coding", message="coding fell",
                          payload={"category": "coding"}))
        session.add(Alert(kind="live_drift", dedupe_key="test:live", message="live drift"))  # a kind not in KINDS
    try:
        after = httpx.get(f"{base_url}/metrics", headers=headers).text
        assert 'routerops_alert_active{kind="category_regression"} 1.0' in after
        assert 'routerops_alert_active{kind="live_drift"} 1.0' in after
        assert 'routerops_category_regression_active{category="coding"} 1.0' in after
        assert 'routerops_category_regression_active{category="math"} 0.0' in after
        # the latest successful run: a null PGR has no sample, its baseline does
        assert "routerops_monitor_pgr " not in after and "routerops_monitor_pgr_defined 0.0" in after
        assert metric_value(after, "routerops_monitor_baseline_pgr") == 0.72
        assert metric_value(after, "routerops_monitor_pgr_tolerance") == 0.1
        assert metric_value(after, "routerops_monitor_strong_share") == 0.6
        assert metric_value(after, "routerops_monitor_last_run_timestamp_seconds") == pytest.approx(now.timestamp())
        assert metric_value(after, 'routerops_category_pgr{category="coding"}') == 0.31
        assert 'routerops_category_pgr{category="math"}' not in after  # null
        assert metric_value(after, 'routerops_category_baseline_pgr{category="math"}') == 0.7
        assert 'routerops_category_pgr{category="tiny"}' not in after  # under the minimum count
        assert metric_value(after, 'routerops_category_labelled_traces{category="tiny"}') == 2.0
        assert 'category="gone"' not in after  # an older run's categories are not shown
    finally:
        with session_scope(settings) as session:
            session.query(Alert).filter(Alert.dedupe_key.like("test:%")).delete()
            session.query(MonitorRun).delete()
    cleared = httpx.get(f"{base_url}/metrics", headers=headers).text
    # a resolved (here: deleted) kind reads 0, not a stale 1 that would keep a Prometheus rule firing
    assert 'routerops_alert_active{kind="live_drift"} 0.0' in cleared and "routerops_category_pgr{" not in cleared


def test_mlflow_going_away_keeps_last_good_router(store: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from routerops import registry
    from routerops.serving.app import create_app

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    registry.approve("mf-router", "1", approved_by="test", settings=make_settings(store))
    port = free_port()
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    proc = subprocess.Popen(
        [mlflow_bin, "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=(tmp_path / "mlflow.log").open("w"),
        start_new_session=True)
    try:
        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                assert proc.poll() is None, (tmp_path / "mlflow.log").read_text()[-2000:]
                return False

        wait_for(up, timeout_s=120, interval_s=0.5)
        settings = make_settings(store, mlflow_tracking_uri=f"http://127.0.0.1:{port}", reload_interval_s=0.5)
        with running_server(create_app(settings)) as base_url:
            health = healthz(base_url, ADMIN_KEY)
            assert health["router_version"] == "1" and health["status"] == "ok", health
            assert ask(base_url).parse().model_extra["routerops"]["router_version"] == "1"

            os.killpg(proc.pid, signal.SIGTERM)  # MLflow goes away
            proc.wait(timeout=30)
            reload = httpx.post(f"{base_url}/admin/reload", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                                timeout=60).json()
            assert reload["error"] and "cannot read mf-router@champion" in reload["error"]
            health = healthz(base_url, ADMIN_KEY)
            assert health["status"] == "degraded" and health["router_version"] == "1"
            assert "cannot read mf-router@champion" in health["last_reload_error"]
            for _ in range(3):  # still served, by the last good router
                info = ask(base_url).parse().model_extra["routerops"]
                assert info["router_version"] == "1" and info["p_strong_wins"] is not None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


# --- cascade and speculative ---------------------------------------------------------------------
WEAK_GOOD = {  # hand labels of the recorded weak answers: is the weak answer good enough?
    "Do you like coffee? I think they are lovely.": 1,
    "Find all integer solutions of x^2 - 21x + 19 = 0.": 0,
    "What's a fun fact about cats?": 1,
    "Write a Python function that returns the 26th Fibonacci number using memoization": 0,
    "Tell me a short joke about autumn leaves.": 1,
    "What is the derivative of x^23 + 6x?": 1,
    "Fix the off-by-one bug in this loop: for i in range(1, 24): total += xs[i]": 1,
    "Summarize the plot of Hamlet in one sentence.": 0,
}


def test_cascade_escalates_exactly_when_the_probe_doubts(api, tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from routerops.backends.replay import read_records
    from routerops.db import session_scope
    from routerops.models.embeddings import get_embedder
    from routerops.models.probes.features import text_features
    from routerops.models.probes.model import DeferralProbe
    from routerops.serving.cascade import CascadeConfig, save_cascade_config

    base_url, settings = api
    # not calibrated yet: the default cascade (weak, then strong) answers out of the box
    info = ask(base_url, model="cascade").parse().model_extra["routerops"]
    assert info["strategy"] == "cascade" and info["reason"].startswith("default cascade (no calibrated config")
    assert info["model"] in (WEAK, STRONG) and info["escalated"] is (info["model"] == STRONG)
    default_escalated = int(info["escalated"])  # counted below with the calibrated requests

    # a real text probe (FrugalGPT-style scorer over MiniLM embeddings of prompt and answer)
    weak_answers = {r["prompt"]: r["output"] for r in read_records(RECORDED_PAIR) if r["model"] == WEAK}
    strong_answers = {r["prompt"]: r["output"] for r in read_records(RECORDED_PAIR) if r["model"] == STRONG}
    prompts = list(WEAK_GOOD)
    embedder = get_embedder(settings, backend="sentence-transformers", model="all-MiniLM-L6-v2")
    X = text_features(embedder, prompts, [weak_answers[p] for p in prompts])
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=1.0)).fit(X, [WEAK_GOOD[p] for p in prompts])
    probe = DeferralProbe(pipeline, {"kind": "text", "feature_key": "text", "embedding_backend": "sentence-transformers",
                                     "embedding_model": "all-MiniLM-L6-v2"})
    probe_dir = probe.save(tmp_path / "probe")
    scores = probe.score([[{"role": "user", "content": p}] for p in prompts], [weak_answers[p] for p in prompts])
    threshold = float(sorted(scores)[len(scores) // 2])  # half escalate, half do not
    with session_scope(settings) as session:
        save_cascade_config(session, CascadeConfig(models=[WEAK, STRONG], thresholds=[threshold],
                                                   probe_uri=str(probe_dir)))
    time.sleep(settings.reload_interval_s + 0.1)  # the strategy re-reads its config at this pace
    escalations = 0
    for prompt, score in zip(prompts, scores, strict=True):
        raw = ask(base_url, model="cascade", prompt=prompt)
        completion, info = raw.parse(), raw.parse().model_extra["routerops"]
        escalate = bool(score < threshold)
        escalations += escalate
        assert info["escalated"] is escalate and info["probe_score"] == pytest.approx(float(score), abs=1e-5)
        assert info["model"] == (STRONG if escalate else WEAK) and info["strategy"] == "cascade"
        expected = strong_answers[prompt] if escalate else weak_answers[prompt]
        assert completion.choices[0].message.content == expected
        assert raw.headers["x-routerops-strategy"] == "cascade"
    assert 0 < escalations < len(prompts)
    streamed = list(client(base_url).chat.completions.create(
        model="cascade", messages=[{"role": "user", "content": prompts[0]}], stream=True))
    assert streamed[-1].model_extra["routerops"]["escalated"] is bool(scores[0] < threshold)
    metrics = httpx.get(f"{base_url}/metrics", headers={"Authorization": f"Bearer {USER_KEY}"}).text
    rate = next(float(line.split()[1]) for line in metrics.splitlines()
                if line.startswith("routerops_cascade_escalation_rate "))
    assert rate == pytest.approx((escalations + bool(scores[0] < threshold) + default_escalated) / (len(prompts) + 2))
    # every rung each request ran is logged in cascade_steps (threshold refits read them)
    from sqlalchemy import select

    from routerops.db.models import CascadeStepLog

    n_steps = len(prompts) + escalations + 1 + bool(scores[0] < threshold) + 1 + default_escalated
    deadline = time.monotonic() + 10
    while True:
        with session_scope(settings) as session:
            rows = session.scalars(select(CascadeStepLog)).all()
            steps = [(r.request_id, r.step, r.model, r.accepted, r.score) for r in rows]
        if len(steps) >= n_steps or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(steps) == n_steps and len({s[0] for s in steps}) == len(prompts) + 2
    assert all((m == WEAK) is (step == 0) and (score is None) is (step == 1) for _, step, m, _, score in steps)
    assert sum(acc for *_, acc, _ in steps) == len(prompts) + 2  # one answer returned per request


def test_cascade_that_cannot_answer_is_not_listed_as_available(store: Path) -> None:
    from routerops.serving.app import create_app

    settings = make_settings(store, cascade_default=False, database_url=f"sqlite:///{store / 'empty.db'}")
    from routerops.db import migrate

    migrate.upgrade("head", settings=settings)
    with running_server(create_app(settings)) as base_url:
        models = {m.id: m.model_extra["routerops"] for m in client(base_url).models.list().data}
        assert models["cascade"]["available"] is False
        assert "no cascade config yet" in models["cascade"]["unavailable_reason"]
        assert models["router"]["available"] is True
        assert "no cascade config yet" in healthz(base_url, ADMIN_KEY)["strategies"]["cascade"]
        with pytest.raises(openai.APIStatusError) as err:
            ask(base_url, model="cascade")
        assert err.value.status_code == 503 and "routerops cascade calibrate" in err.value.body["message"]


def test_cascade_second_sample_is_drawn_paid_for_and_logged(api, tmp_path: Path) -> None:
    """A first rung "WEAK+WEAK" asks the weak model twice (the second sample at a temperature) and
    keeps its answer when the two agree; the request and its logged step pay for both."""
    import numpy as np
    from sqlalchemy import select

    from routerops.backends.replay import read_records
    from routerops.db import session_scope
    from routerops.db.models import CascadeStepLog
    from routerops.models.cascade_scorer.features import StepInput, signals
    from routerops.models.cascade_scorer.model import CascadeScorer, fit_combiner
    from routerops.serving.cascade import CascadeConfig, save_cascade_config

    base_url, settings = api
    rung = f"{WEAK}+{WEAK}"
    rng = np.random.default_rng(0)
    rows, ys = [], []
    for _ in range(200):  # right exactly when the second sample agrees
        ans, other = rng.choice(["A", "B"]), rng.choice(["A", "B"])
        rows.append(signals(StepInput("q", ans, rung, second_sample=other)))
        ys.append(float(ans == other))
    scorer = CascadeScorer([rung, STRONG], [fit_combiner(np.array(rows), np.array(ys))],
                           CascadeScorer.feature_names_for(False), None, {"note": "synthetic"})
    folder = scorer.save(tmp_path / "scorer")
    with session_scope(settings) as session:
        save_cascade_config(session, CascadeConfig(models=[rung, STRONG], thresholds=[0.5], scorer_uri=str(folder)))
    time.sleep(settings.reload_interval_s + 0.1)
    prompt = "What's a fun fact about cats?"
    weak_answer = next(r["output"] for r in read_records(RECORDED_PAIR) if r["model"] == WEAK and r["prompt"] == prompt)
    raw = ask(base_url, model="cascade", prompt=prompt)
    completion, info = raw.parse(), raw.parse().model_extra["routerops"]
    # the replayed second sample repeats the first (a recording ignores the temperature): they agree
    assert info["escalated"] is False and info["model"] == WEAK and info["probe_score"] > 0.9
    assert completion.choices[0].message.content == weak_answer
    usage = completion.usage
    deadline = time.monotonic() + 10
    while True:
        with session_scope(settings) as session:
            rows_ = [(r.model, r.cost_usd, r.prompt_tokens, r.completion_tokens, r.accepted)
                     for r in session.scalars(select(CascadeStepLog).where(CascadeStepLog.ladder == [rung, STRONG]))]
        if rows_ or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(rows_) == 1 and rows_[0][0] == rung and rows_[0][4] is True
    # both samples are counted: twice the weak answer's tokens, in the usage and in the step's row
    assert rows_[0][2] == usage.prompt_tokens and rows_[0][3] == usage.completion_tokens
    assert usage.completion_tokens % 2 == 0 and usage.completion_tokens > 0
    from routerops.serving.request_log import Prices

    paid = Prices.from_settings(settings, WEAK, STRONG).cost("weak", usage.prompt_tokens, usage.completion_tokens)
    assert paid > 0 and rows_[0][1] == pytest.approx(paid)


def test_speculative_needs_a_local_target(api) -> None:
    base_url, _ = api
    with pytest.raises(openai.APIStatusError) as err:
        ask(base_url, model="speculative")
    assert err.value.status_code == 503
    assert err.value.body["message"].startswith("strategy not available: speculative decoding needs a local")


# --- security and bad input ----------------------------------------------------------------------
def test_auth_failures_and_scopes(api) -> None:
    base_url, _ = api
    with pytest.raises(openai.AuthenticationError) as err:
        ask_with = client(base_url, key="wrong-key")
        ask_with.chat.completions.create(model=WEAK, messages=[{"role": "user", "content": PROMPT}])
    assert err.value.body["message"] == "invalid or revoked API key"
    r = httpx.post(f"{base_url}/v1/chat/completions", json={"model": WEAK, "messages": []})
    assert r.status_code == 401 and "missing API key" in r.json()["error"]["message"]
    r = httpx.get(f"{base_url}/metrics")
    assert r.status_code == 401
    r = httpx.post(f"{base_url}/admin/reload", headers={"Authorization": f"Bearer {USER_KEY}"})
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    r = httpx.post(f"{base_url}/admin/reload", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60)
    assert r.status_code == 200 and "router_version" in r.json()
    assert httpx.get(f"{base_url}/healthz").status_code == 200  # the one open endpoint


def test_stored_keys_create_use_revoke(api, store: Path) -> None:
    from routerops.serving.cli import keys

    base_url, _ = api
    env = {"ROUTEROPS_DATA_DIR": str(store)}
    out = CliRunner().invoke(keys, ["create", "ci-bot"], env=env)
    assert out.exit_code == 0, out.output
    key = out.output.strip().splitlines()[-1]
    assert key.startswith("rops-")
    assert "ci-bot" in CliRunner().invoke(keys, ["list"], env=env).output
    assert key not in CliRunner().invoke(keys, ["list"], env=env).output  # only the hash is stored
    ok = client(base_url, key).chat.completions.create(model=WEAK, messages=[{"role": "user", "content": PROMPT}])
    assert ok.choices[0].message.content
    assert CliRunner().invoke(keys, ["revoke", "ci-bot"], env=env).exit_code == 0

    def refused() -> bool:
        r = httpx.get(f"{base_url}/v1/models", headers={"Authorization": f"Bearer {key}"})
        return r.status_code == 401

    wait_for(refused, timeout_s=15)


def test_no_keys_configured_refuses_unless_anonymous_allowed(tmp_path: Path) -> None:
    from routerops.db import migrate
    from routerops.serving.app import create_app

    settings = make_settings(tmp_path / "data", api_keys=[], admin_api_keys=[],
                             router_model_name="router-never-approved")
    settings.ensure_data_dir()
    migrate.upgrade("head", settings=settings)
    with running_server(create_app(settings)) as base_url:
        r = httpx.get(f"{base_url}/v1/models")
        assert r.status_code == 401 and "routerops keys create" in r.json()["error"]["message"]
    anon = make_settings(tmp_path / "data", api_keys=[], admin_api_keys=[], allow_anonymous=True,
                         router_model_name="router-never-approved")
    with running_server(create_app(anon)) as base_url:
        assert httpx.get(f"{base_url}/v1/models").status_code == 200


def test_oversized_malformed_and_invalid_requests(api) -> None:
    base_url, settings = api
    headers = {"Authorization": f"Bearer {USER_KEY}"}
    url = f"{base_url}/v1/chat/completions"
    # body over ROUTEROPS_MAX_BODY_BYTES -> 413
    with pytest.raises(openai.APIStatusError) as err:
        ask(base_url, prompt="x" * (settings.max_body_bytes + 10))
    assert err.value.status_code == 413 and "over the limit" in err.value.body["message"]
    # prompt over ROUTEROPS_MAX_PROMPT_CHARS (body within limits) -> 400
    with pytest.raises(openai.BadRequestError) as err:
        ask(base_url, prompt="y" * (settings.max_prompt_chars + 1))
    assert err.value.body["code"] == "prompt_too_long"
    # malformed JSON -> 400 in OpenAI's error format
    r = httpx.post(url, content=b'{"model": "router", "messages": [', headers=headers)
    assert r.status_code == 400
    err_body = r.json()["error"]
    assert set(err_body) == {"message", "type", "param", "code"} and "malformed JSON" in err_body["message"]
    assert "Traceback" not in r.text
    # schema errors name the field
    r = httpx.post(url, json={"model": "router", "messages": [{"role": "user", "content": "hi"}],
                              "temperature": 9}, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    r = httpx.post(url, json={"model": "router"}, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(url, json={"model": "router", "messages": [{"role": "system", "content": "hi"}]},
                   headers=headers)
    assert r.status_code == 400 and "user message" in r.json()["error"]["message"]
    # a prompt the replay backend never recorded -> 502 naming the prompt, not a crash
    with pytest.raises(openai.APIStatusError) as err:
        ask(base_url, model=WEAK, prompt="never recorded prompt")
    assert err.value.status_code == 502 and "no recorded output for prompt" in err.value.body["message"]


# --- feedback ------------------------------------------------------------------------------------
def test_feedback_lands_as_preference_rows(api) -> None:
    from sqlalchemy import select

    from routerops.db import session_scope
    from routerops.db.models import OutcomeLog, PreferenceLog, RequestLog

    base_url, settings = api
    headers = {"Authorization": f"Bearer {USER_KEY}"}
    url = f"{base_url}/v1/feedback"
    weak_id = ask(base_url, model=WEAK).parse().model_extra["routerops"]["request_id"]
    strong_id = ask(base_url, model=STRONG).parse().model_extra["routerops"]["request_id"]

    r = httpx.post(url, json={"request_id": weak_id, "thumbs": "down"}, headers=headers)
    assert r.status_code == 201 and r.json()["recorded"] == "preference" and not r.json()["replaced"]
    down_id = r.json()["preference_id"]
    with session_scope(settings) as session:
        down = session.get(PreferenceLog, down_id)
        assert (down.model_a, down.model_b, down.winner, down.request_id) == (WEAK, STRONG, "b", weak_id)
        assert down.prompt == PROMPT and down.answer_a == "Cats sleep a lot."
    r = httpx.post(url, json={"request_id": weak_id, "thumbs": "up"}, headers=headers)
    assert r.status_code == 201 and r.json()["replaced"]  # the same key changed its mind: the last vote stands
    up_id = r.json()["preference_id"]
    assert up_id == down_id
    r = httpx.post(url, json={"request_id": strong_id, "thumbs": "up"}, headers=headers)
    # no preference row (it says nothing about the weak model), but an outcome row of the strong model
    assert r.status_code == 201 and r.json() | {"detail": "", "outcome_id": 0} == {
        "request_id": strong_id, "preference_id": None, "outcome_id": 0, "recorded": "outcome", "replaced": False,
        "detail": ""}
    strong_outcome_id = r.json()["outcome_id"]
    r = httpx.post(url, json={"request_id": strong_id, "preference": {
        "winner": "b", "other_model": WEAK, "other_answer": "Cats have five toes on their front paws."}},
        headers=headers)
    assert r.status_code == 201 and r.json()["replaced"], r.text
    pair_id = r.json()["preference_id"]

    with session_scope(settings) as session:
        rows = {p.id: p for p in session.scalars(select(PreferenceLog).where(PreferenceLog.source == "feedback"))}
        up, pair = rows[up_id], rows[pair_id]
        assert (up.model_a, up.model_b, up.winner, up.feedback_key) == (WEAK, STRONG, "a", "env-user-1")
        assert (pair.model_a, pair.model_b, pair.winner) == (STRONG, WEAK, "b")
        assert pair.answer_b.startswith("Cats have five toes")
        assert [p.id for p in rows.values() if p.request_id in (weak_id, strong_id)] == sorted([up_id, pair_id])
        votes = session.get(RequestLog, strong_id).extra["feedback"]
        assert [(v["by"], v["thumbs"]) for v in votes] == [("env-user-1", None)]  # one entry per key
        # thumbs are outcomes of the answering model (issue 24), one per (request, key): the strong answer's
        # thumbs-up outcome went with the vote that the pairwise preference replaced
        outcomes = {o.id: o for o in session.scalars(select(OutcomeLog).where(OutcomeLog.source == "feedback"))}
        assert strong_outcome_id not in outcomes
        assert [(o.model, o.score, o.prompt, o.prompt_id) for o in outcomes.values()] == [
            (WEAK, 1.0, PROMPT, f"request:{weak_id}:env-user-1")]

    r = httpx.post(url, json={"request_id": "nope", "thumbs": "up"}, headers=headers)
    assert r.status_code == 404 and r.json()["error"]["param"] == "request_id"
    r = httpx.post(url, json={"request_id": weak_id}, headers=headers)
    assert r.status_code == 400 and "exactly one" in r.json()["error"]["message"]
    r = httpx.get(f"{base_url}/admin/feedback", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert {row["id"] for row in r.json()["data"]} >= {down_id, up_id, pair_id}


def test_admin_ingest_runs_the_importer(api) -> None:
    base_url, _ = api
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    rows = [{"prompt": f"ingest test prompt {i}", "model_a": STRONG, "model_b": WEAK, "winner": "a"} for i in range(3)]
    rows.append({"prompt": "bad winner row", "model_a": STRONG, "model_b": WEAK, "winner": "nobody"})
    data = "\n".join(json.dumps(r) for r in rows).encode()
    url = f"{base_url}/admin/ingest?format=native&filename=prefs.jsonl"
    assert httpx.post(url, content=data, headers={"Authorization": f"Bearer {USER_KEY}"}).status_code == 403
    r = httpx.post(url, content=data, headers=admin, timeout=60)
    assert r.status_code == 201, r.text
    report = r.json()["report"]
    assert report["accepted"] == 3 and report["rejected"] == 1
    r = httpx.post(f"{base_url}/admin/ingest?format=nonsense", content=data, headers=admin)
    assert r.status_code == 400 and "native" in r.json()["error"]["message"]


# --- the embedded local pair ---------------------------------------------------------------------
@pytest.mark.slow
def test_local_smollm2_pair_serves_router_and_models(tmp_path: Path) -> None:
    from routerops.db import migrate
    from routerops.serving.app import create_app

    settings = make_settings(tmp_path / "data", weak_backend="local", strong_backend="local",
                             weak_model="smollm2-135m-instruct", strong_model="smollm2-135m-instruct",
                             strong_samples=2, max_new_tokens=6, router_model_name="router-never-approved")
    settings.ensure_data_dir()
    migrate.upgrade("head", settings=settings)
    with running_server(create_app(settings)) as base_url:
        c = client(base_url)
        msgs = [{"role": "user", "content": "What is the capital of France?"}]
        weak = c.chat.completions.create(model="smollm2-135m-instruct", messages=msgs, max_tokens=6)
        assert weak.choices[0].message.content and weak.usage.completion_tokens <= 6
        streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
            model="smollm2-135m-instruct", messages=msgs, max_tokens=6, stream=True) if ch.choices)
        assert streamed == weak.choices[0].message.content  # greedy: same text either way
        routed = c.chat.completions.create(model="router", messages=msgs, max_tokens=6)
        info = routed.model_extra["routerops"]
        assert info["model"] == "smollm2-135m-instruct-bestof2"  # no champion: the strong (best-of-2) model
        assert routed.choices[0].message.content
        # exact speculative decoding of the same weights: greedy output identical to plain decoding
        spec = c.chat.completions.create(model="speculative", messages=msgs, max_tokens=6)
        assert spec.choices[0].message.content == weak.choices[0].message.content
        stats = spec.model_extra["routerops"]["speculative"]
        assert 0.0 <= stats["acceptance_rate"] <= 1.0 and stats["tokens_per_target_pass"] >= 1.0
        chunks = list(c.chat.completions.create(model="speculative", messages=msgs, max_tokens=6, stream=True))
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == spec.choices[0].message.content
        assert chunks[-1].model_extra["routerops"]["speculative"]["tokens_per_target_pass"] >= 1.0
        metrics = httpx.get(f"{base_url}/metrics", headers={"Authorization": f"Bearer {USER_KEY}"}).text
        assert "routerops_speculative_acceptance_rate_count 2.0" in metrics  # streamed one too
        # the cascade answers out of the box with the default pair (no calibration, no probe)
        models = {m.id: m.model_extra["routerops"] for m in c.models.list().data}
        assert models["cascade"]["available"] is True
        cascade = c.chat.completions.create(model="cascade", messages=msgs, max_tokens=6)
        assert cascade.choices[0].message.content == weak.choices[0].message.content
        assert cascade.model_extra["routerops"]["reason"].startswith("default cascade")

        # measured slower than the target alone (issue 28: speedup 0.64 under load): plain decoding, said so
        from routerops.serving.strategies import SPEEDUPS

        key = ("smollm2-135m-instruct", settings.speculative_draft)
        try:
            for _ in range(SPEEDUPS.window):
                SPEEDUPS.record(key, 0.64)
            plain = c.chat.completions.create(model="speculative", messages=msgs, max_tokens=6)
            info = plain.model_extra["routerops"]
            assert info["reason"].startswith("plain decoding of smollm2-135m-instruct: speculative decoding's "
                                             f"measured speedup 0.64 over its last {SPEEDUPS.window} requests")
            assert info["speculative"] == {"fallback_plain": 1.0, "measured_speedup": pytest.approx(0.64),
                                           "measured_requests": float(SPEEDUPS.window)}
            assert plain.choices[0].message.content == weak.choices[0].message.content  # same greedy text
            chunks = list(c.chat.completions.create(model="speculative", messages=msgs, max_tokens=6, stream=True))
            assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == \
                weak.choices[0].message.content
            assert chunks[-1].model_extra["routerops"]["speculative"]["fallback_plain"] == 1.0
        finally:
            SPEEDUPS._seen.clear()
            SPEEDUPS._plain.clear()


def test_speculative_falls_back_below_1_and_re_measures() -> None:
    from routerops.serving.strategies import SpeedupTracker

    t = SpeedupTracker(window=4, probe_every=3)
    assert t.use_plain("k") is None  # nothing measured yet
    for v in (1.2, 1.3, 1.1):
        t.record("k", v)
    assert t.use_plain("k") is None  # fewer than `window` measurements
    t.record("k", 1.25)
    assert t.use_plain("k") is None  # faster: speculative
    for _ in range(4):
        t.record("k", 0.64)
    assert [t.use_plain("k") for _ in range(3)] == [pytest.approx(0.64), pytest.approx(0.64), None]  # 3rd re-measures
    for _ in range(4):
        t.record("k", 1.3)  # the traffic changed
    assert t.use_plain("k") is None


def test_target_strong_share_end_to_end(tmp_path: Path) -> None:
    """A fresh router, no alpha set anywhere: serving takes the alpha from the router's calibration
    at ROUTEROPS_TARGET_STRONG_SHARE and sends about that share of a prompt set to strong; an explicit
    ROUTEROPS_ALPHA wins over it. /healthz and each response say which applies."""
    from routerops import registry
    from routerops.db import migrate, session_scope
    from routerops.db.models import PreferenceLog
    from routerops.models.router import load_router
    from routerops.serving.app import create_app
    from routerops.text import prompt_hash
    from routerops.training.train_router import train_router

    rows = [json.loads(line) for line in ROUTER_FIXTURE.read_text().splitlines()]
    prompts = sorted({r["prompt"] for r in rows})
    replay = tmp_path / "answers.jsonl"
    replay.write_text("".join(json.dumps({"prompt": p, "output": "ok", "model": m}) + "\n"
                              for p in prompts for m in (WEAK, STRONG)))
    data_dir = tmp_path / "data"
    settings = make_settings(data_dir, replay_file=replay, target_strong_share=0.25)
    settings.ensure_data_dir()
    migrate.upgrade("head", settings=settings)
    with session_scope(settings) as session:
        for r in rows:
            session.add(PreferenceLog(prompt=r["prompt"], prompt_hash=prompt_hash(r["prompt"]), model_a=r["model_a"],
                                      model_b=r["model_b"], winner=r["winner"], soft_label=r.get("soft_label"),
                                      source="fixture"))
    version = train_router(settings, max_iter=60, progress=False).model_version
    registry.approve(settings.router_model_name, version, approved_by="test", settings=settings)
    router = load_router(f"models:/{settings.router_model_name}/{version}", settings)
    expected_alpha = router.alpha_for_share(0.25, STRONG, WEAK)

    with running_server(create_app(settings)) as base_url:
        wait_for(lambda: healthz(base_url, ADMIN_KEY)["router_version"] == version)
        health = healthz(base_url, ADMIN_KEY)
        assert health["alpha_source"] == "router-calibration" and health["alpha"] == pytest.approx(expected_alpha)
        assert "25%" in health["alpha_reason"]
        infos = [ask(base_url, prompt=p, max_tokens=4).parse().model_extra["routerops"] for p in prompts]
    assert {i["alpha_source"] for i in infos} == {"router-calibration"}
    share = sum(i["model"] == STRONG for i in infos) / len(infos)
    assert 0.1 <= share <= 0.4, (share, infos[0]["reason"])  # the reference prompts: a sample of these

    explicit = make_settings(data_dir, replay_file=replay, target_strong_share=0.25, alpha=0.999)
    with running_server(create_app(explicit)) as base_url:
        wait_for(lambda: healthz(base_url, ADMIN_KEY)["router_version"] == version)
        assert (healthz(base_url, ADMIN_KEY)["alpha_source"], healthz(base_url, ADMIN_KEY)["alpha"]) == ("settings", 0.999)
        info = ask(base_url, prompt=prompts[0], max_tokens=4).parse().model_extra["routerops"]
    assert info["alpha_source"] == "settings" and info["model"] == WEAK
