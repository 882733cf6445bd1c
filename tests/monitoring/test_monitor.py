"""The monitor on a real drift scenario from the shared AlpacaEval data.

Golden traces: gpt4_1106_preview (strong) and Mixtral-8x7B-Instruct-v0.1 (weak) answers with GPT-4
Turbo judge labels; the router is a real MF router trained (routerops.training.train_router) on the AlpacaEval
judgements (alpaca_eval_gpt4_turbo_fn: ~9 models against gpt4_1106_preview) of the golden prompts and
approved as champion: a router that learned where the old Mixtral was good enough (in-sample on
purpose: it keeps the test fast, and a stale router is exactly what provider drift exposes).

Why the drifted weak is `Mixtral-8x7B-Instruct-v0.1_concise` (and not `_verbose`, nor
`gpt4_1106_preview_concise`): a PGR change must be measured on real labels for the drifted answers.
`Mixtral..._verbose` has no judge labels at all, and `gpt4_1106_preview_concise` is never judged
against gpt4_1106_preview; `Mixtral..._concise` is judged against gpt4_1106_preview by
weighted_alpaca_eval_gpt4_turbo, the logprob-weighted form of the same GPT-4 Turbo annotator whose
discrete form (alpaca_eval_gpt4_turbo_fn) labels the base Mixtral. So both sides of the comparison
carry labels from the same judge prompt. The concise system prompt shortens Mixtral's answers (length
drift, which Evidently catches) and lowers its win rate against GPT-4 Turbo, so the router, which
learned when the old Mixtral was good enough, now recovers less of the gap at the same alpha.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from monitoring_helpers import STRONG, WEAK, Receiver, insert_judgements
from sqlalchemy import select

from routerops import metrics
from routerops.db import session_scope
from routerops.db.models import Alert, AlphaChange, MonitorRun
from routerops.monitoring.golden import load_golden, record_from_alpaca_eval, write_golden
from routerops.monitoring.quality import RecordedJudge
from routerops.monitoring.replay import load_live_router, run_monitor

DRIFTED = "Mixtral-8x7B-Instruct-v0.1_concise"
N_TRACES = 150


@pytest.fixture
def champion(settings, shared_data):
    """A real MF router trained on the judge's verdicts and approved as champion."""
    from routerops import registry
    from routerops.training.train_router import train_router

    with gzip.open(shared_data / f"alpaca_eval/model_outputs/{STRONG}.json.gz", "rt") as fh:
        prompts = {r["instruction"] for r in json.load(fh)[:N_TRACES]}  # the golden prompts (file order)
    n = insert_judgements(settings, shared_data / "alpaca_eval/annotations/alpaca_eval_gpt4_turbo_fn.jsonl.gz",
                           prompts)
    assert n > 5 * N_TRACES
    result = train_router(settings, progress=False)
    registry.approve(settings.router_model_name, result.model_version, approved_by="test", settings=settings)
    return result.model_version


@pytest.fixture
def golden_file(settings, shared_data, champion, tmp_path, monkeypatch) -> Path:
    ae = shared_data / "alpaca_eval"
    s = _use_pair(monkeypatch, shared_data, WEAK)
    router = load_live_router(s)
    traces = record_from_alpaca_eval(
        ae / f"model_outputs/{WEAK}.json.gz", ae / f"model_outputs/{STRONG}.json.gz",
        [ae / "annotations/alpaca_eval_gpt4_turbo_fn.jsonl.gz"], settings=s, router=router, limit=N_TRACES)
    path = tmp_path / "golden_ae.jsonl"
    write_golden(path, traces)
    return path


def _use_pair(monkeypatch, shared_data, weak_file: str):
    """The live pair, as an operator configures it: both models replayed from recorded outputs; the
    router knows the weak model by its base name whatever its provider did to the system prompt."""
    ae = shared_data / "alpaca_eval/model_outputs"
    env = {"WEAK_BACKEND": "replay", "WEAK_MODEL": weak_file, "WEAK_REPLAY_FILE": str(ae / f"{weak_file}.json.gz"),
           "STRONG_BACKEND": "replay", "STRONG_MODEL": STRONG, "STRONG_REPLAY_FILE": str(ae / f"{STRONG}.json.gz"),
           "ROUTER_WEAK_NAME": WEAK, "ROUTER_STRONG_NAME": STRONG}
    for k, v in env.items():
        monkeypatch.setenv(f"ROUTEROPS_{k}", v)
    from routerops.settings import get_settings

    return get_settings()


