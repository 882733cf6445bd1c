"""`routerops router eval` and `routerops router calibrate`: a router's PGR curve on paired outcomes,
and the alpha that gives a wanted strong share (or PGR).

Paired-outcome file (JSONL or CSV, optionally .gz), one prompt per row:
    id, prompt, weak_quality, strong_quality
(quality: 0/1 correctness or any real number; `prompt` is needed only when a router scores it).
A RouterBench CSV (one score column per model) works as is with --strong-column/--weak-column; its id
column is `sample_id` unless --id-column says otherwise.

Scores file (JSONL or CSV), as `routerops router score` writes it: id, p_strong_wins.

Bad rows (no id, a quality or score that is not a number, a duplicated id) are reported and skipped;
prompts without a score are reported and skipped (--strict makes that an error); a missing column
is an error that names it.
"""

from __future__ import annotations

import gzip
import json
import math
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np

from routerops import metrics
from routerops.alpha import propose_alpha
from routerops.db.session import session_scope
from routerops.model_names import UnknownModelError
from routerops.models.router import load_router
from routerops.redact import redact_values
from routerops.registry import configure_mlflow
from routerops.settings import get_settings
from routerops.training.eval_sets import (
    _prompt_text,  # RouterBench stores some prompts as a list of turns
    find_column,
)

CPT_TARGETS = (0.2, 0.5, 0.8)
DEFAULT_THRESHOLDS = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"


# --- reading files ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Skipped:
    where: str  # "line 3" (JSONL) or "row 3" (CSV data row, 1-based)
    id: str | None
    reason: str


def _format(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".csv", ".tsv")):
        return "csv"
    raise click.ClickException(f"{path}: unknown file type (use .jsonl or .csv, optionally .gz)")


def read_records(path: Path) -> tuple[list[str], Iterator[tuple[str, dict[str, Any]]], list[Skipped]]:
    """(columns, (where, record) pairs, unreadable lines) of a JSONL or CSV file."""
    if not path.is_file():
        raise click.ClickException(f"{path} does not exist")
    bad: list[Skipped] = []
    if _format(path) == "csv":
        import pandas as pd

        sep = "\t" if path.name.lower().removesuffix(".gz").endswith(".tsv") else ","
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep)
        except (ValueError, pd.errors.ParserError) as exc:
            raise click.ClickException(f"{path}: cannot parse as CSV: {exc}") from None
        columns = [str(c) for c in df.columns]
        rows = ((f"row {i + 1}", dict(zip(columns, values, strict=True)))
                for i, values in enumerate(df.itertuples(index=False, name=None)))
        return columns, rows, bad
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    records: list[tuple[str, dict[str, Any]]] = []
    seen: dict[str, None] = {}
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                bad.append(Skipped(f"line {lineno}", None, f"not JSON ({exc.msg})"))
                continue
            if not isinstance(obj, dict):
                bad.append(Skipped(f"line {lineno}", None, "not a JSON object"))
                continue
            seen.update(dict.fromkeys(obj))
            records.append((f"line {lineno}", obj))
    return list(seen), iter(records), bad


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        out = float(value)
    elif isinstance(value, str) and value.strip():
        try:
            out = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return out if math.isfinite(out) else None


