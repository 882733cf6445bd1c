"""PGR on a golden set with no quality gap (strong worse than weak) is null with its reason, in every
place a run is reported, is never alerted on and does not move alpha; recording such a set warns.

The fixture (tests/fixtures/monitoring/no_gap) is replayed by the replay backend: weak answers 4/6
gold answers right, strong 2/6. With no champion every call goes to strong, where the old ratio
(q_routed - q_weak) / (q_strong - q_weak) read 1.0 whatever the gap's sign.
"""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner
from conftest import FIXTURES
from sqlalchemy import select

from routerops.db import session_scope
from routerops.db.models import Alert, AlphaChange, MonitorRun
from routerops.monitoring.alerts import pgr_regression_condition, process_conditions
from routerops.monitoring.golden import load_golden, recorded_quality_gap

NO_GAP = FIXTURES / "monitoring/no_gap"
REASON = "PGR is undefined: strong quality 0.3333 is below weak quality 0.6667"


@pytest.fixture
def replay_pair(settings, monkeypatch):
    outputs = str(NO_GAP / "outputs.jsonl")
    for role in ("WEAK", "STRONG"):
        monkeypatch.setenv(f"ROUTEROPS_{role}_BACKEND", "replay")
        monkeypatch.setenv(f"ROUTEROPS_{role}_MODEL", f"{role.lower()}-fixture")
        monkeypatch.setenv(f"ROUTEROPS_{role}_REPLAY_FILE", outputs)
    from routerops.settings import get_settings

    return get_settings()


