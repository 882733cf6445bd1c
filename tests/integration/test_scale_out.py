"""Scale-out stays stateless (issue 12): two `routerops serve` processes on one database and MLflow
store, as behind a load balancer, give the same decisions for the same prompts: same champion, same
alpha, same score, same model, and the same routing-cache semantics (a repeat is answered from the
process's own cache with the score it computed the first time)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from conftest import clean_env
from serving_helpers import RECORDED_PAIR, STRONG, WEAK, free_port, healthz

ROOT = Path(__file__).resolve().parents[2]
PREFS = Path(__file__).resolve().parents[1] / "fixtures" / "router" / "prefs.jsonl"
KEY = "scale-out-key-0123456789"
ADMIN = "scale-out-admin-0123456789"


def _cli(env: dict[str, str], *args: str) -> str:
    from routerops.orchestration.cli import cli

    result = CliRunner().invoke(cli, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def store(settings, static_embedder_dir: Path, tmp_path: Path) -> dict[str, str]:  # noqa: ANN001
    """A router trained on the static embedder, approved as champion, alpha set live; returns the
    servers' environment. The embedder folder it was trained with is deleted: it ships with the router."""
    from routerops.importers.core import import_file
    from routerops.settings import Settings
    from routerops.training.train_router import train_router

    own = tmp_path / "embedder"
    shutil.copytree(static_embedder_dir, own)
    trained = Settings(data_dir=settings.data_dir, embedding_backend="static", embedding_static_path=own)
    import_file(trained, "native", PREFS, progress=False)
    version = train_router(trained, max_iter=60, progress=False).model_version
    shutil.rmtree(own)
    env = {"ROUTEROPS_DATA_DIR": str(settings.data_dir), "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}
    _cli(env, "approve", version, "--by", "test")
    _cli(env, "alpha", "set", "0.47", "--reason", "scale-out test", "--force")
    return env | {"ROUTEROPS_WEAK_BACKEND": "replay", "ROUTEROPS_STRONG_BACKEND": "replay",
                  "ROUTEROPS_WEAK_MODEL": WEAK, "ROUTEROPS_STRONG_MODEL": STRONG,
                  "ROUTEROPS_REPLAY_FILE": str(RECORDED_PAIR), "ROUTEROPS_API_KEYS": KEY, "ROUTEROPS_ADMIN_API_KEYS": ADMIN,
                  "ROUTEROPS_RELOAD_INTERVAL_S": "1"}


def _serve(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    full = clean_env() | env
    proc = subprocess.Popen([sys.executable, "-m", "routerops.orchestration.cli", "serve", "--port", str(port),
                             "--log-level", "warning"], env=full, cwd=ROOT, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def _wait_ready(proc: subprocess.Popen, base_url: str, log: Path, timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            health = httpx.get(f"{base_url}/admin/status", headers={"Authorization": f"Bearer {ADMIN}"},
                               timeout=2).json()
            if health.get("router_version"):
                return health
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pytest.fail(f"server at {base_url} not ready: {log.read_text()[-2000:]}")


def _route(base_url: str, prompt: str) -> dict:
    r = httpx.post(f"{base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                   json={"model": "router", "messages": [{"role": "user", "content": prompt}]})
    assert r.status_code == 200, r.text
    info = r.json()["routerops"]
    return {k: info[k] for k in ("model", "p_strong_wins", "alpha", "router_version", "reason")}


def test_two_serve_processes_decide_alike(store: dict[str, str], tmp_path: Path) -> None:
    from routerops.backends.replay import read_records

    prompts = list(dict.fromkeys(str(r["prompt"]) for r in read_records(RECORDED_PAIR)))
    servers = [_serve(store, tmp_path / f"server{i}.log") for i in range(2)]
    try:
        health = [_wait_ready(proc, url, tmp_path / f"server{i}.log") for i, (proc, url) in enumerate(servers)]
        for h in health:
            assert (h["router_version"], h["alpha"], h["alpha_source"]) == ("1", pytest.approx(0.47), "manual")
            assert h["last_reload_error"] is None, h
        (_, a), (_, b) = servers
        first_a = [_route(a, p) for p in prompts]
        first_b = [_route(b, p) for p in reversed(prompts)][::-1]  # another order: no hidden shared state
        assert first_a == first_b
        # a new live alpha between the scores: both processes pick it up and split the prompts alike
        scores = sorted(d["p_strong_wins"] for d in first_a)
        alpha = round((scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2, 6)
        _cli(store, "alpha", "set", str(alpha), "--reason", "split the test prompts", "--force")
        for _, url in servers:
            deadline = time.monotonic() + 30
            while healthz(url, ADMIN)["alpha"] != pytest.approx(alpha):
                assert time.monotonic() < deadline, "alpha change not picked up"
                time.sleep(0.3)
        # repeats come from each process's own routing cache (scores, not decisions: the new alpha applies)
        second_a, second_b = [_route(a, p) for p in prompts], [_route(b, p) for p in prompts]
        assert second_a == second_b
        assert [d["p_strong_wins"] for d in second_a] == [d["p_strong_wins"] for d in first_a]
        assert {d["model"] for d in second_a} == {WEAK, STRONG}, second_a
        for d in second_a:
            assert d["alpha"] == pytest.approx(alpha)
            assert (d["model"] == STRONG) == (d["p_strong_wins"] >= alpha)
        for _, url in servers:
            metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).text
            hits = [ln for ln in metrics.splitlines()
                    if ln.startswith("routerops_routing_cache_total") and "hit" in ln]
            assert hits and float(hits[0].split()[-1]) == len(prompts), hits
    finally:
        for proc, _ in servers:
            proc.terminate()
        for proc, _ in servers:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
