"""MLflow unreachable when the API starts: it starts at once (MLflow's own retries would hold it for
~4 minutes), serves every router request from the strong model with a reason that names the
unreachable registry (on /healthz and in each response's `routerops` field), and picks up the
champion as soon as a real `mlflow server` comes up on that address."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from serving_helpers import RECORDED_PAIR, STRONG, WEAK, free_port, healthz, running_server, wait_for

KEY = "registry-outage-key-0123456789"
ADMIN = "registry-outage-admin-0123456789"
PREFS = Path(__file__).resolve().parents[1] / "fixtures" / "router" / "prefs.jsonl"
PROMPT = "What's a fun fact about cats?"


@pytest.fixture
def champion(settings, static_embedder_dir: Path, tmp_path: Path) -> str:  # noqa: ANN001
    """A router (static embedder, shipped with it) approved as champion in the sqlite MLflow store."""
    from routerops import registry
    from routerops.importers.core import import_file
    from routerops.settings import Settings
    from routerops.training.train_router import train_router

    own = tmp_path / "embedder"
    shutil.copytree(static_embedder_dir, own)
    trained = Settings(data_dir=settings.data_dir, embedding_backend="static", embedding_static_path=own)
    import_file(trained, "native", PREFS, progress=False)
    version = train_router(trained, max_iter=40, progress=False).model_version
    registry.approve(settings.router_model_name, version, approved_by="test", settings=settings)
    shutil.rmtree(own)
    return version


def route(base: str) -> dict:
    r = httpx.post(f"{base}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                   json={"model": "router", "messages": [{"role": "user", "content": PROMPT}]})
    assert r.status_code == 200, r.text
    return r.json()["routerops"]


def test_api_starts_without_mlflow_and_picks_up_the_champion(settings, champion: str, tmp_path: Path,  # noqa: ANN001
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from routerops.serving.app import create_app
    from routerops.settings import Settings

    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)  # the API's own bounds apply...
        monkeypatch.setenv(name, "")  # ...and what create_app sets is undone after the test
        monkeypatch.delenv(name)
    store = os.environ["MLFLOW_TRACKING_URI"]
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    serving = Settings(data_dir=settings.data_dir, mlflow_tracking_uri=uri, weak_backend="replay",
                       strong_backend="replay", weak_model=WEAK, strong_model=STRONG, replay_file=RECORDED_PAIR,
                       api_keys=[KEY], admin_api_keys=[ADMIN], reload_interval_s=0.5)
    t0 = time.monotonic()
    with running_server(create_app(serving), timeout_s=60) as base:
        started_s = time.monotonic() - t0
        assert started_s < 20, f"the API took {started_s:.0f}s to start with MLflow down"
        assert healthz(base) == {"status": "degraded", "reasons": ["router reload failing"]}
        health = healthz(base, ADMIN)
        reason = f"model registry unreachable ({uri}), no router loaded yet: routing to strong"
        assert health["status"] == "degraded" and health["router_version"] is None
        assert health["routing"] == reason
        assert f"cannot read {serving.router_model_name}@champion from {uri}" in health["last_reload_error"]
        info = route(base)
        assert (info["model"], info["reason"], info["router_version"], info["p_strong_wins"]) == \
            (STRONG, reason, None, None)

        mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
        proc = subprocess.Popen([mlflow_bin, "server", "--backend-store-uri", store, "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", "1"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=(tmp_path / "mlflow.log").open("w"), start_new_session=True)
        try:
            def live() -> dict | None:
                assert proc.poll() is None, (tmp_path / "mlflow.log").read_text()[-2000:]
                h = healthz(base, ADMIN)
                return h if h["router_version"] == champion else None

            health = wait_for(live, timeout_s=180, interval_s=0.5)
            assert health["routing"] == "router" and health["last_reload_error"] is None, health
            assert health["status"] == "ok"
            info = route(base)
            assert info["router_version"] == champion and info["p_strong_wins"] is not None
            assert info["reason"].startswith("P(strong wins)=")
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