@pytest.mark.slow
def test_drift_scenario_alerts_once_and_recalibrates(settings, shared_data, golden_file, monkeypatch):
    traces = load_golden(golden_file)
    assert len(traces) == N_TRACES and all(t.router_score is not None for t in traces)
    judge = RecordedJudge([shared_data / "alpaca_eval/annotations/weighted_alpaca_eval_gpt4_turbo.jsonl.gz"])

    with Receiver() as hook:
        monkeypatch.setenv("ROUTEROPS_ALERT_WEBHOOK_URL", hook.url)
        monkeypatch.setenv("ROUTEROPS_TARGET_PGR", "0.8")
        # At 70% strong calls the drifted weak costs this router ~0.07 PGR; an operator who targets
        # PGR 0.8 tolerates 0.05 (the default 0.1 would let this real regression through).
        monkeypatch.setenv("ROUTEROPS_PGR_TOLERANCE", "0.05")
        s = _use_pair(monkeypatch, shared_data, WEAK)
        # The operator calibrates alpha on the recorded set (target PGR 0.8), like after recording.
        scores = np.array([t.router_score for t in traces])
        wq = np.array([t.label.p_weak_wins for t in traces])
        alpha0 = metrics.alpha_for_pgr(scores, wq, 1 - wq, 0.8)
        from routerops.alpha import propose_alpha

        with session_scope(s) as session:
            propose_alpha(session, s, alpha0, reason="initial calibration", source="manual", max_step=1.0)

        same = run_monitor(s, golden_file, judge=judge, progress=False)
        assert same.status == "ok" and same.n_traces == N_TRACES
        assert same.metrics["output_drift"]["weak"]["exact_match_rate"] == 1.0
        assert same.pgr == pytest.approx(same.baseline_pgr) and same.pgr >= 0.8 - 1e-9
        assert not same.drift_detected and not same.regression and same.alerts_opened == []
        assert same.recalibration["change_id"] is None  # alpha already right: no change recorded

        s = _use_pair(monkeypatch, shared_data, DRIFTED)
        drifted = run_monitor(s, golden_file, judge=judge, progress=False)
        od = drifted.metrics["output_drift"]["weak"]
        assert od["exact_match_rate"] < 0.05 and od["length_change"] < -0.3
        assert drifted.metrics["output_drift"]["strong"]["exact_match_rate"] == 1.0
        assert drifted.metrics["label_coverage"] == 1.0  # every drifted answer has a real judge label
        assert drifted.drift_detected and "weak_words" in drifted.metrics["drift"]["drifted_columns"]
        assert drifted.metrics["drift"]["columns"]["weak_words"]["method"]  # method and threshold recorded
        assert drifted.regression and drifted.pgr < drifted.baseline_pgr - s.pgr_tolerance
        # pgr_regression, drift, and one per category (AlpacaEval's `dataset`) that regressed beyond
        # the tolerance; koala (21 traces) loses the most of its PGR
        cats = {c["category"]: c for c in drifted.metrics["categories"]["rows"]}
        assert set(cats) == {"helpful_base", "koala"} and all(c["reported"] for c in cats.values())
        regressed = sorted(c for c, r in cats.items() if r["pgr"] < r["baseline_pgr"] - s.pgr_tolerance)
        assert "koala" in regressed and drifted.metrics["category_regressions"] == regressed
        assert len(drifted.alerts_opened) == 2 + len(regressed)

        rec = drifted.recalibration
        assert rec["mode"] == "target_pgr" and rec["recommended"] < alpha0  # more goes to strong
        with session_scope(s) as session:
            change = session.get(AlphaChange, rec["change_id"])
            assert change.source == "recalibration" and change.monitor_run_id == drifted.run_id
            assert change.status == ("active" if alpha0 - rec["recommended"] <= s.alpha_max_step + 1e-12
                                     else "pending")

        # the same drifted pair again, as an operator runs it (CLI): still drifted, no new alert
        from routerops.orchestration.cli import cli

        out = CliRunner().invoke(cli, ["monitor", "run", "--golden", str(golden_file), "--judge-annotations",
                                       str(shared_data / "alpaca_eval/annotations/weighted_alpaca_eval_gpt4_turbo.jsonl.gz")])
        assert out.exit_code == 0, out.output
        assert "drift: YES" in out.output and "weak_words" in out.output and "ALERTS" not in out.output
        kinds = [json.dumps(m) for m in hook.received]
        assert len(hook.received) == 2 + len(regressed)
        assert sum("pgr_regression" in k for k in kinds) == 1 and sum("drift" in m["text"] for m in hook.received) == 1
        assert sum("category_regression" in m["text"] and "koala" in m["text"] for m in hook.received) == 1

    with session_scope(s) as session:
        runs = session.scalars(select(MonitorRun).order_by(MonitorRun.started_at)).all()
        assert [r.status for r in runs] == ["ok", "ok", "ok"]
        assert runs[1].drift_detected and runs[1].metrics["pgr"] == pytest.approx(drifted.pgr)
        open_alerts = session.scalars(select(Alert).where(Alert.status == "open")).all()
        assert {a.kind for a in open_alerts} >= {"drift"}

    # Every run left an Evidently snapshot pair in the workspace and an MLflow run with its plots.
    from routerops import registry
    from routerops.monitoring.dashboards import get_project

    assert "evidently_error" not in runs[-1].metrics and "mlflow_error" not in runs[-1].metrics
    ws, project = get_project(s)
    assert len(ws.list_runs(project.id)) == 6  # summary + drift per run
    titles = {p.title for p in project.dashboard.model().panels}
    assert {"PGR at the live alpha", "Strong-call share", "Alpha", "Drift share (Evidently)"} <= titles
    client = registry.client(s)
    run = client.get_run(drifted.metrics["mlflow_run_id"])
    assert run.data.metrics["pgr"] == pytest.approx(drifted.pgr) and run.data.metrics["drift_detected"] == 1.0
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/pgr_curve.png", "plots/score_distribution.png"}