def test_recording_a_set_with_no_gap_warns(replay_pair, tmp_path):
    from routerops.orchestration.cli import cli

    out = tmp_path / "g.jsonl"
    result = CliRunner().invoke(cli, ["golden", "record", "--prompts", str(NO_GAP / "prompts.jsonl"),
                                      "--no-router", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote 6 traces" in result.output
    assert "WARNING: no quality gap on this golden set (recorded quality: weak 0.667, strong 0.333)" in result.output
    assert "PGR as null" in result.output
    gap = recorded_quality_gap(load_golden(out))
    assert (gap.n_labelled, gap.q_weak, gap.q_strong) == (6, pytest.approx(2 / 3), pytest.approx(1 / 3))
    assert gap.problem.startswith(REASON)


def test_monitor_reports_null_pgr_with_its_reason_everywhere(replay_pair, monkeypatch):
    from routerops.orchestration.cli import cli

    monkeypatch.setenv("ROUTEROPS_CATEGORY_MIN_TRACES", "3")  # the fixture has 3 traces per category
    from routerops.settings import get_settings

    s = get_settings()
    result = CliRunner().invoke(cli, ["monitor", "run", "--golden", str(NO_GAP / "golden.jsonl")])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "quality: weak 0.667, strong 0.333, routed 0.333" in out
    assert "PGR at alpha 0.500: null (baseline null), strong share 1.000" in out  # was 1.000 (baseline 1.000)
    assert f"PGR null: {REASON}" in out and "(not alerted on)" in out
    assert "baseline PGR null" not in out  # the same reason is said once
    assert "ALERTS" not in out
    # no recalibration on a null PGR (the default target_strong_share would otherwise move alpha)
    assert f"alpha not recalibrated: PGR is null: {REASON}" in out
    # per category: arithmetic weak 3/3, strong 1/3; geography 1/3 each (equal: no gap either)
    assert "per category (figures from >= 3 labelled traces):" in out
    arith = next(ln for ln in out.splitlines() if ln.strip().startswith("arithmetic"))
    assert arith.split()[1:] == ["3", "3", "1.000", "1.000", "0.333", "0.333", "null", "null"]

    with session_scope(s) as session:
        row = session.scalars(select(MonitorRun)).one()
        assert row.status == "ok" and row.pgr is None and row.baseline_pgr is None
        assert row.metrics["pgr_null_reason"].startswith(REASON)
        assert row.metrics["baseline_pgr_null_reason"].startswith(REASON)
        assert row.metrics["routing"] == "all-strong"
        assert "evidently_error" not in row.metrics and "mlflow_error" not in row.metrics
        assert session.scalars(select(Alert)).all() == []
        assert row.metrics["recalibration"] is None and s.target_strong_share is not None
        assert row.metrics["recalibration_skipped"].startswith(f"PGR is null: {REASON}")
        assert session.scalars(select(AlphaChange)).all() == []
        assert row.metrics["category_regressions"] == []  # both categories null: never alerted
        cats = {c["category"]: c for c in row.metrics["categories"]["rows"]}
        assert row.metrics["categories"]["min_traces"] == 3 and set(cats) == {"arithmetic", "geography"}
        assert cats["geography"]["pgr"] is None and "are equal" in cats["geography"]["pgr_null_reason"]
        mlflow_run_id, run_id = row.metrics["mlflow_run_id"], row.id

    # MLflow: no pgr metric, a tag with the reason
    from routerops import registry

    run = registry.client(s).get_run(mlflow_run_id)
    assert "pgr" not in run.data.metrics and "baseline_pgr" not in run.data.metrics
    assert run.data.metrics["pgr_defined"] == 0.0 and run.data.metrics["strong_share"] == 1.0
    assert run.data.tags["pgr_status"] == "null" and run.data.tags["pgr_null_reason"].startswith(REASON)
    assert run.data.tags["baseline_pgr_status"] == "null"
    assert run.data.metrics["category.arithmetic.quality_weak"] == 1.0
    assert run.data.metrics["category.geography.strong_share"] == 1.0
    assert "category.arithmetic.pgr" not in run.data.metrics and run.data.params["category_min_traces"] == "3"

    # Prometheus textfile: no pgr sample at all (no rule can fire on it), pgr_defined 0
    prom = (s.data_dir / "metrics/routerops_monitoring.prom").read_text()
    samples = dict(line.rsplit(" ", 1) for line in prom.splitlines() if line and not line.startswith("#"))
    assert "routerops_monitor_pgr" not in samples and "routerops_monitor_baseline_pgr" not in samples
    assert float(samples["routerops_monitor_pgr_defined"]) == 0.0
    assert float(samples["routerops_monitor_strong_share"]) == 1.0
    assert float(samples["routerops_pgr_regression_active"]) == 0.0

    # Evidently: the summary snapshot says PGR is undefined (NaN PGR, pgr_defined 0) on its own panel
    from routerops.monitoring.dashboards import get_project

    ws, project = get_project(s)
    titles = {p.title for p in project.dashboard.model().panels}
    assert any(t.startswith("PGR defined") for t in titles) and "Quality on the golden replay" in titles
    summaries = [ws.get_run(project.id, sid) for sid in ws.list_runs(project.id)]
    summaries = [snap for snap in summaries if "summary" in (snap.tags or [])]
    assert len(summaries) == 1 and summaries[0].metadata["monitor_run_id"] == run_id
    values = {r.display_name: r.value for r in summaries[0].metric_results.values()}
    assert math.isnan(values["Mean value of 'pgr'"]) and math.isnan(values["Mean value of 'baseline_pgr'"])
    assert values["Mean value of 'pgr_defined'"] == 0.0
    assert values["Mean value of 'quality_weak'"] == pytest.approx(2 / 3)
    assert values["Mean value of 'quality_strong'"] == pytest.approx(1 / 3)
    # one panel per reported category, fed by the summary's per-category columns
    assert {"Category arithmetic: PGR and strong share", "Category geography: PGR and strong share"} <= titles
    assert values["Mean value of 'cat_arithmetic_strong_share'"] == 1.0
    assert math.isnan(values["Mean value of 'cat_geography_pgr'"])  # null there too: weak and strong equal


def test_null_pgr_never_opens_nor_resolves_a_pgr_alert(settings):
    payload = {"golden_set": "g.jsonl"}
    null_now = pgr_regression_condition("k", None, 0.9, 0.1, alpha=0.5, golden_name="g.jsonl", payload=payload)
    null_base = pgr_regression_condition("k", 0.2, None, 0.1, alpha=0.5, golden_name="g.jsonl", payload=payload)
    nan_now = pgr_regression_condition("k", float("nan"), 0.9, 0.1, alpha=0.5, golden_name="g.jsonl", payload=payload)
    assert null_now.active is None and null_base.active is None and nan_now.active is None
    with session_scope(settings) as s:
        assert process_conditions(s, settings, [null_now]) == []  # no alert from an undefined PGR
        regressed = pgr_regression_condition("k", 0.5, 0.9, 0.1, alpha=0.5, golden_name="g.jsonl", payload=payload)
        assert regressed.active is True and "PGR at alpha 0.500 is 0.500, baseline 0.900" in regressed.message
        assert len(process_conditions(s, settings, [regressed])) == 1
        process_conditions(s, settings, [null_now])  # PGR undefined now: the open alert stays open
        assert s.scalars(select(Alert)).one().status == "open"
        fine = pgr_regression_condition("k", 0.85, 0.9, 0.1, alpha=0.5, golden_name="g.jsonl", payload=payload)
        assert fine.active is False
        process_conditions(s, settings, [fine])
        assert s.scalars(select(Alert)).one().status == "resolved"
