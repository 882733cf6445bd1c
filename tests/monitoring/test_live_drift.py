"""Live drift from request logs, with no labels: traffic served by the real API and router is compared
with the reference prompts saved with the router version (router scores and prompt statistics, by
Evidently), and the strong-call share with the share the same alphas give on the reference.

Scenario: a champion trained on the router fixture serves its own kind of prompts (no drift, no
alert); then traffic turns to long code prompts (drift: the live_drift alert opens, shows on
/metrics and the dashboard gets the run's snapshots)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from serving_helpers import STRONG, WEAK, running_server
from sqlalchemy import select

from routerops.db import session_scope
from routerops.db.models import Alert, LiveDriftRun
from routerops.monitoring.drift import DriftResult
from routerops.monitoring.live_drift import decide, expected_share

PREFS = Path(__file__).resolve().parents[1] / "fixtures" / "router" / "prefs.jsonl"
KEY = "live-drift-key-0123456789"


def _cli(*args: str) -> str:
    from routerops.orchestration.cli import cli

    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _code_prompt(i: int) -> str:
    body = "\n".join(f"    total_{j} = compute(values[{j}], {i * j}) + offset_{j}" for j in range(12 + i % 7))
    return (f"Why does this function raise a KeyError on line {i % 9 + 3}? Fix it.\n```python\n"
            f"def handler_{i}(values):\n{body}\n    return totals\n```")


@pytest.fixture
def live_api(settings, static_embedder_dir: Path, tmp_path: Path, monkeypatch):  # noqa: ANN201
    from routerops.importers.core import import_file
    from routerops.serving.app import create_app
    from routerops.settings import Settings, get_settings
    from routerops.training.train_router import train_router

    own = tmp_path / "embedder"
    shutil.copytree(static_embedder_dir, own)
    trained = Settings(data_dir=settings.data_dir, embedding_backend="static", embedding_static_path=own)
    import_file(trained, "native", PREFS, progress=False)
    version = train_router(trained, max_iter=60, progress=False).model_version
    _cli("approve", version, "--by", "test")
    _cli("alpha", "set", "0.5", "--reason", "live drift test", "--force")

    # the replay pair answers every prompt this test sends
    prompts = list(dict.fromkeys(json.loads(line)["prompt"] for line in PREFS.read_text().splitlines()))
    code = [_code_prompt(i) for i in range(200)]
    replay = tmp_path / "pair.jsonl"
    with replay.open("w") as fh:
        for p in prompts + code:
            for model in (WEAK, STRONG):
                fh.write(json.dumps({"prompt": p, "model": model, "output": f"answer from {model}"}) + "\n")
    env = {"ROUTEROPS_WEAK_BACKEND": "replay", "ROUTEROPS_STRONG_BACKEND": "replay", "ROUTEROPS_WEAK_MODEL": WEAK,
           "ROUTEROPS_STRONG_MODEL": STRONG, "ROUTEROPS_REPLAY_FILE": str(replay), "ROUTEROPS_API_KEYS": KEY,
           "ROUTEROPS_EMBEDDING_BACKEND": "static", "ROUTEROPS_LIVE_DRIFT_MIN_REQUESTS": "100",
           "ROUTEROPS_MAX_PROMPT_CHARS": "20000", "ROUTEROPS_MAX_BODY_BYTES": "100000"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    served = get_settings()
    with running_server(create_app(served)) as base_url:
        yield base_url, served, version, prompts, code


def _send(base_url: str, prompts: list[str]) -> None:
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        for p in prompts:
            r = c.post("/v1/chat/completions", json={"model": "router", "messages": [{"role": "user", "content": p}]})
            assert r.status_code == 200, r.text


def _live(*extra: str) -> dict:
    out = _cli("monitor", "live", "--json", *extra)
    return json.loads(out[out.index("{"):])


def test_live_traffic_drift_and_strong_share_against_the_router_reference(live_api):
    base_url, settings, version, prompts, code = live_api

    # too little traffic: recorded as skipped, with the reason
    _send(base_url, prompts[:20])
    m = _live("--no-dashboards")
    assert m["status"] == "skipped" and "fewer than ROUTEROPS_LIVE_DRIFT_MIN_REQUESTS=100" in m["reason"]

    # the router's own kind of prompts: no drift, the strong share is what the reference predicts
    _send(base_url, prompts[20:])  # 110 distinct prompts in all
    m = _live()
    assert m["status"] == "ok" and m["router_version"] == version and m["n_requests"] == len(prompts) == 110
    assert m["n_with_prompt"] == 110 and m["n_reference"] >= 90
    assert not m["drift_detected"], m["drift"]
    assert {"router_score", "log_chars", "log_words"} <= set(m["drift"]["columns"])
    assert "log_lines" not in m["drift"]["columns"]  # one line everywhere: constant on both sides, not tested
    assert abs(m["strong_share"] - m["expected_strong_share"]) <= settings.live_strong_share_tolerance
    assert sum(b["n"] for b in m["strong_share_by_hour"]) == 110
    assert m["alerts_opened"] == []
    assert set(m["evidently"]["snapshots"]) == {"live", "live-drift"}

    # traffic turns to long code prompts: the prompt statistics and the router score move
    _send(base_url, code)
    out = _cli("monitor", "live")
    assert "drift: YES" in out and "ALERTS opened" in out, out
    with session_scope(settings) as s:
        runs = s.scalars(select(LiveDriftRun).order_by(LiveDriftRun.started_at)).all()
        assert [r.status for r in runs] == ["skipped", "ok", "ok"]
        last = runs[-1]
        assert last.n_requests == 310 and last.drift_detected and last.router_version == version
        assert {"log_lines", "has_code_fence"} & set(last.metrics["drift"]["drifted_columns"])
        alert = s.scalars(select(Alert).where(Alert.kind == "live_drift")).one()
        assert alert.status == "open" and f"router version {version}" in alert.message
    metrics = httpx.get(f"{base_url}/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).text
    assert 'routerops_alert_active{kind="live_drift"} 1.0' in metrics

    # the dashboard has the live panels and the runs' snapshots
    from routerops.monitoring.dashboards import LIVE_PANELS, get_project

    ws, project = get_project(settings)
    titles = {p.title for p in project.dashboard.model().panels}
    assert {t for t, _ in LIVE_PANELS} <= titles
    tags = [tuple(ws.get_run(project.id, sid).tags) for sid in ws.list_runs(project.id)]
    assert tags.count(("live",)) == 2 and tags.count(("live-drift",)) == 2
    assert os.environ["ROUTEROPS_LIVE_DRIFT_MIN_REQUESTS"] == "100"


def test_expected_share_uses_each_request_alpha():
    ref = np.linspace(0.0, 1.0, 101)  # 0.00, 0.01, ..., 1.00
    assert expected_share(ref, np.asarray([0.5])) == pytest.approx(51 / 101)
    # two requests at different alphas: the mean of the two reference shares
    assert expected_share(ref, np.asarray([0.0, 1.0])) == pytest.approx((101 / 101 + 1 / 101) / 2)


def test_drift_rule_router_score_alone_or_enough_columns():
    def result(drifted: dict[str, bool]) -> DriftResult:
        cols = {c: {"drifted": d} for c, d in drifted.items()}
        share = sum(drifted.values()) / len(drifted)
        return DriftResult(any(drifted.values()), share, [c for c, d in drifted.items() if d], cols, None)

    assert decide(result({"router_score": True, "a": False, "b": False, "c": False}), 0.5)
    assert not decide(result({"router_score": False, "a": True, "b": False, "c": False}), 0.5)
    assert decide(result({"router_score": False, "a": True, "b": True, "c": False}), 0.5)