def _id(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _require(path: Path, columns: list[str], wanted: list[str]) -> None:
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise click.ClickException(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"columns present: {', '.join(columns[:30]) or '(none)'}"
        )


def _drop_duplicates(ids: list[str], where: list[str], skipped: list[Skipped]) -> list[int]:
    """Indices to keep: an id seen twice is ambiguous, so every copy is reported and skipped."""
    counts = Counter(ids)
    keep = []
    for i, ident in enumerate(ids):
        if counts[ident] > 1:
            skipped.append(Skipped(where[i], ident, f"duplicate id ({counts[ident]} rows)"))
        else:
            keep.append(i)
    return keep


@dataclass
class Outcomes:
    ids: list[str]
    prompts: list[str]
    weak_q: np.ndarray
    strong_q: np.ndarray
    weak_name: str | None = None  # the quality columns, for a wide (RouterBench) file
    strong_name: str | None = None
    skipped: list[Skipped] = field(default_factory=list)


def load_outcomes(path: Path, strong_column: str | None = None, weak_column: str | None = None,
                  id_column: str | None = None) -> Outcomes:
    columns, rows, skipped = read_records(path)
    if (strong_column is None) != (weak_column is None):
        raise click.ClickException("give both --strong-column and --weak-column (or neither)")
    if strong_column is not None:
        try:
            s_col, w_col = find_column(columns, strong_column), find_column(columns, weak_column)
        except ValueError as exc:
            raise click.ClickException(f"{path}: {exc}") from None
        id_col = id_column or ("sample_id" if "sample_id" in columns else "id")
    else:
        s_col, w_col, id_col = "strong_quality", "weak_quality", id_column or "id"
    _require(path, columns, [id_col, w_col, s_col])

    ids, prompts, weak, strong, where = [], [], [], [], []
    for loc, rec in rows:
        ident = _id(rec.get(id_col))
        if ident is None:
            skipped.append(Skipped(loc, None, f"no {id_col}"))
            continue
        w, s = _number(rec.get(w_col)), _number(rec.get(s_col))
        if w is None or s is None:
            col = w_col if w is None else s_col
            skipped.append(Skipped(loc, ident, f"{col} is not a number ({rec.get(col)!r})"))
            continue
        ids.append(ident)
        prompts.append(_prompt_text(rec.get("prompt")))
        weak.append(w)
        strong.append(s)
        where.append(loc)
    keep = _drop_duplicates(ids, where, skipped)
    if not keep:
        raise click.ClickException(f"{path}: no usable rows ({len(skipped)} skipped: {_summary(skipped)})")
    return Outcomes([ids[i] for i in keep], [prompts[i] for i in keep], np.asarray(weak)[keep],
                    np.asarray(strong)[keep], w_col if weak_column else None,
                    s_col if strong_column else None, skipped)


def load_scores(path: Path, id_column: str = "id", score_column: str = "p_strong_wins",
                ) -> tuple[dict[str, float], list[Skipped]]:
    columns, rows, skipped = read_records(path)
    _require(path, columns, [id_column, score_column])
    ids, values, where = [], [], []
    for loc, rec in rows:
        ident = _id(rec.get(id_column))
        value = _number(rec.get(score_column))
        if ident is None:
            skipped.append(Skipped(loc, None, f"no {id_column}"))
        elif value is None or not 0.0 <= value <= 1.0:
            skipped.append(Skipped(loc, ident, f"{score_column} is not a probability ({rec.get(score_column)!r})"))
        else:
            ids.append(ident)
            values.append(value)
            where.append(loc)
    keep = _drop_duplicates(ids, where, skipped)
    return {ids[i]: values[i] for i in keep}, skipped


def _summary(skipped: list[Skipped], examples: int = 3) -> str:
    by_reason: dict[str, list[Skipped]] = {}
    for s in skipped:
        by_reason.setdefault(s.reason.split(" (")[0], []).append(s)
    parts = []
    for reason, items in by_reason.items():
        shown = ", ".join(f"{s.where}" + (f" id {s.id}" if s.id else "") for s in items[:examples])
        more = f", +{len(items) - examples} more" if len(items) > examples else ""
        parts.append(f"{len(items)} {reason} [{shown}{more}]")
    return "; ".join(parts)


def _report_skipped(label: str, skipped: list[Skipped]) -> None:
    if skipped:
        click.echo(f"warning: {label}: skipped {len(skipped)} row(s): {_summary(skipped)}", err=True)


def _ids_text(ids: list[str], n: int = 5) -> str:
    return ", ".join(ids[:n]) + (f" (+{len(ids) - n} more)" if len(ids) > n else "")


# --- scoring with a router --------------------------------------------------------------------------
def _router_scores(model_uri: str, strong: str | None, weak: str | None, prompts: list[str]
                   ) -> tuple[np.ndarray, str | None, tuple[str, str]]:
    """P(strong wins) for `prompts` from a registered router; (scores, router version, pair)."""

    try:
        router = load_router(model_uri, get_settings())
        pair = router.pair(strong, weak)
        scores = router.score(prompts, *pair)
    except (UnknownModelError, LookupError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    return np.asarray(scores, dtype=np.float64), router.version, pair


def _with_prompts(ids: list[str], prompts: list[str], skipped: list[Skipped]) -> list[int]:
    keep = []
    for i, (ident, prompt) in enumerate(zip(ids, prompts, strict=True)):
        if prompt.strip():
            keep.append(i)
        else:
            skipped.append(Skipped(f"id {ident}", ident, "empty prompt (the router cannot score it)"))
    return keep


# --- evaluation -------------------------------------------------------------------------------------
@dataclass
class ThresholdRow:
    alpha: float
    strong_share: float
    quality: float
    pgr: float


@dataclass
class EvalReport:
    n_prompts: int
    q_weak: float
    q_strong: float
    apgr: float
    random_apgr: float
    oracle_apgr: float
    cpt: dict[str, float | None]  # "50%" -> smallest strong share reaching PGR 50%, None if never
    max_pgr: float
    thresholds: list[ThresholdRow]
    inputs: dict[str, Any] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    missing_scores: list[str] = field(default_factory=list)
    unmatched_scores: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["skipped"] = [asdict(s) for s in self.skipped]
        return out


def evaluate(scores: np.ndarray, weak_q: np.ndarray, strong_q: np.ndarray,
             thresholds: list[float]) -> tuple[EvalReport, metrics.PGRCurve, metrics.PGRCurve]:
    curve = metrics.pgr_curve(scores, weak_q, strong_q)
    oracle = metrics.oracle_curve(weak_q, strong_q)
    rows = []
    for alpha in thresholds:
        quality, share = metrics.routed_quality(scores, weak_q, strong_q, alpha)
        rows.append(ThresholdRow(alpha, share, quality, metrics.pgr(quality, curve.q_weak, curve.q_strong)))
    cpts = {}
    for target in CPT_TARGETS:
        value = curve.cpt(target)
        cpts[f"{target:.0%}"] = None if math.isnan(value) else value
    report = EvalReport(len(scores), curve.q_weak, curve.q_strong, curve.apgr(), metrics.random_router_apgr(),
                        oracle.apgr(), cpts, curve.max_pgr, rows)
    return report, curve, oracle


def format_report(report: EvalReport) -> str:
    lines = [
        f"prompts: {report.n_prompts}   q_weak: {report.q_weak:.4f}   q_strong: {report.q_strong:.4f}",
        "",
        f"{'alpha':>8} {'strong %':>9} {'quality':>9} {'PGR':>8}",
    ]
    for row in report.thresholds:
        lines.append(f"{row.alpha:>8.3f} {row.strong_share:>9.1%} {row.quality:>9.4f} {row.pgr:>8.3f}")
    lines += ["", f"APGR: {report.apgr:.4f}   (random router: {report.random_apgr:.4f}, "
                  f"oracle: {report.oracle_apgr:.4f})"]
    for key, value in report.cpt.items():
        text = f"{value:.1%} strong calls" if value is not None else f"not reached (max PGR {report.max_pgr:.3f})"
        lines.append(f"CPT({key}): {text}   (random router: {float(key[:-1]) / 100:.1%})")
    return "\n".join(lines)


def _plot(curve: metrics.PGRCurve, oracle: metrics.PGRCurve, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(curve.strong_share * 100, curve.pgr, label=f"router (APGR {curve.apgr():.3f})")
    ax.plot(oracle.strong_share * 100, oracle.pgr, linestyle=":", label=f"oracle (APGR {oracle.apgr():.3f})")
    ax.plot([0, 100], [0, 1], linestyle="--", color="grey", label="random (APGR 0.500)")
    ax.set_xlabel("strong model calls (%)")
    ax.set_ylabel("PGR")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _parse_thresholds(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers") from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise click.BadParameter(f"thresholds must be numbers in [0, 1], got {text!r}")
    return values


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _scores_for(outcomes: Outcomes, scores_file: Path | None, model_uri: str | None, strong: str | None,
                weak: str | None, strict: bool) -> tuple[np.ndarray, Outcomes, dict[str, Any], list[str], list[str]]:
    """Align scores with outcome rows; returns (scores, kept outcomes, input info, missing, unmatched)."""
    if (scores_file is None) == (model_uri is None):
        raise click.UsageError("give exactly one of --scores FILE or --model-uri URI")
    info: dict[str, Any] = {}
    missing: list[str] = []
    unmatched: list[str] = []
    if scores_file is not None:
        by_id, bad = load_scores(scores_file)
        _report_skipped(str(scores_file), bad)
        keep = [i for i, ident in enumerate(outcomes.ids) if ident in by_id]
        missing = [ident for ident in outcomes.ids if ident not in by_id]
        wanted = set(outcomes.ids)
        unmatched = [ident for ident in by_id if ident not in wanted]
        if not keep:
            raise click.ClickException(
                f"no prompt in the outcomes has a score in {scores_file}: outcome ids "
                f"{_ids_text(outcomes.ids)}; score ids {_ids_text(list(by_id)) or '(none)'}")
        if missing:
            msg = f"{len(missing)} prompt(s) have no score in {scores_file}: {_ids_text(missing)}"
            if strict:
                raise click.ClickException(msg)
            click.echo(f"warning: {msg} (skipped)", err=True)
        if unmatched:
            click.echo(f"warning: {len(unmatched)} scored id(s) are not in the outcomes: "
                       f"{_ids_text(unmatched)} (ignored)", err=True)
        scores = np.asarray([by_id[outcomes.ids[i]] for i in keep])
        info["scores"] = str(scores_file)
    else:
        keep = _with_prompts(outcomes.ids, outcomes.prompts, outcomes.skipped)
        if strict and len(keep) < len(outcomes.ids):
            raise click.ClickException(f"{len(outcomes.ids) - len(keep)} prompt(s) are empty; the router cannot "
                                       "score them")
        if not keep:
            raise click.ClickException("no row has a prompt for the router to score")
        scores, version, pair = _router_scores(model_uri, strong or outcomes.strong_name,
                                               weak or outcomes.weak_name, [outcomes.prompts[i] for i in keep])
        info.update(model_uri=model_uri, router_version=version, strong=pair[0], weak=pair[1])
    kept = Outcomes([outcomes.ids[i] for i in keep], [outcomes.prompts[i] for i in keep],
                    outcomes.weak_q[keep], outcomes.strong_q[keep], outcomes.weak_name,
                    outcomes.strong_name, outcomes.skipped)
    return scores, kept, info, missing, unmatched


# --- commands -------------------------------------------------------------------------------------------
_outcome_options = [
    click.option("--strong-column", default=None, help="Wide (RouterBench) file: the strong model's score column."),
    click.option("--weak-column", default=None, help="Wide (RouterBench) file: the weak model's score column."),
    click.option("--id-column", default=None, help="Id column (default: id; sample_id in RouterBench files)."),
]


def _add(options):  # noqa: ANN001, ANN202
    def wrap(fn):  # noqa: ANN001, ANN202
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return wrap


@click.command("eval")
@click.option("--outcomes", "outcomes_file", type=click.Path(path_type=Path), required=True,
              help="Paired outcomes: JSONL/CSV with id, prompt, weak_quality, strong_quality.")
@click.option("--scores", "scores_file", type=click.Path(path_type=Path), default=None,
              help="Scores JSONL/CSV with id, p_strong_wins (from `routerops router score`).")
@click.option("--model-uri", default=None, help="Score with this router instead (models:/mf-router@champion).")
@click.option("--strong", default=None, help="Strong model as the router knows it (default: --strong-column).")
@click.option("--weak", default=None, help="Weak model as the router knows it (default: --weak-column).")
@_add(_outcome_options)
@click.option("--thresholds", default=DEFAULT_THRESHOLDS, show_default=True, help="Alphas to tabulate.")
@click.option("--output", type=click.Path(path_type=Path), default=None, help="Write the report as JSON.")
@click.option("--plot", "plot_file", type=click.Path(path_type=Path), default=None, help="Write the PGR curve (PNG).")
@click.option("--log-mlflow", is_flag=True, help="Log metrics, report and plot to an MLflow run.")
@click.option("--strict", is_flag=True, help="Fail instead of skipping prompts without a score.")
def eval_command(outcomes_file: Path, scores_file: Path | None, model_uri: str | None, strong: str | None,
                 weak: str | None, strong_column: str | None, weak_column: str | None, id_column: str | None,
                 thresholds: str, output: Path | None, plot_file: Path | None, log_mlflow: bool,
                 strict: bool) -> None:
    """PGR at thresholds, APGR, CPT(20/50/80%) of a router on paired outcomes."""
    alphas = _parse_thresholds(thresholds)
    outcomes = load_outcomes(outcomes_file, strong_column, weak_column, id_column)
    scores, kept, info, missing, unmatched = _scores_for(outcomes, scores_file, model_uri, strong, weak, strict)
    _report_skipped(str(outcomes_file), outcomes.skipped)
    try:
        report, curve, oracle = evaluate(scores, kept.weak_q, kept.strong_q, alphas)
    except ValueError as exc:
        raise click.ClickException(f"{outcomes_file}: {exc}") from None
    report.inputs = {"outcomes": str(outcomes_file), **info,
                     "weak_column": outcomes.weak_name, "strong_column": outcomes.strong_name}
    report.skipped, report.missing_scores, report.unmatched_scores = outcomes.skipped, missing, unmatched
    click.echo(format_report(report))
    data = _json_safe(report.to_dict())
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(data, indent=2))
        click.echo(f"report written to {output}")
    if plot_file is not None:
        _plot(curve, oracle, plot_file, f"PGR curve: {outcomes_file.name}")
        click.echo(f"plot written to {plot_file}")
    if log_mlflow:
        run_id = _log_to_mlflow(report, data, curve, oracle, outcomes_file)
        click.echo(f"logged to MLflow run {run_id}")


def _log_to_mlflow(report: EvalReport, data: dict[str, Any], curve: metrics.PGRCurve,
                   oracle: metrics.PGRCurve, outcomes_file: Path) -> str:
    import mlflow

    configure_mlflow(get_settings())
    with mlflow.start_run(run_name=f"router-eval-{outcomes_file.name}") as run, \
            tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tag("routerops.job", "router-eval")
        mlflow.log_params(redact_values({k: v for k, v in report.inputs.items() if v is not None}))
        mlflow.log_metrics({"apgr": report.apgr, "oracle_apgr": report.oracle_apgr, "q_weak": report.q_weak,
                            "q_strong": report.q_strong, "n_prompts": report.n_prompts,
                            **{f"cpt_{k[:-1]}": v for k, v in report.cpt.items() if v is not None}})
        (Path(tmp) / "router_eval.json").write_text(json.dumps(data, indent=2))
        mlflow.log_artifact(str(Path(tmp) / "router_eval.json"))
        mlflow.log_artifact(str(_plot(curve, oracle, Path(tmp) / "pgr_curve.png", "PGR curve")))
        return run.info.run_id


def _load_prompts(path: Path, id_column: str | None) -> tuple[list[str], list[str], list[Skipped]]:
    columns, rows, skipped = read_records(path)
    _require(path, columns, ["prompt"])

    id_col = id_column or ("sample_id" if "sample_id" in columns else "id")
    ids, prompts = [], []
    for loc, rec in rows:
        text = _prompt_text(rec.get("prompt"))
        ident = _id(rec.get(id_col)) or loc
        if not text.strip():
            skipped.append(Skipped(loc, ident, "empty prompt"))
            continue
        ids.append(ident)
        prompts.append(text)
    return ids, prompts, skipped


@click.command("calibrate")
@click.option("--strong-share", type=click.FloatRange(0.0, 1.0), default=None,
              help="Wanted share of prompts sent to the strong model.")
@click.option("--target-pgr", type=float, default=None,
              help="Instead: the least strong share reaching this PGR (needs --outcomes).")
@click.option("--scores", "scores_file", type=click.Path(path_type=Path), default=None,
              help="Scores JSONL/CSV with id, p_strong_wins.")
@click.option("--model-uri", default=None, help="Score with this router instead.")
@click.option("--strong", default=None, help="Strong model as the router knows it.")
@click.option("--weak", default=None, help="Weak model as the router knows it.")
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path), default=None,
              help="Prompts (JSONL/CSV with a prompt column) for --model-uri.")
@click.option("--outcomes", "outcomes_file", type=click.Path(path_type=Path), default=None,
              help="Paired outcomes, for --target-pgr.")
@_add(_outcome_options)
@click.option("--set", "set_live", is_flag=True,
              help="Record the alpha as the live one (beyond the bounded step it waits for approval).")
@click.option("--reason", default=None, help="Why (stored with --set).")
def calibrate_command(strong_share: float | None, target_pgr: float | None, scores_file: Path | None,
                      model_uri: str | None, strong: str | None, weak: str | None, prompts_file: Path | None,
                      outcomes_file: Path | None, strong_column: str | None, weak_column: str | None,
                      id_column: str | None, set_live: bool, reason: str | None) -> None:
    """The alpha that sends a given share of prompts to strong (or reaches a PGR at the least share)."""
    if (strong_share is None) == (target_pgr is None):
        raise click.UsageError("give exactly one of --strong-share or --target-pgr")
    version: str | None = None
    if target_pgr is not None:
        if outcomes_file is None:
            raise click.UsageError("--target-pgr needs --outcomes")
        outcomes = load_outcomes(outcomes_file, strong_column, weak_column, id_column)
        scores, kept, info, _, _ = _scores_for(outcomes, scores_file, model_uri, strong, weak, strict=False)
        _report_skipped(str(outcomes_file), outcomes.skipped)
        version = info.get("router_version")
        try:
            alpha = metrics.alpha_for_pgr(scores, kept.weak_q, kept.strong_q, target_pgr)
            quality, realised = metrics.routed_quality(scores, kept.weak_q, kept.strong_q, alpha)
            achieved = metrics.pgr(quality, float(kept.weak_q.mean()), float(kept.strong_q.mean()))
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        goal = f"PGR {target_pgr:.3f} (reached {achieved:.3f})"
        source_file = outcomes_file
    else:
        if (scores_file is None) == (model_uri is None):
            raise click.UsageError("give exactly one of --scores FILE or --model-uri URI (with --prompts)")
        if scores_file is not None:
            by_id, bad = load_scores(scores_file)
            _report_skipped(str(scores_file), bad)
            scores = np.asarray(list(by_id.values()))
            source_file = scores_file
        else:
            if prompts_file is None:
                raise click.UsageError("--model-uri needs --prompts FILE")
            _, prompts, bad = _load_prompts(prompts_file, id_column)
            _report_skipped(str(prompts_file), bad)
            if not prompts:
                raise click.ClickException(f"{prompts_file}: no prompts")
            scores, version, _ = _router_scores(model_uri, strong, weak, prompts)
            source_file = prompts_file
        if len(scores) == 0:
            raise click.ClickException(f"{source_file}: no usable scores")
        alpha = metrics.alpha_for_strong_share(scores, strong_share)
        realised = metrics.strong_share_at(scores, alpha)
        goal = f"strong share {strong_share:.1%}"
    click.echo(f"alpha: {alpha:.6g}")
    click.echo(f"realised strong share: {realised:.1%} of {len(scores)} prompts (asked: {goal})")
    if set_live:
        _set_alpha(alpha, reason or f"calibrated on {source_file}: {goal}, realised share {realised:.1%}",
                   version)


def _set_alpha(alpha: float, reason: str, router_version: str | None) -> None:
    settings = get_settings()
    with session_scope(settings) as session:
        change = propose_alpha(session, settings, alpha, reason=reason, source="calibration",
                               router_version=router_version)
        status, change_id, previous = change.status, change.id, change.previous_alpha
    if status == "active":
        click.echo(f"live alpha: {previous:.6g} -> {alpha:.6g} (change {change_id})")
    else:
        click.echo(f"alpha {alpha:.6g} is pending approval (change {change_id}): the step from {previous:.6g} "
                   f"exceeds alpha_max_step {settings.alpha_max_step}; approve it with "
                   f"`routerops alpha approve {change_id}`")