def test_alpha_cli_bounded_step_and_approval(settings, monkeypatch):
    from routerops.orchestration.cli import cli

    monkeypatch.setenv("ROUTEROPS_USER", "ops")
    run = CliRunner().invoke
    assert "alpha 0.5000 (source: default; no alpha set, no router calibration)" in run(cli, ["alpha", "show"]).output
    small = run(cli, ["alpha", "set", "0.55", "--reason", "nudge"])
    assert small.exit_code == 0 and "0.5500 is active" in small.output
    big = run(cli, ["alpha", "set", "0.9", "--reason", "big jump"])
    assert "is pending" in big.output and "routerops alpha approve 2" in big.output
    assert "alpha 0.5500" in run(cli, ["alpha", "show"]).output  # pending is not live
    ok = run(cli, ["alpha", "approve", "2"])
    assert ok.exit_code == 0 and "approved by ops: alpha is now 0.9000" in ok.output
    again = run(cli, ["alpha", "approve", "2"])
    assert again.exit_code != 0 and "is active, not pending" in again.output
    missing = run(cli, ["alpha", "approve", "99"])
    assert missing.exit_code != 0 and "no alpha change with id 99" in missing.output
    history = run(cli, ["alpha", "history"]).output.splitlines()
    assert len(history) == 2 and "0.5500 -> 0.9000\tactive\tmanual\tops\tbig jump" in history[0]
    assert run(cli, ["alpha", "set", "1.5", "--reason", "x"]).exit_code != 0  # out of range


@pytest.mark.slow
@pytest.mark.timeout(2400)  # 20 prompts x (greedy + best-of-5), 48 tokens, on CPU: minutes alone, more on a loaded box
def test_shipped_golden_set_replays_end_to_end(settings):
    """The shipped golden set against the embedded default pair (SmolLM2 greedy / best-of-5), no
    router yet (fresh install: all calls go to strong), through the CLI. Wall time is printed."""
    import time

    from routerops.orchestration.cli import cli

    golden = Path(__file__).resolve().parents[2] / "golden_traces/default.jsonl"
    t0 = time.perf_counter()
    result = CliRunner().invoke(cli, ["monitor", "run", "--golden", str(golden), "--json"])
    wall = time.perf_counter() - t0
    print(f"\nshipped golden set replay: {wall:.1f} s")
    assert result.exit_code == 0, result.output
    m = json.loads(result.output[result.output.index("{"):])
    n = len(load_golden(golden))
    assert m["n_replayed"] == n and m["n_failed"] == 0
    assert m["routing"] == "all-strong" and m["router_version"] is None
    assert m["strong_share"] == 1.0
    from routerops.monitoring.golden import recorded_quality_gap

    gap = recorded_quality_gap(load_golden(golden))
    if gap.problem is None:  # strong beats weak: all-strong routing recovers the whole gap
        assert m["pgr"] == pytest.approx(1.0) and m["baseline_pgr"] == pytest.approx(1.0)
    else:  # no gap on the recording: PGR is null with the reason, never 1.0
        assert m["pgr"] is None and m["baseline_pgr"] is None
        assert m["pgr_null_reason"].startswith("PGR is undefined")  # the printed line: tests/monitoring/test_monitor_no_gap.py
    # Same weights, decoding and seeds: the replay reproduces the recording (greedy and seeded sampling).
    assert m["output_drift"]["weak"]["exact_match_rate"] >= 0.9
    assert m["output_drift"]["strong"]["exact_match_rate"] >= 0.9
    assert not m["drift"]["drift_detected"]
    assert 0.0 <= m["quality"]["weak"] <= 1.0 and m["quality"]["weak"] != m["quality"]["strong"]
    with session_scope(settings) as session:
        row = session.scalars(select(MonitorRun)).one()
        assert row.status == "ok" and row.n_traces == n and row.metrics["wall_s"] > 0


