"""The shipped Prometheus files with a real Prometheus (Debian's `prometheus` package; these tests
fail, never skip, without it): promtool checks and unit-tests every alerting rule, and a Prometheus
scraping a real API server fires RouterOpsPGRRegression (and the category rule) when a real monitor
run (a real MF router as champion, the replay pair, a weak model that drifted) regresses, and
clears both when the next run recovers.

Set PROMETHEUS_E2E_SCREENSHOT=path.png (needs `chromium`) to save the firing /alerts page, and
PROMETHEUS_E2E_ALERTS_JSON=path.json to save /api/v1/alerts while it fires.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_helpers import PROM_DIR, ROOT, binary, running_prometheus, scrape_config
from serving_helpers import STRONG, WEAK, free_port, running_server, wait_for

pytestmark = pytest.mark.prometheus

API_KEY = "prometheus-scrape-key-0123456789"
# resolved now: the `settings` fixture changes the working directory to the test's tmp_path
EVIDENCE = {name: Path(os.environ[name]).resolve() for name in ("PROMETHEUS_E2E_ALERTS_JSON",
                                                                  "PROMETHEUS_E2E_SCREENSHOT") if os.environ.get(name)}
ROUTER_PREFS = ROOT / "tests" / "fixtures" / "router" / "prefs.jsonl"


def _promtool(*args: str, cwd: Path = PROM_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_checks_and_unit_tests_every_rule(tmp_path: Path) -> None:
    check = _promtool("check", "rules", "rules.yml")
    assert check.returncode == 0, check.stdout + check.stderr
    rules = yaml.safe_load((PROM_DIR / "rules.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert f"SUCCESS: {len(names)} rules found" in check.stdout
    assert {"RouterOpsPGRRegression", "RouterOpsCategoryRegression", "RouterOpsDrift", "RouterOpsNoChampionRouter",
            "RouterOpsRouterReloadFailing", "RouterOpsBackendFailover", "RouterOpsCircuitOpen"} <= names
    # every rule has at least one unit test in which it fires
    tests = yaml.safe_load((PROM_DIR / "rules_test.yml").read_text())
    fired = {case["alertname"] for t in tests["tests"] for case in t["alert_rule_test"] if case.get("exp_alerts")}
    assert fired == names, f"rules without a firing unit test: {sorted(names - fired)}"
    unit = _promtool("test", "rules", "rules_test.yml")
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert "SUCCESS" in unit.stdout
    # the shipped prometheus.yml (its credentials file is written by the compose service at start)
    shutil.copy(PROM_DIR / "rules.yml", tmp_path / "rules.yml")
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    key = tmp_path / "key"
    key.write_text("k")
    config["scrape_configs"][0]["authorization"]["credentials_file"] = str(key)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    conf = _promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert conf.returncode == 0, conf.stdout + conf.stderr
    # a broken rule is caught (promtool really parses the expressions)
    (tmp_path / "bad.yml").write_text("groups:\n- name: g\n  rules:\n  - alert: X\n    expr: rate(foo[5m]\n")
    assert _promtool("check", "rules", "bad.yml", cwd=tmp_path).returncode != 0


def _alerts(prom: str) -> list[dict]:
    body = httpx.get(f"{prom}/api/v1/alerts", timeout=5).json()
    assert body["status"] == "success"
    return body["data"]["alerts"]


def _rule_states(prom: str) -> dict[str, str]:
    groups = httpx.get(f"{prom}/api/v1/rules", timeout=5).json()["data"]["groups"]
    return {r["name"]: r["state"] for g in groups for r in g["rules"] if r["type"] == "alerting"}


def _firing(prom: str, name: str) -> list[dict]:
    return [a for a in _alerts(prom) if a["labels"]["alertname"] == name and a["state"] == "firing"]


N_PROMPTS = 12


def _train_champion(settings) -> str:  # noqa: ANN001
    """A real MF router on the router fixture's preferences, approved as champion."""
    from routerops import registry
    from routerops.db import session_scope
    from routerops.db.models import PreferenceLog
    from routerops.text import prompt_hash
    from routerops.training.train_router import train_router

    with session_scope(settings) as session:
        for line in ROUTER_PREFS.read_text().splitlines():
            r = json.loads(line)
            session.add(PreferenceLog(prompt=r["prompt"], prompt_hash=prompt_hash(r["prompt"]), model_a=r["model_a"],
                                      model_b=r["model_b"], winner=r["winner"], soft_label=r.get("soft_label"),
                                      source="fixture", judge=r.get("judge")))
    version = train_router(settings, seed=0, max_iter=60, progress=False).model_version
    registry.approve(settings.router_model_name, version, approved_by="test", settings=settings)
    return version


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _golden_scenario(settings, tmp_path: Path) -> dict[str, Path]:  # noqa: ANN001
    """A golden set on which the champion routes the 6 lowest-scored of 12 prompts to weak at the live
    alpha, and the recorded weak answer is right exactly there (strong always right): baseline PGR 1.
    Category A = score ranks 0-2 and 6-8, B = ranks 3-5 and 9-11. The drifted weak answers A's prompts
    wrong: PGR (0.75 - 0.25) / (1 - 0.25) = 0.667 overall and 0.5 in A (regressions at tolerance 0.1),
    1.0 in B (none)."""
    from routerops.alpha import propose_alpha
    from routerops.db import session_scope
    from routerops.monitoring.golden import score_prompts
    from routerops.monitoring.replay import load_live_router

    prompts = list(dict.fromkeys(json.loads(line)["prompt"] for line in ROUTER_PREFS.read_text().splitlines()))
    prompts = prompts[:N_PROMPTS]
    scores = score_prompts(load_live_router(settings), prompts, settings)
    order = sorted(range(N_PROMPTS), key=lambda i: scores[i])
    lo, hi = scores[order[5]], scores[order[6]]
    assert lo < hi, "the router scores two of the prompts alike; pick other prompts"
    with session_scope(settings) as session:  # the operator's alpha: the 6 lowest scores go to weak
        propose_alpha(session, settings, float((lo + hi) / 2), reason="test", source="manual", max_step=1.0)
    rank = {i: r for r, i in enumerate(order)}
    category = {i: "A" if rank[i] % 6 < 3 else "B" for i in range(N_PROMPTS)}
    gold = {i: f"gold{i:02d}" for i in range(N_PROMPTS)}
    wrong = "I do not know."
    _write_jsonl(tmp_path / "prompts.jsonl", [{"trace_id": f"t{i:02d}", "category": category[i], "prompt": prompts[i],
                                               "gold_answer": gold[i]} for i in range(N_PROMPTS)])
    out = {"prompts": tmp_path / "prompts.jsonl"}
    weak_now = {"recorded": lambda i: gold[i] if rank[i] < 6 else wrong,
                "drifted": lambda i: gold[i] if rank[i] < 6 and category[i] == "B" else wrong}
    for name, answer in weak_now.items():
        out[f"weak_{name}"] = _write_jsonl(tmp_path / f"weak_{name}.jsonl", [
            {"prompt": prompts[i], "output": f"The answer is {answer(i)}", "model": WEAK} for i in range(N_PROMPTS)])
    out["strong"] = _write_jsonl(tmp_path / "strong.jsonl", [
        {"prompt": prompts[i], "output": f"It is {gold[i]}.", "model": STRONG} for i in range(N_PROMPTS)])
    return out


