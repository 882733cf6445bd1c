"""The shipped Prometheus files with a real Prometheus (Debian's `prometheus` package; these tests
fail, never skip, without it): promtool checks and unit-tests every alerting rule, and a Prometheus
scraping a real API server fires RouterOpsPGRRegression (and the category rule) when the monitor's
alert code opens a regression, then clears it when the regression recovers.

Set PROMETHEUS_E2E_SCREENSHOT=path.png (needs `chromium`) to save the firing /alerts page, and
PROMETHEUS_E2E_ALERTS_JSON=path.json to save /api/v1/alerts while it fires.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_helpers import PROM_DIR, binary, running_prometheus, scrape_config
from serving_helpers import RECORDED_PAIR, STRONG, WEAK, free_port, running_server, wait_for

pytestmark = pytest.mark.prometheus

API_KEY = "prometheus-scrape-key-0123456789"
# resolved now: the `settings` fixture changes the working directory to the test's tmp_path
EVIDENCE = {name: Path(os.environ[name]).resolve() for name in ("PROMETHEUS_E2E_ALERTS_JSON",
                                                                  "PROMETHEUS_E2E_SCREENSHOT") if os.environ.get(name)}
# Hand-worked per-category arrays (tests/test_monitor_categories.py): category A has PGR 0.5 against
# a baseline of 1.0 at alpha 0.5 (a regression at tolerance 0.1), B is under the minimum count, C has
# no quality gap (null PGR).
CATS = ["A"] * 5 + ["B"] * 2 + ["C"] * 3
SCORES = [0.9, 0.8, 0.2, 0.1, 0.7, 0.9, 0.1, 0.9, 0.9, 0.9]
WQ = [0, 1, 1, 0, None, 1, 0, 1, 1, 0]
SQ = [1, 1, 1, 1, None, 1, 1, 0, 1, 0]
WQ_REF = [0, 0, 1, 0, 0, 1, 0, 1, 1, 0]
SQ_REF = [1, 1, 1, 0, 1, 1, 1, 0, 1, 0]


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


def test_pgr_regression_fires_in_prometheus_and_clears(settings, tmp_path: Path) -> None:
    from monitoring.alerts import category_regression_condition, pgr_regression_condition, process_conditions
    from monitoring.categories import per_category
    from routerops.db import session_scope
    from routerops.db.models import MonitorRun
    from routerops.settings import get_settings
    from serving.app import create_app

    binary("prometheus")  # fail first, before starting anything
    s = get_settings(weak_backend="replay", strong_backend="replay", weak_model=WEAK, strong_model=STRONG,
                     replay_file=RECORDED_PAIR, api_keys=[API_KEY], reload_interval_s=0.5)
    with running_server(create_app(s)) as api, \
            running_prometheus(scrape_config(api, API_KEY, tmp_path), tmp_path, free_port()) as prom:
        # Prometheus scrapes the API (with the key) and the rules load inactive
        target = wait_for(lambda: next((t for t in httpx.get(f"{prom}/api/v1/targets", timeout=5).json()
                                        ["data"]["activeTargets"] if t["health"] == "up"), None), timeout_s=30)
        assert target["labels"]["job"] == "routerops-api" and target["scrapeUrl"] == f"{api}/metrics"
        states = wait_for(lambda: (st := _rule_states(prom)) and len(st) >= 8 and st, timeout_s=30)
        assert states["RouterOpsPGRRegression"] == "inactive" and states["RouterOpsCategoryRegression"] == "inactive"

        # A monitor run that regressed, through the monitor's own alert code (alerts + monitor_runs rows)
        cats = per_category(CATS, SCORES, WQ, SQ, WQ_REF, SQ_REF, alpha=0.5, min_traces=3)
        pgr_cond = pgr_regression_condition("pgr_regression:golden.jsonl:e2e", 0.42, 0.72, s.pgr_tolerance,
                                            alpha=0.5, golden_name="golden.jsonl", payload={"pgr": 0.42})
        cat_conds = [category_regression_condition("golden.jsonl:e2e", c, s.pgr_tolerance, alpha=0.5,
                                                   golden_name="golden.jsonl", min_traces=3) for c in cats]
        assert [c.active for c in cat_conds] == [True, None, None]  # A regressed; B too small; C null
        with session_scope(s) as session:
            session.add(MonitorRun(golden_set="golden.jsonl", n_traces=10, alpha=0.5, pgr=0.42, baseline_pgr=0.72,
                                   strong_share=0.6, status="ok", finished_at=datetime.now(UTC),
                                   metrics={"pgr_tolerance": s.pgr_tolerance,
                                            "categories": {"min_traces": 3, "rows": [c.to_dict() for c in cats]}}))
            opened = process_conditions(session, s, [pgr_cond, *cat_conds])
        assert [a.kind for a in opened] == ["pgr_regression", "category_regression"]

        (alert,) = wait_for(lambda: _firing(prom, "RouterOpsPGRRegression"), timeout_s=30)
        assert alert["labels"] == {"alertname": "RouterOpsPGRRegression", "kind": "pgr_regression",
                                   "severity": "critical"}
        assert alert["value"] in ("1e+00", "1")
        assert "PGR (0.420) is more than the tolerance (0.1) below its baseline (0.720)" in \
            alert["annotations"]["description"]
        (cat_alert,) = wait_for(lambda: _firing(prom, "RouterOpsCategoryRegression"), timeout_s=30)
        assert cat_alert["annotations"]["description"].startswith("Regressed categories: A ")
        assert _rule_states(prom)["RouterOpsPGRRegression"] == "firing"
        # the per-category gauges behind it, as Prometheus stored them
        q = httpx.get(f"{prom}/api/v1/query", params={"query": "routerops_category_pgr"}, timeout=5).json()
        assert {r["metric"]["category"]: float(r["value"][1]) for r in q["data"]["result"]} == {"A": 0.5}
        _save_evidence(prom)

        # the regression recovers: the monitor resolves its alert and Prometheus stops firing
        fine = pgr_regression_condition("pgr_regression:golden.jsonl:e2e", 0.70, 0.72, s.pgr_tolerance,
                                        alpha=0.5, golden_name="golden.jsonl", payload={"pgr": 0.70})
        with session_scope(s) as session:
            process_conditions(session, s, [fine])
        wait_for(lambda: not _firing(prom, "RouterOpsPGRRegression"), timeout_s=30)
        assert _firing(prom, "RouterOpsCategoryRegression")  # its own key: still open


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
