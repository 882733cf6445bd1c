"""CLI groups: `routerops golden record`, `routerops monitor run`, `routerops alpha show|set|approve|history`."""

from __future__ import annotations

import getpass
import json
import os
from pathlib import Path

import click
from sqlalchemy import select

from routerops.alpha import approve_alpha, live_alpha, propose_alpha
from routerops.backends.factory import make_pair
from routerops.console_scripts import console_script
from routerops.db import session_scope
from routerops.db.models import AlphaChange
from routerops.fleet import FleetError
from routerops.jsonsafe import json_safe
from routerops.model_names import UnknownModelError
from routerops.monitoring import golden as g
from routerops.monitoring import per_model
from routerops.monitoring.categories import CategoryFigures, table
from routerops.monitoring.dashboards import ensure_project
from routerops.monitoring.golden import GoldenFormatError
from routerops.monitoring.live_drift import run_live_drift
from routerops.monitoring.live_router import load_live_router
from routerops.monitoring.quality import monitor_judge
from routerops.monitoring.replay import run_monitor
from routerops.settings import get_settings


def _settings():  # noqa: ANN202
    return get_settings()


# --- golden ------------------------------------------------------------------------------------
@click.group()
def golden() -> None:
    """Golden traces: fixed prompts, decoding and seeds with recorded answers and labels."""


@golden.command("record")
@click.option("--output", "output", type=click.Path(path_type=Path), required=True, help="Golden JSONL to write.")
@click.option("--prompts", "prompts_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Source prompts JSONL (trace_id, category, prompt, gold_answer[, max_new_tokens]).")
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=None, help="Default: settings.max_new_tokens.")
@click.option("--seed", "base_seed", type=int, default=1234, show_default=True, help="Trace i uses seed + i.")
@click.option("--no-router", is_flag=True, help="Do not record router scores (even if a champion exists).")
@click.option("--from-alpaca-eval", is_flag=True, help="Record from AlpacaEval model outputs and judge labels.")
@click.option("--weak-outputs", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--strong-outputs", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--annotations", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="AlpacaEval annotation files (repeatable; the first with a label for a prompt wins).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Keep the first N prompts.")
def golden_record(output: Path, prompts_path: Path | None, max_new_tokens: int | None, base_seed: int, no_router: bool,
                  from_alpaca_eval: bool, weak_outputs: Path | None, strong_outputs: Path | None,
                  annotations: tuple[Path, ...], limit: int | None) -> None:
    """Record a golden set against the configured pair (or from AlpacaEval recordings)."""

    settings = _settings()
    router = None if no_router else load_live_router(settings)
    if router is None:
        click.echo("no champion router (or --no-router): router_score is recorded as null")
    if from_alpaca_eval:
        if not (weak_outputs and strong_outputs and annotations):
            raise click.UsageError("--from-alpaca-eval needs --weak-outputs, --strong-outputs and --annotations")
        try:
            traces = g.record_from_alpaca_eval(weak_outputs, strong_outputs, annotations, settings=settings,
                                               router=router, limit=limit)
        except g.GoldenFormatError as exc:
            raise click.ClickException(str(exc)) from None
        except UnknownModelError as exc:  # the router cannot score the configured pair
            raise click.ClickException(f"{exc}; set ROUTEROPS_ROUTER_WEAK_NAME / ROUTEROPS_ROUTER_STRONG_NAME "
                                       "to the router's names of the pair, or pass --no-router") from None
    else:
        if prompts_path is None:
            raise click.UsageError("give --prompts FILE (or --from-alpaca-eval ...)")
        prompts, problems = g.load_prompts(prompts_path)
        for p in problems:
            click.echo(f"skipped {prompts_path}: {p}", err=True)
        if not prompts:
            raise click.ClickException(f"{prompts_path}: no valid prompt")
        prompts = prompts[:limit] if limit else prompts

        pair = make_pair(settings)
        decoding = g.Decoding(max_new_tokens=max_new_tokens or settings.max_new_tokens)
        traces = g.record_with_pair(prompts, pair.weak, pair.strong, settings=settings, router=router,
                                    decoding=decoding, base_seed=base_seed)
    n = g.write_golden(output, traces)
    click.echo(f"wrote {n} traces to {output}")
    gap = g.recorded_quality_gap(traces)
    if gap.problem is not None:  # every replay of this set would report PGR null
        qs = "" if gap.q_weak is None else f" (recorded quality: weak {gap.q_weak:.3f}, strong {gap.q_strong:.3f})"
        click.echo(f"WARNING: no quality gap on this golden set{qs}: {gap.problem}. The monitor will report "
                   "PGR as null on it; record prompts where the strong model beats the weak one.", err=True)


# --- monitor -----------------------------------------------------------------------------------
@click.group()
def monitor() -> None:
    """Replay golden traces against the live pair and router; drift, PGR, alerts, alpha."""