def _use_pair(monkeypatch: pytest.MonkeyPatch, weak_file: Path, strong_file: Path):  # noqa: ANN202
    env = {"WEAK_BACKEND": "replay", "WEAK_MODEL": WEAK, "WEAK_REPLAY_FILE": str(weak_file),
           "STRONG_BACKEND": "replay", "STRONG_MODEL": STRONG, "STRONG_REPLAY_FILE": str(strong_file),
           "API_KEYS": API_KEY, "RELOAD_INTERVAL_S": "0.5", "CATEGORY_MIN_TRACES": "3"}
    for k, v in env.items():
        monkeypatch.setenv(f"ROUTEROPS_{k}", v)
    from routerops.settings import get_settings

    return get_settings()


def test_a_monitor_run_that_regresses_fires_in_prometheus_and_clears(settings, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from routerops.orchestration.cli import cli
    from routerops.serving.app import create_app

    binary("prometheus")  # fail first, before training anything
    # the replay pair under the names the router knows (its files are written next)
    s = _use_pair(monkeypatch, tmp_path / "weak_recorded.jsonl", tmp_path / "strong.jsonl")
    _train_champion(s)
    files = _golden_scenario(s, tmp_path)
    golden = tmp_path / "golden.jsonl"
    rec = CliRunner().invoke(cli, ["golden", "record", "--prompts", str(files["prompts"]), "--output", str(golden)])
    assert rec.exit_code == 0 and f"wrote {N_PROMPTS} traces" in rec.output, rec.output

    def monitor(weak_file: Path) -> str:
        _use_pair(monkeypatch, weak_file, files["strong"])
        out = CliRunner().invoke(cli, ["monitor", "run", "--golden", str(golden), "--no-dashboards",
                                       "--no-recalibrate"])
        assert out.exit_code == 0, out.output
        return out.output

    with running_server(create_app(s)) as api, \
            running_prometheus(scrape_config(api, API_KEY, tmp_path), tmp_path, free_port()) as prom:
        # Prometheus scrapes the API (with the key) and the rules load inactive
        target = wait_for(lambda: next((t for t in httpx.get(f"{prom}/api/v1/targets", timeout=5).json()
                                        ["data"]["activeTargets"] if t["health"] == "up"), None), timeout_s=30)
        assert target["labels"]["job"] == "routerops-api" and target["scrapeUrl"] == f"{api}/metrics"
        states = wait_for(lambda: (st := _rule_states(prom)) and len(st) >= 8 and st, timeout_s=30)
        assert states["RouterOpsPGRRegression"] == "inactive" and states["RouterOpsCategoryRegression"] == "inactive"

        same = monitor(files["weak_recorded"])  # nothing drifted: PGR = baseline = 1
        assert "PGR at alpha" in same and ": 1.000 (baseline 1.000)" in same and "ALERTS" not in same
        drifted = monitor(files["weak_drifted"])  # weak now wrong on category A
        assert ": 0.667 (baseline 1.000)" in drifted and "ALERTS opened" in drifted, drifted
        assert "category regression (PGR below baseline by > 0.1): A" in drifted

        (alert,) = wait_for(lambda: _firing(prom, "RouterOpsPGRRegression"), timeout_s=30)
        assert alert["labels"] == {"alertname": "RouterOpsPGRRegression", "kind": "pgr_regression",
                                   "severity": "critical"}
        assert float(alert["value"]) == 1.0
        assert "PGR (0.667) is more than the tolerance (0.1) below its baseline (1.000)" in \
            alert["annotations"]["description"]
        (cat_alert,) = wait_for(lambda: _firing(prom, "RouterOpsCategoryRegression"), timeout_s=30)
        assert cat_alert["annotations"]["description"].startswith("Regressed categories: A ")
        assert _rule_states(prom)["RouterOpsPGRRegression"] == "firing"
        # the per-category gauges behind it, as Prometheus stored them from /metrics
        q = httpx.get(f"{prom}/api/v1/query", params={"query": "routerops_category_pgr"}, timeout=5).json()
        assert {r["metric"]["category"]: round(float(r["value"][1]), 3) for r in q["data"]["result"]} == \
            {"A": 0.5, "B": 1.0}
        _save_evidence(prom)

        # the provider reverts: the next run resolves both alerts and Prometheus stops firing
        assert ": 1.000 (baseline 1.000)" in monitor(files["weak_recorded"])
        wait_for(lambda: not _firing(prom, "RouterOpsPGRRegression")
                 and not _firing(prom, "RouterOpsCategoryRegression"), timeout_s=30)


def _save_evidence(prom: str) -> None:
    if alerts_json := EVIDENCE.get("PROMETHEUS_E2E_ALERTS_JSON"):
        alerts_json.write_text(json.dumps(httpx.get(f"{prom}/api/v1/alerts", timeout=5).json(), indent=2) + "\n")
    if shot := EVIDENCE.get("PROMETHEUS_E2E_SCREENSHOT"):
        chromium = shutil.which("chromium")
        assert chromium, "PROMETHEUS_E2E_SCREENSHOT needs chromium (apt-get install -y chromium)"
        shot.parent.mkdir(parents=True, exist_ok=True)
        shot.unlink(missing_ok=True)
        # Debian's build serves the server-rendered UI under /classic; upstream's React UI is /alerts
        page = f"{prom}/classic/alerts" if httpx.get(f"{prom}/classic/alerts", timeout=5).status_code == 200 \
            else f"{prom}/alerts"
        out = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                              "--window-size=1400,900", page], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and shot.is_file(), out.stderr[-2000:]