def test_dashboard_fraction_panels_span_0_to_1_and_a_null_pgr_says_why(settings):
    """Evidently scales a panel's y axis to its data: after one run a share of 0.25 sat on a "0"
    tick. Fraction panels carry 0 and 1 series; the PGR panel's subtitle says why a point is missing."""
    from routerops.monitoring.dashboards import (
        PANELS,
        PGR_PANEL,
        UNBOUNDED_PANELS,
        add_run_snapshots,
        get_project,
    )
    from routerops.monitoring.drift import DriftResult
    from routerops.monitoring.replay import MonitorResult

    od = {"exact_match_rate": 1.0, "similarity": 1.0, "length_change": 0.0}
    reason = "PGR is undefined: strong (0.400) is not better than weak (0.450) on this set"
    result = MonitorResult("run-1", "ok", 20, None, None, 0.25, 0.919, False, 0.0, False,
                           metrics={"output_drift": {"weak": od, "strong": od}, "quality": {"weak": 0.45,
                                    "strong": 0.4, "routed": 0.44}, "router_version": "1"},
                           pgr_null_reason=reason, baseline_pgr_null_reason=reason)
    add_run_snapshots(settings, result, DriftResult(False, 0.0, [], {}, True))
    from evidently.ui.workspace import Workspace

    ws, project = get_project(settings)
    fresh = Workspace(str(settings.resolved_evidently_workspace))  # what the UI reads from disk
    panels = {p.title: p for p in fresh.get_dashboard(project.id).panels}
    for title, _ in PANELS:
        legends = [v.legend for v in panels[title].values]
        assert (legends[-2:] == ["(axis 0)", "(axis 1)"]) is (title not in UNBOUNDED_PANELS), title
    assert panels[PGR_PANEL].subtitle.endswith(f"PGR is null (no point plotted): {reason}")
    (summary,) = [r for r in ws.list_runs(project.id)]
    dumped = json.dumps(ws.get_run(project.id, summary).dict(), default=str)
    assert '"axis_0"' in dumped and '"axis_1"' in dumped and '"strong_share"' in dumped
    # a project made by an older release gets the new panels once, without duplicates
    get_project(settings)
    assert len(Workspace(str(settings.resolved_evidently_workspace)).get_dashboard(project.id).panels) == len(panels)


def test_quick_replay_shows_progress_with_an_eta_and_covers_the_categories(settings):
    """`monitor run --limit N`: N traces spread over the categories, one progress line per trace
    with the time so far and an ETA (the embedded pair: each trace runs both models)."""
    import re

    from routerops.monitoring.replay import spread_sample
    from routerops.orchestration.cli import cli

    golden = Path(__file__).resolve().parents[2] / "golden_traces/default.jsonl"
    traces = load_golden(golden)
    picked = spread_sample(traces, 3)
    assert len({t.category for t in picked}) == 3 and spread_sample(traces, None) == traces
    result = CliRunner().invoke(cli, ["monitor", "run", "--golden", str(golden), "--limit", "3", "--no-dashboards"])
    assert result.exit_code == 0, result.output
    # (the model loading's progress bars share the output: a line may start with their carriage returns)
    found = re.findall(r"replayed (\d)/3 \((\S+): [\d.]+ s, both models\); \d+ s so far, ETA (\d+) s", result.output)
    assert [(n, tid) for n, tid, _ in found] == [("1", picked[0].trace_id), ("2", picked[1].trace_id),
                                                 ("3", picked[2].trace_id)]
    assert found[-1][2] == "0"
    assert "3 traces in" in result.output