@monitor.command("run")
@click.option("--golden", "golden_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Golden set (default: settings.golden_set).")
@click.option("--judge-annotations", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="AlpacaEval annotation files that label changed answers of judged traces.")
@click.option("--no-recalibrate", is_flag=True, help="Measure only; do not propose a new alpha.")
@click.option("--no-dashboards", is_flag=True, help="Skip Evidently snapshots and the MLflow run.")
@click.option("--json", "as_json", is_flag=True, help="Print the full metrics as JSON.")
@click.option("--limit", type=click.IntRange(1), default=None,
              help="Replay at most N traces, spread over the categories (a quick look: each trace runs both "
                   "models, ~10-30 s on a CPU).")
@click.option("--models", "models", default=None,
              help="Comma-separated fleet models whose golden quality is measured besides the weak and strong "
                   "models (default: ROUTEROPS_MONITOR_MODELS, else every fleet model).")
@click.option("--live-judge/--no-live-judge", default=None,
              help="Ask the configured judge (ROUTEROPS_JUDGE_BASE_URL / _MODEL) about answers no recorded label "
                   "covers: changed answers and fleet models' own answers (default: ROUTEROPS_MONITOR_LIVE_JUDGE).")
def monitor_run(golden_path: Path | None, judge_annotations: tuple[Path, ...], no_recalibrate: bool,
                no_dashboards: bool, as_json: bool, limit: int | None, models: str | None,
                live_judge: bool | None) -> None:
    """Replay the golden set once and record the run (monitor_runs)."""

    settings = _settings()
    try:
        judge = monitor_judge(settings, judge_annotations, live_judge)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    names = [n.strip() for n in models.split(",") if n.strip()] if models else None
    try:
        r = run_monitor(settings, golden_path, judge=judge, recalibrate_alpha=not no_recalibrate,
                        write_dashboards=not no_dashboards, log_mlflow=not no_dashboards, limit=limit,
                        progress=not as_json, models=names)
    except (GoldenFormatError, FileNotFoundError, FleetError, per_model.UnknownMonitorModel) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(json_safe(r.metrics), indent=2))
        return
    m = r.metrics
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    click.echo(f"monitor run {r.run_id}: {r.n_traces} traces in {r.wall_s:.1f} s; routing: {m['routing']}"
               + ("" if m["router_version"] else " (no champion router: all calls to strong)"))
    pgr_fmt = lambda v: "null" if v is None else f"{v:.3f}"  # noqa: E731
    click.echo(f"  PGR at alpha {r.alpha:.3f}: {pgr_fmt(r.pgr)} (baseline {pgr_fmt(r.baseline_pgr)}), "
               f"strong share {fmt(r.strong_share)}, label coverage {m['label_coverage']:.2f}")
    if r.pgr_null_reason:
        click.echo(f"  PGR null: {r.pgr_null_reason} (not alerted on)")
    if r.baseline_pgr_null_reason and r.baseline_pgr_null_reason != r.pgr_null_reason:
        click.echo(f"  baseline PGR null: {r.baseline_pgr_null_reason} (not alerted on)")
    if "quality" in m:
        q = m["quality"]
        click.echo(f"  quality: weak {q['weak']:.3f}, strong {q['strong']:.3f}, routed {q['routed']:.3f}")
    cats = m.get("categories")
    if cats and cats["rows"]:
        for line in table([CategoryFigures(**row) for row in cats["rows"]], cats["min_traces"]):
            click.echo(f"  {line}")
    for role in ("weak", "strong"):
        od = m["output_drift"][role]
        click.echo(f"  {role} output vs recorded: exact {od['exact_match_rate']:.2f}, similarity "
                   f"{od['similarity']:.2f}, length change {od['length_change']:+.1%}")
    d = m["drift"]
    click.echo(f"  drift: {'YES' if d['drift_detected'] else 'no'} (share {d['drift_share']:.2f}"
               + (f"; {', '.join(d['drifted_columns'])}" if d["drifted_columns"] else "") + ")")
    if m.get("category_regressions"):
        click.echo(f"  category regression (PGR below baseline by > {m['pgr_tolerance']}): "
                   f"{', '.join(m['category_regressions'])}")
    if m.get("recalibration_skipped"):
        click.echo(f"  alpha not recalibrated: {m['recalibration_skipped']}")
    rec = m.get("recalibration") or {}
    if rec.get("change_id"):
        click.echo(f"  alpha {rec['live']:.4f} -> {rec['recommended']:.4f}: {rec['status']} (change {rec['change_id']})")
    if m.get("models"):
        for line in per_model.table(m["models"]):
            click.echo(f"  {line}")
    if r.alerts_opened:
        click.echo(f"  ALERTS opened: {r.alerts_opened}")


