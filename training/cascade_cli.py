"""`routerops cascade ...`: calibrate the cascade serving uses, evaluate cascades on RouterBench."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click
import numpy as np

from routerops.db.session import session_scope
from routerops.fleet import FleetError
from routerops.models.cascade_config import CascadeConfig, load_cascade_config, save_cascade_config
from routerops.models.cascade_log import LabelError, label_steps
from routerops.models.embeddings import get_embedder
from routerops.settings import get_settings
from routerops.training.cascade_eval import (
    OutcomeTable,
    format_report,
    run_routerbench_eval,
    score_routerbench,
    search,
    simulate,
)
from routerops.training.cascade_percategory import (
    CalibrationError,
    calibrate_per_category,
    logged_category_data,
    read_category_table,
    restrict_to_fleet,
    routerbench_category_data,
    served_fleet,
)
from routerops.training.cascade_refit import RefitError, load_registered_config, refit_cascade_thresholds

log = logging.getLogger(__name__)


@click.group()
def cascade() -> None:
    """Cascades: generate cheap, score the answer with a probe, escalate when unsure."""


def _split_table(df, train_frac: float, seed: int):  # noqa: ANN001, ANN202
    if "split" in df.columns:
        bad = set(df["split"].astype(str)) - {"train", "test"}
        if bad:
            raise click.ClickException(f"column 'split' may hold only train/test, found {sorted(bad)}")
        return df[df["split"] == "train"], df[df["split"] == "test"]
    rng = np.random.default_rng(seed)
    mask = rng.random(len(df)) < train_frac
    return df[mask], df[~mask]


@cascade.command("calibrate")
@click.option("--table", "table_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV with columns <model>, <model>|total_cost, <model>|score (and optional split=train|test).")
@click.option("--routerbench", "routerbench", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="RouterBench folder: score answers with MiniLM text probes and calibrate on its train split.")
@click.option("--datasets", default="arc_challenge,mbpp,winograde", show_default=True,
              help="RouterBench subsets (with --routerbench).")
@click.option("--models", default=None, help="Comma-separated models to consider (default: all in the table).")
@click.option("--budget", type=float, default=None, help="Max mean cost per query (USD): maximize quality.")
@click.option("--quality-target", type=float, default=None, help="Min quality: minimize cost.")
@click.option("--match", "match_model", default=None, help="Quality target = this model's training accuracy.")
@click.option("--max-length", type=click.IntRange(1, 4), default=3, show_default=True)
@click.option("--grid-size", type=click.IntRange(2, 201), default=21, show_default=True)
@click.option("--probe-uri", default=None, help="Probe serving should score with (stored in the config).")
@click.option("--scorer-uri", default=None,
              help="Ladder-aware cascade scorer serving should use instead (e.g. models:/cascade-scorer@champion).")
@click.option("--explore-rate", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Share of requests that run the whole ladder, so `routerops cascade refit` learns from them.")
@click.option("--train-frac", type=click.FloatRange(0.05, 0.95), default=0.5, show_default=True)
@click.option("--seed", type=int, default=0)
@click.option("--dry-run", is_flag=True, help="Print the result without storing it.")
@click.option("--per-category", is_flag=True,
              help="One ladder and thresholds per category (a 'category' column, RouterBench's datasets or the "
                   "logged categories), chosen jointly, plus the classifier that predicts a request's category.")
@click.option("--from-logs", is_flag=True,
              help="With --per-category: learn from the logged traffic (explored, labelled cascade requests).")
@click.option("--holdout-margin", is_flag=True,
              help="With --per-category and a quality target: raise it by the margin plans chosen on one half "
                   "of train need to keep it on the other half (per-category choices on few rows overfit).")
def calibrate(table_path: Path | None, routerbench: Path | None, datasets: str, models: str | None,
              budget: float | None, quality_target: float | None, match_model: str | None, max_length: int,
              grid_size: int, probe_uri: str | None, scorer_uri: str | None, explore_rate: float, train_frac: float,
              seed: int, dry_run: bool, per_category: bool, from_logs: bool, holdout_margin: bool) -> None:
    """Choose the ladder (order) and thresholds on a training split, report them on a test split, and
    store them for the `cascade` serving strategy."""
    import pandas as pd

    if sum(x is not None and x is not False for x in (table_path, routerbench, from_logs)) != 1:
        raise click.UsageError("give exactly one of --table, --routerbench or --from-logs")
    if from_logs and not per_category:
        raise click.UsageError("--from-logs calibrates per category (add --per-category); the live ladder's "
                               "thresholds are refit from the logs by `routerops cascade refit`")
    if sum(x is not None for x in (budget, quality_target, match_model)) != 1:
        raise click.UsageError("give exactly one of --budget, --quality-target or --match")
    settings = get_settings()
    if per_category:
        _calibrate_per_category(settings, table_path, routerbench, from_logs, datasets, budget, quality_target,
                                match_model, max_length, grid_size, probe_uri, scorer_uri, explore_rate, train_frac,
                                seed, dry_run, holdout_margin)
        return
    wanted = [m.strip() for m in models.split(",")] if models else None
    if table_path is not None:
        df = pd.read_csv(table_path)
        tr_df, te_df = _split_table(df, train_frac, seed)
        try:
            train = OutcomeTable.from_frame(tr_df, wanted)
            test = OutcomeTable.from_frame(te_df, wanted) if len(te_df) else None
        except (ValueError, KeyError) as exc:
            raise click.ClickException(f"{table_path}: {exc}") from None
        source = str(table_path)
    else:
        sets = [d.strip() for d in datasets.split(",") if d.strip()]
        scored = score_routerbench(routerbench, get_embedder(settings), settings.data_dir / "cascade_eval" / "embeddings",
                                   sets)
        train, test = scored.train, scored.test
        if wanted:
            unknown = set(wanted) - set(train.models)
            if unknown:
                raise click.ClickException(f"unknown models {sorted(unknown)}; known: {train.models}")
            train = OutcomeTable(wanted, train.correct, train.cost, train.score)
            test = OutcomeTable(wanted, test.correct, test.cost, test.score)
        source = f"routerbench:{routerbench}:{','.join(sets)}"
    if len(train.correct[train.models[0]]) == 0:
        raise click.ClickException("the training split is empty")
    if match_model is not None:
        if match_model not in train.models:
            raise click.ClickException(f"--match {match_model!r} is not among {train.models}")
        quality_target = float(train.correct[match_model].mean())
    plan = search(train, budget=budget, quality_target=quality_target, max_length=max_length, grid_size=grid_size)
    if plan is None:
        goal = f"mean cost <= {budget}" if budget is not None else f"quality >= {quality_target:.4f}"
        raise click.ClickException(f"no cascade reaches {goal} on the training split")
    expected = {"train_quality": plan.quality, "train_cost": plan.cost}
    if test is not None and test.n:
        expected["test_quality"], expected["test_cost"] = simulate(test, plan.models, plan.thresholds)
    config = CascadeConfig(
        models=list(plan.models), thresholds=list(plan.thresholds), probe_uri=probe_uri, scorer_uri=scorer_uri,
        explore_rate=explore_rate, objective="max_quality_under_budget" if budget is not None else "min_cost_at_quality",
        budget=budget, quality_target=quality_target, expected=expected, source=source)
    click.echo(f"cascade: {plan.describe()}")
    click.echo(json.dumps({k: round(v, 6) for k, v in expected.items()}))
    if dry_run:
        return
    with session_scope(settings) as session:
        save_cascade_config(session, config)
    click.echo("stored as serving_state['cascade']")


def _calibrate_per_category(settings, table_path: Path | None, routerbench: Path | None, from_logs: bool,  # noqa: ANN001
                            datasets: str, budget: float | None, quality_target: float | None,
                            match_model: str | None, max_length: int, grid_size: int, probe_uri: str | None,
                            scorer_uri: str | None, explore_rate: float, train_frac: float, seed: int,
                            dry_run: bool, holdout_margin: bool = False) -> None:
    try:
        if table_path is not None:
            data = read_category_table(table_path, train_frac, seed)
        elif routerbench is not None:
            data = routerbench_category_data(routerbench, [d.strip() for d in datasets.split(",") if d.strip()],
                                             settings)
        else:
            with session_scope(settings) as session:
                data = logged_category_data(session, train_frac, seed)
        if match_model is not None and match_model in data.train.models:  # named as in the outcome table
            quality_target = float(data.train.correct[match_model].mean())
        data, order = restrict_to_fleet(data, served_fleet(settings))
        if match_model is not None and quality_target is None:  # or by its fleet name
            if match_model not in data.train.models:
                raise CalibrationError(f"--match {match_model!r} is not among {data.train.models}")
            quality_target = float(data.train.correct[match_model].mean())
        config = calibrate_per_category(data, order, settings, budget=budget, quality_target=quality_target,
                                        max_length=max_length, grid_size=grid_size, seed=seed,
                                        holdout_margin=holdout_margin, probe_uri=probe_uri,
                                        scorer_uri=scorer_uri, explore_rate=explore_rate)
    except (CalibrationError, FleetError) as exc:
        raise click.ClickException(str(exc)) from None
    for note in data.notes:
        click.echo(f"note: {note}")
    cats = np.asarray(data.train_categories)
    for category, plan in config.plans.items():
        click.echo(f"plan {category} ({int((cats == category).sum())} train rows): {plan.models} thresholds "
                   f"{[round(t, 4) for t in plan.thresholds]} expected "
                   + json.dumps({k: round(v, 6) for k, v in plan.expected.items()}))
    click.echo(f"fallback plan (no category): {config.models} thresholds {[round(t, 4) for t in config.thresholds]}")
    clf = config.classifier
    click.echo("category classifier: " + (f"{clf.classes} on {clf.embedder['name']} ({clf.embedder['dim']}-d), "
                                          f"train accuracy {clf.train_accuracy}" if clf else "none"))
    click.echo(json.dumps({k: round(v, 6) for k, v in config.expected.items()}))
    if dry_run:
        return
    with session_scope(settings) as session:
        save_cascade_config(session, config)
    click.echo(f"stored as serving_state['cascade'] with {len(config.plans)} category plans")


@cascade.command("show")
def show() -> None:
    """Print the stored cascade configuration."""

    with session_scope(get_settings()) as session:
        config = load_cascade_config(session)
    if config is None:
        raise click.ClickException("no cascade calibrated yet (run `routerops cascade calibrate`)")
    click.echo(json.dumps(config.to_dict(), indent=1))


@cascade.command("eval")
@click.option("--routerbench", "routerbench", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--datasets", default="arc_challenge,mbpp,winograde", show_default=True)
@click.option("--no-mlflow", is_flag=True, help="Do not log the run and the Pareto plot to MLflow.")
def eval_command(routerbench: Path, datasets: str, no_mlflow: bool) -> None:
    """Cascade vs single models on RouterBench: cost to match GPT-4, accuracy at budgets, Pareto curve."""

    sets = [d.strip() for d in datasets.split(",") if d.strip()]
    evals, scored, run_id = run_routerbench_eval(routerbench, get_settings(), datasets=sets, log_mlflow=not no_mlflow)
    click.echo(format_report(evals))
    if run_id:
        click.echo(f"MLflow run {run_id} (plot: plots/cascade_pareto.png)")


@cascade.command("refit")
@click.option("--budget", type=float, default=None, help="Max mean cost per query (USD): maximize quality.")
@click.option("--quality-target", type=float, default=None, help="Min quality: minimize cost.")
@click.option("--since-days", type=float, default=None, help="Only steps logged in the last N days.")
@click.option("--min-requests", type=click.IntRange(1), default=50, show_default=True)
@click.option("--include-unexplored", is_flag=True,
              help="Also use requests the cascade escalated to the end on its own (biased towards hard queries).")
def refit(budget: float | None, quality_target: float | None, since_days: float | None, min_requests: int,
          include_unexplored: bool) -> None:
    """Refit the live ladder's thresholds from logged, labelled steps; register the result as
    `cascade-config@challenger` (the live configuration is not changed)."""

    try:
        res = refit_cascade_thresholds(get_settings(), budget=budget, quality_target=quality_target,
                                       since_days=since_days, min_requests=min_requests,
                                       explored_only=not include_unexplored)
    except RefitError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({"version": res.model_version, "n_requests": res.n_requests,
                           "thresholds": res.config.to_dict()["thresholds"], "live_thresholds": res.live_thresholds,
                           "expected": res.config.expected}))
    click.echo(f"registered cascade-config version {res.model_version} as challenger; approve with "
               f"`routerops approve --model cascade-config {res.model_version}`, then `routerops cascade activate`")


@cascade.command("label")
@click.argument("labels", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--source", default="judge", show_default=True, help="Who labelled (stored with each label).")
def label(labels: Path, source: str) -> None:
    """Attach outcomes to logged cascade steps from a JSONL file of {"request_id", "correct" (0..1),
    optional "step" (default: the answer returned), optional "source"}."""

    done, errors = 0, []
    with session_scope(get_settings()) as session:
        for n, line in enumerate(labels.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                label_steps(session, str(row["request_id"]), float(row["correct"]), step=row.get("step"),
                            source=str(row.get("source") or source))
                done += 1
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, LabelError) as exc:
                errors.append(f"line {n}: {exc}")
    click.echo(f"labelled {done} step(s)" + (f"; {len(errors)} rejected:\n  " + "\n  ".join(errors[:20]) if errors else ""))
    if errors and not done:
        raise click.ClickException("no label could be attached")


@cascade.command("activate")
@click.option("--version", "version", default="champion", show_default=True,
              help="Registered cascade-config version (or alias) to make live.")
def activate(version: str) -> None:
    """Make an approved cascade-config version the live configuration (serving_state)."""

    settings = get_settings()
    try:
        config, number = load_registered_config(version, settings)
    except (LookupError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    with session_scope(settings) as session:
        save_cascade_config(session, config)
    click.echo(f"cascade-config version {number} is live: {config.models} thresholds {config.thresholds}")
