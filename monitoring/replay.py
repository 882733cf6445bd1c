"""`routerops monitor run`: replay a golden set against the live pair and router, and act on it.

Per run (one monitor_runs row, id = run id):
- output drift per model: exact-match rate vs the recorded output, mean difflib similarity ratio,
  relative change of the mean length in words;
- quality on the labels for weak, strong and routed answers (routerops.monitoring.quality), label coverage;
- PGR at the live alpha with the live router (`champion`); without a champion every prompt goes to
  strong (PGR 1 by definition) and the run says so (`router: null`, `routing: "all-strong"`);
  PGR is null, with `pgr_null_reason`, when strong is not better than weak on the replay (no gap to
  recover) or nothing is labelled: it is then never alerted on (routerops.monitoring.alerts);
- baseline PGR: the same router at the same alpha on the RECORDED outputs and labels, i.e. what PGR
  would be had nothing drifted. A drop below it by more than `pgr_tolerance` is a regression;
- per category of the golden set (routerops.monitoring.categories): quality, PGR, baseline and strong share,
  for categories with at least `category_min_traces` labelled traces; a category whose PGR drops
  below its baseline by more than `pgr_tolerance` is a category regression (one alert per category);
- distribution drift (Evidently, routerops.monitoring.drift) of router scores and output statistics;
then alerts (routerops.monitoring.alerts), alpha recalibration (routerops.monitoring.recalibrate; skipped, with the reason
in the metrics' `recalibration_skipped`, while PGR is null), an Evidently snapshot
(routerops.monitoring.dashboards) and an MLflow run with figures (routerops.monitoring.reporting).
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from routerops import metrics
from routerops.alpha import live_alpha
from routerops.backends.base import BackendError, GenerationParams
from routerops.backends.factory import make_fleet_backend, make_pair
from routerops.checkpoint import checkpoint
from routerops.db import session_scope
from routerops.db.models import MonitorRun
from routerops.fleet import Fleet, pair_fleet
from routerops.jsonsafe import json_safe
from routerops.monitoring import alerts as alerts_mod
from routerops.monitoring import per_model
from routerops.monitoring.categories import per_category
from routerops.monitoring.dashboards import add_run_snapshots
from routerops.monitoring.drift import DriftResult, drift_report, output_stats
from routerops.monitoring.golden import GoldenTrace, load_golden, score_prompts
from routerops.monitoring.live_router import load_live_router
from routerops.monitoring.quality import Judge, gold_match
from routerops.monitoring.recalibrate import recalibrate
from routerops.monitoring.reporting import log_monitor_run
from routerops.owner import owner, owner_gone
from routerops.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class TraceResult:
    trace: GoldenTrace
    weak_text: str | None = None
    strong_text: str | None = None
    weak_model: str | None = None
    strong_model: str | None = None
    error: str | None = None
    q_weak_ref: float | None = None
    q_strong_ref: float | None = None
    q_weak: float | None = None
    q_strong: float | None = None


@dataclass
class MonitorResult:
    run_id: str
    status: str
    n_traces: int
    pgr: float | None
    baseline_pgr: float | None
    strong_share: float | None
    alpha: float
    drift_detected: bool
    drift_share: float | None
    regression: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    alerts_opened: list[int] = field(default_factory=list)
    recalibration: dict[str, Any] | None = None
    wall_s: float = 0.0
    pgr_null_reason: str | None = None  # why pgr is None (no quality gap, no labels)
    baseline_pgr_null_reason: str | None = None


def golden_key(path: Path) -> str:
    resolved = str(path.resolve())
    return f"{path.name}:{hashlib.sha1(resolved.encode()).hexdigest()[:8]}"


def _similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b, autojunk=True).ratio()


def _label_quality(trace: GoldenTrace, weak_text: str, strong_text: str, weak_model: str, strong_model: str,
                   judge: Judge | None) -> tuple[float | None, float | None]:
    label = trace.label
    if label.gold_answer is not None:
        return gold_match(weak_text, label.gold_answer), gold_match(strong_text, label.gold_answer)
    if weak_text == trace.weak.output and strong_text == trace.strong.output:
        p = label.p_weak_wins
    elif judge is not None:
        p = judge.p_weak_wins(trace.prompt, weak_model, weak_text, strong_model, strong_text)
    else:
        p = None
    return (None, None) if p is None else (float(p), 1.0 - float(p))


def spread_sample(traces: list[GoldenTrace], limit: int | None) -> list[GoldenTrace]:
    """At most `limit` traces, taken in turn from each category (file order within one), so a short
    replay still covers every category it can."""
    if limit is None or limit >= len(traces):
        return traces
    by_cat: dict[str | None, list[GoldenTrace]] = {}
    for t in traces:
        by_cat.setdefault(t.category, []).append(t)
    queues, chosen = [list(v) for v in by_cat.values()], []
    while len(chosen) < limit:
        for q in queues:
            if q and len(chosen) < limit:
                chosen.append(q.pop(0))
    keep = {id(t) for t in chosen}
    return [t for t in traces if id(t) in keep]


def eta_line(done: int, total: int, elapsed: float, trace_s: float, trace_id: str) -> str:
    """One progress line per replayed trace (terminal and scheduler log alike)."""
    left = (total - done) * elapsed / done
    return (f"replayed {done}/{total} ({trace_id}: {trace_s:.1f} s, both models); {elapsed:.0f} s so far, "
            f"ETA {left:.0f} s ({elapsed / done:.1f} s per trace)")


def replay_traces(traces: list[GoldenTrace], weak, strong, judge: Judge | None = None,  # noqa: ANN001
                  progress: bool = True) -> list[TraceResult]:
    results = []
    started = time.perf_counter()
    for t in traces:
        t_trace = time.perf_counter()
        r = TraceResult(t)
        r.q_weak_ref, r.q_strong_ref = _label_quality(t, t.weak.output, t.strong.output, t.weak.model,
                                                      t.strong.model, None)
        params = GenerationParams(max_new_tokens=t.decoding.max_new_tokens, temperature=t.decoding.temperature,
                                  top_p=t.decoding.top_p, seed=t.seed)
        messages = [{"role": "user", "content": t.prompt}]
        try:
            w = weak.generate(messages, params)
            s = strong.generate(messages, params)
        except BackendError as exc:  # one trace the pair cannot answer is reported, not fatal
            r.error = str(exc)
        else:
            r.weak_text, r.strong_text, r.weak_model, r.strong_model = w.text, s.text, w.model, s.model
            r.q_weak, r.q_strong = _label_quality(t, w.text, s.text, w.model, s.model, judge)
        results.append(r)
        line = eta_line(len(results), len(traces), time.perf_counter() - started, time.perf_counter() - t_trace,
                        t.trace_id)
        if progress:
            print(line, flush=True)
        else:
            log.info(line)
    return results


def _output_drift(ok: list[TraceResult], which: str) -> dict[str, float]:
    rec = [getattr(r.trace, which).output for r in ok]
    now = [getattr(r, f"{which}_text") for r in ok]
    rec_words = np.mean([output_stats(x)[0] for x in rec])
    now_words = np.mean([output_stats(x)[0] for x in now])
    return {
        "exact_match_rate": float(np.mean([a == b for a, b in zip(rec, now, strict=True)])),
        "similarity": float(np.mean([_similarity(a, b) for a, b in zip(rec, now, strict=True)])),
        "length_change": float(now_words / rec_words - 1.0) if rec_words > 0 else 0.0,
        "mean_words_recorded": float(rec_words),
        "mean_words_now": float(now_words),
    }


def _pgr_or_none(scores: np.ndarray, wq: np.ndarray, sq: np.ndarray,
                 alpha: float) -> tuple[float | None, float, float, str | None]:
    """(PGR or None, strong share, routed quality, why PGR is None)."""
    q_router, share = metrics.routed_quality(scores, wq, sq, alpha)
    try:
        return metrics.pgr(q_router, float(wq.mean()), float(sq.mean())), share, q_router, None
    except metrics.NoQualityGap as exc:
        return None, share, q_router, str(exc)


def _frames(ok: list[TraceResult], scores: np.ndarray, compare_scores: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    ref_rows, cur_rows = [], []
    for r, score in zip(ok, scores, strict=True):
        ww, wl = output_stats(r.trace.weak.output)
        sw, sl = output_stats(r.trace.strong.output)
        ref_rows.append({"weak_words": ww, "weak_lines": wl, "strong_words": sw, "strong_lines": sl,
                         **({"router_score": r.trace.router_score} if compare_scores else {})})
        ww, wl = output_stats(r.weak_text or "")
        sw, sl = output_stats(r.strong_text or "")
        cur_rows.append({"weak_words": ww, "weak_lines": wl, "strong_words": sw, "strong_lines": sl,
                         **({"router_score": float(score)} if compare_scores else {})})
    ref, cur = pd.DataFrame(ref_rows).astype(float), pd.DataFrame(cur_rows).astype(float)
    # A column constant and equal on both sides carries no drift information (and K-S is undefined).
    keep = [c for c in ref.columns if not (ref[c].nunique() == 1 and cur[c].nunique() == 1
                                           and ref[c].iloc[0] == cur[c].iloc[0])]
    return ref[keep], cur[keep]


@dataclass
class Replayed:
    """What the replay step gives the measurement: the traces that replayed, their router scores."""

    ok: list[TraceResult]
    failed: list[TraceResult]
    scores: np.ndarray
    routing: str  # "router" | "all-strong" (no champion)
    live_version: str | None
    compare_scores: bool  # the recorded router scores are the live version's: drift compares them


@dataclass
class Measured:
    m: dict[str, Any]  # every figure of the run (the MonitorRun row's metrics)
    pgr: float | None
    baseline: float | None
    share: float
    pgr_reason: str | None
    baseline_reason: str | None
    labelled: list[int]  # indices into Replayed.ok with current labels
    categories: list
    drift: DriftResult


def _start_run(settings: Settings, path: Path, traces: list, weak, strong, router) -> tuple[str, float]:  # noqa: ANN001
    """The "running" row (a process killed midway leaves only it); returns (run id, live alpha)."""
    with session_scope(settings) as s:
        mark_interrupted(s)
        alpha = live_alpha(s, settings, router if hasattr(router, "alpha_for_share") else None).alpha
        row = MonitorRun(golden_set=str(path), n_traces=len(traces), weak_model=getattr(weak, "name", None),
                         strong_model=getattr(strong, "name", None), alpha=alpha,
                         router_version=getattr(router, "version", None), metrics={"owner": owner()})
        s.add(row)
        s.flush()
        return row.id, alpha


def replay(settings: Settings, traces: list, weak, strong, router, judge: Judge | None,  # noqa: ANN001
           progress: bool) -> Replayed:
    """Both live models answer every trace; the live router scores the prompts."""
    results = replay_traces(traces, weak, strong, judge, progress)
    ok = [r for r in results if r.error is None]
    failed = [r for r in results if r.error is not None]
    if not ok:
        raise RuntimeError(f"no trace could be replayed; first error: {failed[0].error if failed else '-'}")
    if router is not None:
        scores, routing = score_prompts(router, [r.trace.prompt for r in ok], settings), "router"
    else:
        scores, routing = np.ones(len(ok)), "all-strong"  # no champion: everything goes to strong
    live_version = getattr(router, "version", None)
    compare_scores = router is not None and all(
        r.trace.router_score is not None and r.trace.router_version == live_version for r in ok)
    return Replayed(ok, failed, scores, routing, live_version, compare_scores)


def measure(settings: Settings, path: Path, run_id: str, alpha: float, rep: Replayed) -> Measured:
    """PGR now and on the recorded outputs (the baseline), per category, output and score drift."""
    ok, scores = rep.ok, rep.scores
    labelled = [i for i, r in enumerate(ok) if r.q_weak is not None]
    ref_labelled = [i for i, r in enumerate(ok) if r.q_weak_ref is not None]
    m: dict[str, Any] = {
        "routing": rep.routing, "router_version": rep.live_version, "alpha": alpha,
        "n_replayed": len(ok), "n_failed": len(rep.failed), "failures": [r.error for r in rep.failed[:5]],
        "label_coverage": len(labelled) / len(ok), "pgr_tolerance": settings.pgr_tolerance,
        "output_drift": {"weak": _output_drift(ok, "weak"), "strong": _output_drift(ok, "strong")},
        "models_now": {"weak": sorted({r.weak_model for r in ok}), "strong": sorted({r.strong_model for r in ok})},
        "baseline_definition": "PGR of the live router at the live alpha on the recorded outputs and labels",
    }
    pgr_now = baseline = None
    pgr_reason = baseline_reason = "no labelled traces"
    if labelled:
        idx = np.asarray(labelled)
        wq = np.asarray([ok[i].q_weak for i in idx])
        sq = np.asarray([ok[i].q_strong for i in idx])
        pgr_now, share, q_router, pgr_reason = _pgr_or_none(scores[idx], wq, sq, alpha)
        m["quality"] = {"weak": float(wq.mean()), "strong": float(sq.mean()), "routed": q_router}
    else:
        share = float((scores >= alpha).mean())
    if ref_labelled:
        ridx = np.asarray(ref_labelled)
        rwq = np.asarray([ok[i].q_weak_ref for i in ridx])
        rsq = np.asarray([ok[i].q_strong_ref for i in ridx])
        baseline, _, rq, baseline_reason = _pgr_or_none(scores[ridx], rwq, rsq, alpha)
        m["quality_recorded"] = {"weak": float(rwq.mean()), "strong": float(rsq.mean()), "routed": rq}
    m["strong_share"] = share
    cats = per_category([r.trace.category for r in ok], scores, [r.q_weak for r in ok], [r.q_strong for r in ok],
                        [r.q_weak_ref for r in ok], [r.q_strong_ref for r in ok], alpha,
                        settings.category_min_traces)
    m["categories"] = {"min_traces": settings.category_min_traces, "rows": [c.to_dict() for c in cats]}
    m["pgr"], m["baseline_pgr"] = pgr_now, baseline
    # null PGR carries its reason everywhere it is reported (output, row, MLflow, gauges, dashboard)
    m["pgr_null_reason"], m["baseline_pgr_null_reason"] = pgr_reason, baseline_reason
    if pgr_reason:
        log.warning("PGR is null on %s: %s", path.name, pgr_reason)
    ref_df, cur_df = _frames(ok, scores, rep.compare_scores)
    if ref_df.shape[1] > 0:
        drift = drift_report(ref_df, cur_df, timestamp=datetime.now(UTC).replace(tzinfo=None), tags=["drift"],
                             metadata={"monitor_run_id": run_id, "router_version": str(rep.live_version)})
    else:  # every statistic constant and unchanged on both sides: nothing drifted
        drift = DriftResult(False, 0.0, [], {}, True)
    m["drift"] = drift.to_dict()
    m["router_score_compared"] = rep.compare_scores
    return Measured(m, pgr_now, baseline, share, pgr_reason, baseline_reason, labelled, cats, drift)


def _conditions(settings: Settings, path: Path, run_id: str, alpha: float, meas: Measured) -> tuple[Any, list]:
    """The alert conditions this run judges: (the PGR regression, all of them: it, per-category
    regressions, drift)."""
    key = golden_key(path)
    pgr_cond = alerts_mod.pgr_regression_condition(
        f"pgr_regression:{key}", meas.pgr, meas.baseline, settings.pgr_tolerance, alpha=alpha,
        golden_name=path.name, payload={"run_id": run_id, "pgr": meas.pgr, "baseline_pgr": meas.baseline,
                                        "alpha": alpha, "golden_set": str(path)})
    cat_conds = alerts_mod.category_conditions(key, meas.categories, settings.pgr_tolerance, alpha=alpha,
                                               golden_name=path.name, min_traces=settings.category_min_traces,
                                               run_id=run_id)
    meas.m["category_regressions"] = [c.payload["category"] for c in cat_conds if c.active]
    drift = meas.drift
    return pgr_cond, [pgr_cond, *cat_conds, alerts_mod.Condition(
        "drift", f"drift:{key}", drift.drift_detected,
        message=f"drift in {', '.join(drift.drifted_columns)} on {path.name}" if drift.drift_detected else "",
        payload={"run_id": run_id, "drifted_columns": drift.drifted_columns, "drift_share": drift.drift_share,
                 "golden_set": str(path)})]


def act(settings: Settings, path: Path, run_id: str, alpha: float, rep: Replayed, meas: Measured, router,  # noqa: ANN001
        recalibrate_alpha: bool, t0: float) -> MonitorResult:
    """One transaction records the outcome: the alerts, the recalibrated alpha and the row's figures
    with status ok. A process killed before its commit leaves none of them, only the "running" row,
    which the next run marks interrupted."""
    m, ok = meas.m, rep.ok
    pgr_cond, conditions = _conditions(settings, path, run_id, alpha, meas)
    with session_scope(settings) as s:
        opened_ids = [a.id for a in alerts_mod.process_conditions(s, settings, conditions, monitor_run_id=run_id)]
        recal = None
        if recalibrate_alpha and meas.pgr is None:
            # No defined PGR (no quality gap on the replay, or no labels): the labels cannot tell a
            # better alpha from a worse one, so the live alpha stays as it is.
            m["recalibration_skipped"] = f"PGR is null: {meas.pgr_reason}"
            log.warning("alpha recalibration skipped: PGR is null (%s)", meas.pgr_reason)
        elif recalibrate_alpha:
            idx = np.asarray(meas.labelled)
            recal = recalibrate(s, settings, scores=rep.scores[idx], weak_q=np.asarray([ok[i].q_weak for i in idx]),
                                strong_q=np.asarray([ok[i].q_strong for i in idx]), router_version=rep.live_version,
                                monitor_run_id=run_id,
                                router=router if hasattr(router, "alpha_for_share") else None).to_dict()
        m["recalibration"], m["alerts_opened"] = recal, opened_ids
        m["wall_s"] = time.perf_counter() - t0
        row = s.get(MonitorRun, run_id)
        row.status, row.finished_at = "ok", datetime.now(UTC)
        row.n_traces, row.pgr, row.baseline_pgr, row.strong_share = len(ok), meas.pgr, meas.baseline, meas.share
        row.drift_detected, row.drift_share = meas.drift.drift_detected, meas.drift.drift_share
        row.metrics = json_safe({"owner": owner(), **m})
        checkpoint("monitor-commit")
    regression = bool(pgr_cond.active)
    return MonitorResult(run_id, "ok", len(ok), meas.pgr, meas.baseline, meas.share, alpha, meas.drift.drift_detected,
                         meas.drift.drift_share, regression, m, opened_ids, recal,
                         pgr_null_reason=meas.pgr_reason, baseline_pgr_null_reason=meas.baseline_reason)


def record(settings: Settings, result: MonitorResult, rep: Replayed, drift: DriftResult, *,
           write_dashboards: bool, log_mlflow: bool, t0: float) -> None:
    """After the commit: the Prometheus textfile (it shows only what is stored), the dashboards
    (Evidently) and the MLflow run, then their links on the row. The measurement stands even if a UI
    store fails: the error is kept beside it."""
    m = result.metrics
    # A null PGR is absent from the textfile (no sample, so no rule can fire on it); the *_defined
    # gauges tell "undefined this run" from "no run yet".
    gauges = {"routerops_monitor_pgr_defined": float(result.pgr is not None),
              "routerops_monitor_baseline_pgr_defined": float(result.baseline_pgr is not None),
              "routerops_monitor_strong_share": result.strong_share, "routerops_monitor_alpha": result.alpha,
              "routerops_monitor_drift_share": drift.drift_share}
    if result.pgr is not None:
        gauges["routerops_monitor_pgr"] = result.pgr
    if result.baseline_pgr is not None:
        gauges["routerops_monitor_baseline_pgr"] = result.baseline_pgr
    with session_scope(settings) as s:
        alerts_mod.write_textfile(s, settings, gauges)
    if write_dashboards:
        try:
            m["evidently"] = add_run_snapshots(settings, result, drift)
        except Exception as exc:  # noqa: BLE001
            log.exception("writing Evidently snapshots failed")
            m["evidently_error"] = f"{type(exc).__name__}: {exc}"
    if log_mlflow:
        try:
            m["mlflow_run_id"] = log_monitor_run(settings, result, rep.ok, rep.scores)
        except Exception as exc:  # noqa: BLE001
            log.exception("logging the monitor run to MLflow failed")
            m["mlflow_error"] = f"{type(exc).__name__}: {exc}"
    result.wall_s = time.perf_counter() - t0
    m["wall_s"] = result.wall_s
    with session_scope(settings) as s:
        row = s.get(MonitorRun, result.run_id)
        row.metrics = json_safe({"owner": owner(), **m})


def _pair(settings: Settings, fleet: Fleet | None, weak, strong, backends: dict[str, Any]) -> tuple[Any, Any]:  # noqa: ANN001
    """The pair the PGR is measured on: given, else the fleet file's weak/strong, else the settings'."""
    if weak is not None and strong is not None:
        return weak, strong
    if fleet is not None:
        return (weak or backends.get(fleet.weak) or make_fleet_backend(settings, fleet[fleet.weak]),
                strong or backends.get(fleet.strong) or make_fleet_backend(settings, fleet[fleet.strong]))
    pair = make_pair(settings)
    return (weak or pair.weak), (strong or pair.strong)


def measure_models(settings: Settings, fleet: Fleet, traces: list[GoldenTrace], rep: Replayed,
                   extra: dict[str, Any], judge: Judge | None, progress: bool) -> dict[str, Any]:
    """Per model (routerops.monitoring.per_model): golden quality of the pair (from the replay) and of the
    other monitored fleet models (each answers every trace), and the live figures of the window."""
    errors = [r.error or "" for r in rep.failed]
    golden = {fleet.strong: per_model.golden_figures([r.q_strong for r in rep.ok] + [None] * len(errors), errors),
              fleet.weak: per_model.golden_figures([r.q_weak for r in rep.ok] + [None] * len(errors), errors)}
    for name, res in per_model.replay_models(traces, extra, judge, progress).items():
        golden[name] = per_model.golden_figures(res.quality, res.errors)
        golden[name]["exact_match_rate"] = float(np.mean(res.exact_match)) if res.exact_match else None
    golden = {n: golden[n] for n in [fleet.weak, fleet.strong, *extra]}  # fleet order: the pair first
    return per_model.model_rows(settings, fleet, golden)


def run_monitor(settings: Settings, golden: Path | str | None = None, *, weak=None, strong=None,  # noqa: ANN001
                router: Any = "live", judge: Judge | None = None, recalibrate_alpha: bool = True,
                write_dashboards: bool = True, log_mlflow: bool = True, progress: bool = True,
                limit: int | None = None, models: Sequence[str] | None = None,
                backends: dict[str, Any] | None = None) -> MonitorResult:
    """Replay -> measure -> act (alerts, alpha) -> record (dashboards, MLflow). `weak`/`strong` default
    to the fleet file's pair, else the configured pair; `router="live"` loads the champion (None: no
    router, all-strong routing). `models` (default ROUTEROPS_MONITOR_MODELS, else the whole fleet) are
    the fleet models whose golden quality is measured besides the pair; `backends` replaces fleet
    models' backends by name."""
    t0 = time.perf_counter()
    path = Path(golden or settings.golden_set)
    traces = spread_sample(load_golden(path), limit)
    settings, fleet_file = per_model.configured_fleet(settings)
    weak, strong = _pair(settings, fleet_file, weak, strong, backends or {})
    # without a fleet file the pair is a fleet of two, under its backends' names
    fleet = fleet_file or pair_fleet(settings, getattr(weak, "name", None) or "weak",
                                     getattr(strong, "name", None) or "strong")
    names = per_model.monitored_models(fleet, models or settings.monitor_models)
    extra = per_model.extra_backends(settings, fleet_file, names, backends)
    if isinstance(router, str) and router == "live":
        router = load_live_router(settings)
    run_id, alpha = _start_run(settings, path, traces, weak, strong, router)
    try:
        rep = replay(settings, traces, weak, strong, router, judge, progress)
        meas = measure(settings, path, run_id, alpha, rep)
        meas.m["models"] = measure_models(settings, fleet, traces, rep, extra, judge, progress)
        result = act(settings, path, run_id, alpha, rep, meas, router, recalibrate_alpha, t0)
    except Exception as exc:
        with session_scope(settings) as s:
            row = s.get(MonitorRun, run_id)
            row.status, row.finished_at, row.error = "failed", datetime.now(UTC), f"{type(exc).__name__}: {exc}"
        raise
    try:
        record(settings, result, rep, meas.drift, write_dashboards=write_dashboards, log_mlflow=log_mlflow, t0=t0)
    except Exception:  # the run's outcome is stored; only a follow-up (links) failed
        log.exception("monitor run %s recorded; a follow-up step failed", run_id)
        raise
    return result


def mark_interrupted(session) -> list[str]:  # noqa: ANN001 - a SQLAlchemy Session
    """Mark "running" rows whose process is gone (killed midway) as interrupted; returns their ids.
    Such a run committed nothing but its row (see run_monitor's final transaction)."""

    marked = []
    for row in session.scalars(select(MonitorRun).where(MonitorRun.status == "running")):
        who = (row.metrics or {}).get("owner")
        if owner_gone(who, row.started_at):
            row.status, row.finished_at = "interrupted", datetime.now(UTC)
            row.error = (f"the run's process ({who or 'unknown'}) ended before the run finished; "
                         "nothing it measured was recorded")
            marked.append(row.id)
            log.warning("monitor run %s was interrupted (process %s gone): marked interrupted", row.id, who)
    return marked