@monitor.command("live")
@click.option("--no-dashboards", is_flag=True, help="Skip the Evidently snapshots.")
@click.option("--json", "as_json", is_flag=True, help="Print the full metrics as JSON.")
def monitor_live(no_dashboards: bool, as_json: bool) -> None:
    """Live traffic vs the live router's training reference: drift and strong-call share."""

    settings = _settings()
    r = run_live_drift(settings, write_dashboards=not no_dashboards)
    if as_json:
        click.echo(json.dumps(json_safe({"run_id": r.run_id, "status": r.status, **r.metrics}), indent=2))
        return
    if r.status == "skipped":
        click.echo(f"live drift run {r.run_id}: skipped: {r.reason}")
        return
    m = r.metrics
    d = m["drift"]
    click.echo(f"live drift run {r.run_id}: {r.n_requests} scored requests of router version {r.router_version} "
               f"in the last {m['window_hours']:g} h ({m['n_with_prompt']} with a stored prompt), "
               f"reference {m['n_reference']} prompts")
    click.echo(f"  strong share {r.strong_share:.3f} (expected {r.expected_strong_share:.3f} on the reference at "
               f"the same alphas; tolerance {m['strong_share_tolerance']:.2f})")
    click.echo(f"  drift: {'YES' if r.drift_detected else 'no'} (share {d['drift_share']:.2f}, threshold "
               f"{m['drift_share_threshold']:.2f}" + (f"; {', '.join(d['drifted_columns'])}" if d["drifted_columns"] else "")
               + ")")
    score = d["columns"].get("router_score", {})
    if score:
        click.echo(f"  router score: {score.get('method')} {score.get('score'):.4f} (threshold {score.get('threshold')})")
    if r.alerts_opened:
        click.echo(f"  ALERTS opened: {r.alerts_opened}")


@monitor.command("ui")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8001, show_default=True)
def monitor_ui(host: str, port: int) -> None:
    """Run the Evidently UI on the workspace, after creating the project it must watch."""

    settings = _settings()
    project_id = ensure_project(settings)
    click.echo(f"Evidently project {project_id} in {settings.resolved_evidently_workspace}", err=True)
    evidently = console_script("evidently")
    # exec: the UI becomes this process, so signals from `routerops up` or compose reach it directly
    os.execv(evidently, [evidently, "ui", "--workspace", str(settings.resolved_evidently_workspace),
                         "--host", host, "--port", str(port)])


# --- alpha -------------------------------------------------------------------------------------
@click.group()
def alpha() -> None:
    """The live routing threshold: show, set, approve pending changes, history."""


@alpha.command("show")
def alpha_show() -> None:
    settings = _settings()
    try:  # the champion's calibration can be the live alpha
        router = load_live_router(settings)
    except Exception as exc:  # noqa: BLE001 - MLflow unreachable: show what the database says
        click.echo(f"(champion router not loaded: {type(exc).__name__}: {exc})", err=True)
        router = None
    with session_scope(settings) as s:
        la = live_alpha(s, settings, router)
    click.echo(f"alpha {la.alpha:.4f} (source: {la.source}{f', change {la.change_id}' if la.change_id else ''}; "
               f"{la.reason})")


@alpha.command("set")
@click.argument("value", type=click.FloatRange(0.0, 1.0))
@click.option("--reason", required=True, help="Why (recorded in alpha_history).")
@click.option("--force", is_flag=True, help="Apply even beyond the step bound (a person's decision).")
def alpha_set(value: float, reason: str, force: bool) -> None:
    """Propose VALUE: active at once within ROUTEROPS_ALPHA_MAX_STEP of the live alpha, else pending."""

    settings = _settings()
    who = os.environ.get("ROUTEROPS_USER") or getpass.getuser()
    with session_scope(settings) as s:
        change = propose_alpha(s, settings, value, reason=reason, source="manual", max_step=1.0 if force else None)
        if change.status == "active":
            change.approved_by = who
        cid, status = change.id, change.status
    click.echo(f"alpha change {cid}: {value:.4f} is {status}"
               + (f" (beyond the bound: `routerops alpha approve {cid}`)" if status == "pending" else ""))


@alpha.command("approve")
@click.argument("change_id", type=int)
@click.option("--by", "approved_by", default=None, help="Who approves (default: $ROUTEROPS_USER or login).")
def alpha_approve(change_id: int, approved_by: str | None) -> None:
    """Make a pending alpha change live."""

    settings = _settings()
    who = approved_by or os.environ.get("ROUTEROPS_USER") or getpass.getuser()
    try:
        with session_scope(settings) as s:
            change = approve_alpha(s, change_id, who)
            value = change.alpha
    except (LookupError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"alpha change {change_id} approved by {who}: alpha is now {value:.4f}")


@alpha.command("history")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
def alpha_history(limit: int) -> None:
    settings = _settings()
    with session_scope(settings) as s:
        rows = s.scalars(select(AlphaChange).order_by(AlphaChange.id.desc()).limit(limit)).all()
        for r in rows:
            prev = "-" if r.previous_alpha is None else f"{r.previous_alpha:.4f}"
            click.echo(f"{r.id}\t{r.created_at:%Y-%m-%d %H:%M}\t{prev} -> {r.alpha:.4f}\t{r.status}\t{r.source}\t"
                       f"{r.approved_by or ''}\t{r.reason or ''}")
    if not rows:
        click.echo("no alpha changes yet (the live alpha is ROUTEROPS_ALPHA)")
