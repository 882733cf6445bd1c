"""Train the router on the store's outcomes and preferences, log everything to MLflow, register a
challenger.

Pipeline: outcome + preference rows (store; evaluation-set prompts left out) -> weighted training set
(training/router_data.py) -> cached query embeddings + prompt statistics -> prompt-grouped
train/validation split -> IRT-MF fit (training/irt_mf.py) -> MLflow run (params, data snapshot,
validation loss/AUC, per-category APGR, APGR/CPT on evaluation sets, optional leave-one-source-out
table, the strong-share calibration table, plots, the model as a pyfunc) -> a new version of the
registered router with alias `challenger` (never `champion`).
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from sqlalchemy import func, select

from routerops import metrics as rmetrics
from routerops import registry
from routerops.checkpoint import checkpoint
from routerops.db import session_scope
from routerops.db.models import OutcomeLog, PreferenceLog
from routerops.fleet import load_fleet
from routerops.importers.store import load_outcomes, load_preferences
from routerops.model_names import UnknownModelError, load_catalog, name_key
from routerops.models import irt_mf
from routerops.models.adaptive import AdaptiveConfig
from routerops.models.category_heads import CategoryHeadsConfig
from routerops.models.embedders.router_files import embedder_artifacts
from routerops.models.embeddings import embed_cached, embedding_ref, ensure_built_embedder, get_embedder
from routerops.models.fleet_dial import calibrate_fleet
from routerops.models.prompt_features import features, fit_standardizer, raw_features
from routerops.models.router import ARTIFACT_NAME, FORMAT_V2, PYFUNC_CODE, MFRouter
from routerops.owner import owner
from routerops.redact import redact_values
from routerops.settings import Settings
from routerops.text import prompt_hash
from routerops.training.eval_sets import load_routerbench
from routerops.training.router_adaptation import adaptation_measure, adaptation_plot
from routerops.training.router_data import (
    build_router_data,
    cap_feedback_per_key,
    snapshot,
    split_prompts,
)
from routerops.training.router_fit import fit_heads, fit_weights
from routerops.training.router_loso import eval_pair, leave_one_source_out
from routerops.training.router_train_config import RouterTrainConfig

log = logging.getLogger(__name__)


class EmptyStoreError(RuntimeError):
    pass


@dataclass
class TrainResult:
    run_id: str
    model_version: str | None
    model_uri: str
    metrics: dict[str, float] = field(default_factory=dict)
    vocabulary: list[str] = field(default_factory=list)
    loso: object | None = None  # routerops.training.router_loso.LosoReport when asked for
    refused: str | None = None  # why the run registered nothing (a degenerate router), else None
    adaptation: object | None = None  # routerops.training.router_adaptation.AdaptReport when asked for


REFERENCE_PROMPTS = 2000  # prompts kept with the router to find the alpha for a strong share
CALIBRATION_SHARES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MIN_CATEGORY_PROMPTS = 30  # per-category APGR only where the validation split has this many prompts
MIN_REFERENCE_PROMPTS = 50  # validation prompts needed to calibrate on them (and to judge the alphas)
MIN_SCORE_STD = 0.02  # a router whose scores on unseen prompts spread less routes by noise: refused
MIN_OBJECTIVE_MOVE = 1e-4  # nor is one whose fit did not move from its starting point


class DegenerateRouterError(RuntimeError):
    """The fit produced a router that cannot route (scores do not spread, or the fit did not move)."""


def degenerate_reason(val_scores: np.ndarray | None, fit_info: dict[str, float],
                      alphas: list[float | None] | None, labelled_prompts: int = 0) -> str | None:
    """Why this router must not be registered, or None. `val_scores`: the checked pair's scores on
    the validation prompts (never trained on); `alphas`: the calibration table's; `labelled_prompts`:
    the pair's labelled prompts in the label memory. A prior fit that did not move is fatal only where
    the memory has nothing of the pair to route by (labels that are all pair interaction, a new model
    better on some prompts and worse on others, leave the prior at its start and still route)."""
    reasons = []
    start, final = fit_info.get("start_objective"), fit_info.get("train_objective")
    if (not labelled_prompts and start is not None and final is not None
            and abs(start - final) < MIN_OBJECTIVE_MOVE * max(1.0, abs(start))):
        reasons.append(f"the fit did not move from its start (objective {start:.6f} -> {final:.6f})")
    if val_scores is not None and len(val_scores) >= 2 and float(np.std(val_scores)) < MIN_SCORE_STD:
        reasons.append(f"its scores on {len(val_scores)} unseen prompts do not spread (std "
                       f"{float(np.std(val_scores)):.2g} < {MIN_SCORE_STD}): every prompt would route alike")
    if alphas and all(a is not None for a in alphas) and len({round(float(a), 6) for a in alphas}) < len(alphas):
        reasons.append(f"its calibration gives the same alpha for different strong shares ({len(set(alphas))} "
                       f"distinct of {len(alphas)})")
    return "; ".join(reasons) or None




def store_max_ids(session) -> dict[str, int]:  # noqa: ANN001 - a SQLAlchemy Session
    """{"max_preference_id", "max_outcome_id"}: the newest rows in the store now (0 when empty)."""
    return {"max_preference_id": int(session.scalar(select(func.max(PreferenceLog.id))) or 0),
            "max_outcome_id": int(session.scalar(select(func.max(OutcomeLog.id))) or 0)}


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    mask = ~np.isnan(y)
    y, p = y[mask], p[mask]
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, p))


def _bce(p: np.ndarray, t: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(t * np.log(p) + (1 - t) * np.log(1 - p)))


def _calibration_plot(p: np.ndarray, target: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = np.linspace(0, 1, 11)
    which = np.clip(np.digitize(p, bins) - 1, 0, 9)
    xs, ys, ns = [], [], []
    for k in range(10):
        m = which == k
        if m.any():
            xs.append(p[m].mean())
            ys.append(target[m].mean())
            ns.append(int(m.sum()))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    ax.plot(xs, ys, "o-", label="MF router (validation)")
    for x, y, n in zip(xs, ys, ns, strict=True):
        ax.annotate(str(n), (x, y), fontsize=7, textcoords="offset points", xytext=(3, -9))
    ax.set_xlabel("predicted P(model_a wins)")
    ax.set_ylabel("observed mean target")
    ax.set_title("Calibration (reliability diagram)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pgr_plot(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="random router")
    for name, (share, pgr, apgr_value) in curves.items():
        ax.plot(share, pgr, label=f"{name} (APGR {apgr_value:.3f})")
    ax.set_xlabel("share of calls to the strong model")
    ax.set_ylabel("PGR (performance gap recovered)")
    ax.set_title("PGR vs strong-model share")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _default_pair(router, candidates: list[tuple[str | None, str | None]]) -> tuple[str | None, str | None]:  # noqa: ANN001
    for strong, weak in candidates:
        if not strong or not weak:
            continue
        try:
            s, w = router.resolve(strong), router.resolve(weak)
        except UnknownModelError:
            continue
        if s != w:
            return s, w
    return None, None


def reference_sample(prompt_source: list[str], mask: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Indices of up to `limit` prompts from `mask`, the same number from each source where it has
    them: the calibration reflects a mix of traffic, not the biggest source."""
    rng = np.random.default_rng(seed)
    by_source: dict[str, list[int]] = {}
    for i in np.flatnonzero(mask):
        by_source.setdefault(prompt_source[i], []).append(int(i))
    chosen: list[int] = []
    quota = max(1, limit // max(len(by_source), 1))
    for rows in by_source.values():
        chosen += rng.permutation(rows)[:quota].tolist()
    return np.sort(np.asarray(chosen[:limit], dtype=np.int64))


def per_category_apgr(data, X: np.ndarray, params: dict[str, np.ndarray], mask: np.ndarray) -> list[dict]:  # noqa: ANN001
    """APGR on the prompts in `mask` per (source, category), each with its source's evaluation pair
    (the leave-one-source-out rule, training/router_loso.py)."""

    index = {m: i for i, m in enumerate(data.vocabulary)}
    known = set(range(len(data.vocabulary)))
    rows: list[dict] = []
    for source in data.sources:
        ev = eval_pair(data, source, known)
        if ev is None or ev.mode != "pair":
            continue
        categories = np.asarray(data.prompt_category, dtype=object)[ev.q]
        in_mask = mask[ev.q]
        for category in [None, *sorted({c for c in categories[in_mask] if isinstance(c, str)})]:
            sel = in_mask & ((categories == category) if category is not None else True)  # None: the whole source
            # strong not better than weak there: APGR is undefined (metrics.NoQualityGap)
            if sel.sum() < MIN_CATEGORY_PROMPTS or ev.strong_q[sel].mean() <= ev.weak_q[sel].mean():
                continue
            scores = irt_mf.pair_score(params, X[ev.q[sel]], index[ev.strong], index[ev.weak])
            rows.append({"source": source, "category": category or "(all)", "strong": ev.strong, "weak": ev.weak,
                         "prompts": int(sel.sum()),
                         "apgr": float(rmetrics.apgr(scores, ev.weak_q[sel], ev.strong_q[sel]))})
    return rows


MIN_CURVE_PROMPTS = 10  # a validation PGR curve needs this many held-out prompts of a judged pair


def validation_pgr_curves(data, X: np.ndarray, params: dict[str, np.ndarray],  # noqa: ANN001
                          mask: np.ndarray) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, float]], list[str]]:
    """PGR versus strong share on the validation prompts of each source with a judged pair (its
    leave-one-source-out evaluation pair), so every run has the curve, evaluation sets or not;
    and, per source without one, why not."""
    index = {m: i for i, m in enumerate(data.vocabulary)}
    known = set(range(len(data.vocabulary)))
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    why_not: list[str] = []
    for source in data.sources:
        ev = eval_pair(data, source, known)
        if ev is None or ev.mode != "pair":
            why_not.append(f"{source}: no two models compared on the same prompts")
            continue
        sel = mask[ev.q]
        if sel.sum() < MIN_CURVE_PROMPTS:
            why_not.append(f"{source}: {int(sel.sum())} validation prompts of {ev.strong} vs {ev.weak} "
                           f"(fewer than {MIN_CURVE_PROMPTS})")
            continue
        scores = irt_mf.pair_score(params, X[ev.q[sel]], index[ev.strong], index[ev.weak])
        try:
            curve = rmetrics.pgr_curve(scores, ev.weak_q[sel], ev.strong_q[sel])
        except rmetrics.NoQualityGap as exc:
            why_not.append(f"{source}: {exc}")
            continue
        curves[f"validation {source}: {ev.strong} vs {ev.weak}, {int(sel.sum())} prompts"] = (
            np.asarray(curve.strong_share), np.asarray(curve.pgr), curve.apgr())
    return curves, why_not


def _log_missing_plot(name: str, reason: str) -> None:
    """A plot the run cannot draw says why, where the plot would be and as a run tag."""
    import mlflow

    mlflow.log_text(reason + "\n", f"plots/{name}.missing.txt")
    mlflow.set_tag(f"plots.{name}", f"not drawn: {reason}"[:5000])
    log.warning("plots/%s.png not drawn: %s", name, reason)


def _loso_plot(frame, path: Path) -> None:  # noqa: ANN001
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(frame))
    ax.bar(x - 0.2, frame["apgr"], 0.4, label="router")
    ax.bar(x + 0.2, frame["oracle"].clip(upper=1.5), 0.4, label="oracle (clipped at 1.5)", alpha=0.5)
    ax.axhline(0.5, color="grey", linestyle="--", label="random")
    ax.set_xticks(x, frame["source"], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("APGR on the held-out source")
    ax.set_title(f"Leave-one-source-out (mean {frame['apgr'].mean():.3f})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def prompt_matrix(embeddings: np.ndarray, prompts: list[str], standardizer: dict | None) -> np.ndarray:
    emb = np.asarray(embeddings, dtype=np.float32)
    return emb if standardizer is None else np.hstack([emb, features(prompts, standardizer)])


@dataclass
class TrainingSet:
    """The store's rows turned into what the fit needs (load_training_set)."""

    data: Any  # training.router_data.RouterData
    outcomes: pd.DataFrame
    prefs: pd.DataFrame
    embedder: Any  # routerops.models.embeddings.Embedder
    emb: np.ndarray  # query embeddings of data.prompts
    X: np.ndarray  # embeddings + standardized prompt statistics
    standardizer: dict | None
    evals: list  # training.eval_sets.EvalSet
    eval_emb: list[np.ndarray]
    held_out: set[str]  # hashes of evaluation-set prompts, never trained on
    snap: dict[str, Any]  # the data snapshot logged with the run
    val_mask: np.ndarray
    aliases: dict[str, list[str]]
    data_ids: dict[str, int]  # newest row ids when the rows were read (what a registered version saw)
    timings: dict[str, float]


def load_training_set(settings: Settings, config: RouterTrainConfig) -> TrainingSet:
    """Rows (evaluation-set prompts left out, each key's feedback capped) -> weighted training data,
    cached embeddings, prompt statistics, the prompt-grouped validation split."""
    eval_strong = config.eval_strong or settings.router_eval_strong
    eval_weak = config.eval_weak or settings.router_eval_weak
    eval_paths = list(config.eval_sets if config.eval_sets is not None else settings.router_eval_sets)
    evals = [load_routerbench(p, eval_strong, eval_weak) for p in eval_paths]  # fail fast on bad files
    ensure_built_embedder(settings)  # the default static embedder, built once, outside any DB session
    # an evaluation set's prompts never train the router that is scored on them
    held_out = {prompt_hash(p) for ev in evals for p in ev.prompts}
    sources = list(config.sources) if config.sources else None
    exclude = list(config.exclude_sources) if config.exclude_sources else None
    with session_scope(settings) as session:
        data_ids = store_max_ids(session)  # before loading: a row arriving meanwhile counts as new
        outcomes = load_outcomes(session, sources=sources, exclude_sources=exclude)
        prefs = load_preferences(session, sources=sources, exclude_sources=exclude)
        if held_out:
            outcomes = outcomes[~outcomes["prompt_hash"].isin(held_out)]
            prefs = prefs[~prefs["prompt_hash"].isin(held_out)]
        prefs, outcomes, feedback_per_key = cap_feedback_per_key(prefs, outcomes, settings.feedback_max_key_share)
        if len(outcomes) + len(prefs) == 0:
            what = f" for sources {sources}" if sources else ""
            raise EmptyStoreError(f"no outcome or preference data in the store{what}: run `routerops ingest ...` first")
        data = build_router_data(outcomes, prefs, config.weighting())
        catalog = load_catalog(session)
        embedder = get_embedder(settings)
        t0 = time.perf_counter()
        emb = embed_cached(session, embedder, data.prompts, progress=config.progress)
        eval_emb = [embed_cached(session, embedder, ev.prompts, progress=config.progress) for ev in evals]
        embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    standardizer = fit_standardizer(raw_features(data.prompts)) if config.prompt_stats else None
    X = prompt_matrix(emb, data.prompts, standardizer)
    features_s = time.perf_counter() - t0
    stamps = [s for s in (outcomes["created_at"], prefs["created_at"]) if len(s)]  # pandas warns on empty parts
    snap = snapshot(data, pd.concat(stamps) if stamps else None)
    snap["dropped"] = data.dropped
    snap["feedback_per_key"] = feedback_per_key  # feedback rows (preferences, thumbs, ratings) per API key, kept
    aliases: dict[str, list[str]] = {}
    for m in data.vocabulary:
        canonical = catalog.canonical.get(name_key(m), m)
        aliases[m] = sorted((catalog.aliases.get(canonical, set()) | {canonical}) - {m})
    return TrainingSet(data, outcomes, prefs, embedder, emb, X, standardizer, evals, eval_emb, held_out, snap,
                       split_prompts(len(data.prompts), config.val_fraction, config.seed), aliases, data_ids,
                       {"embed_seconds": embed_s, "features_seconds": features_s})


def _run_params(config: RouterTrainConfig, ts: TrainingSet) -> dict[str, Any]:
    snap = ts.snap
    return {**config.params(), "embedder": ts.embedder.name, "embed_dim": int(ts.emb.shape[1]),
            "num_models": len(ts.data.vocabulary), "data_rows": snap["rows"],
            "data_outcome_rows": snap["outcome_rows"], "data_preference_rows": snap["preference_rows"],
            "data_prompts": snap["prompts"], "val_prompts": int(ts.val_mask.sum()),
            "eval_prompts_excluded": len(ts.held_out), "data_created_at_min": snap["created_at_min"],
            "data_created_at_max": snap["created_at_max"]}


def fit_router(settings: Settings, config: RouterTrainConfig, ts: TrainingSet, run_id: str
               ) -> tuple[MFRouter, dict[str, float], np.ndarray]:
    """Fit the model, keep reference prompts with it, pick its default pair. Returns the router, the
    fit's figures and the indices of the reference prompts."""
    t1 = time.perf_counter()
    if config.progress:
        print(f"fitting {config.formulation} (rank {config.rank}) on {ts.snap['rows']} rows, "
              f"{ts.snap['prompts']} prompts, {len(ts.data.vocabulary)} models...", flush=True)
    weights, fit_info = fit_weights(ts.data, ts.X, ~ts.val_mask, config.irt(), adaptive=config.adaptive)
    n_stats = len(ts.standardizer["mean"]) if ts.standardizer else 0
    heads = fit_heads(ts.data, ts.X, ~ts.val_mask, ts.X.shape[1] - n_stats, weights,
                      progress=print if config.progress else None) if config.category_heads else None
    if heads is not None:
        weights.update(heads.weights)
    fit_info = {**fit_info, "category_heads": float(heads.heads if heads else 0),
                "train_seconds": time.perf_counter() - t1}
    # the reference prompts (calibration, live drift) are validation prompts: the label memory has
    # not seen them, so their scores are what unseen traffic gets (a tiny store, with too few
    # validation prompts for a calibration table, uses every prompt as before)
    ref_mask = ts.val_mask if ts.val_mask.sum() >= MIN_REFERENCE_PROMPTS else np.ones_like(ts.val_mask)
    ref_idx = reference_sample(ts.data.prompt_source, ref_mask, REFERENCE_PROMPTS, config.seed)
    weights["reference_X"] = ts.X[ref_idx].astype(np.float16)
    metadata = {
        "format": FORMAT_V2,
        "vocabulary": ts.data.vocabulary,
        "aliases": ts.aliases,
        "embedding": embedding_ref(ts.embedder).to_dict(),
        "prompt_features": ts.standardizer,
        "model": config.irt().to_dict(),
        "weighting": {"source_gamma": config.source_gamma, "category_gamma": config.category_gamma},
        "run_id": run_id,
    }
    if config.adaptive:
        metadata["adaptive"] = AdaptiveConfig().to_dict()
    if heads is not None:
        metadata["category_heads"] = heads.metadata(CategoryHeadsConfig())
    router = MFRouter(weights, metadata, settings=settings)
    router._embedder = ts.embedder  # same process: reuse the loaded embedder
    strong, weak = _default_pair(router, [(settings.router_strong_name, settings.router_weak_name),
                                          (config.eval_strong or settings.router_eval_strong,
                                           config.eval_weak or settings.router_eval_weak)])
    router.default_strong = metadata["default_strong"] = strong
    router.default_weak = metadata["default_weak"] = weak
    return router, fit_info, ref_idx


def validation_metrics(router: MFRouter, config: RouterTrainConfig, ts: TrainingSet, tmp: Path) -> dict[str, float]:
    """Outcome BCE / AUC (correct = score >= 0.5), preference loss / AUC (ties excluded) with the
    reliability plot, and APGR per (source, category) on the validation prompts."""
    data, X, weights, val_mask = ts.data, ts.X, router.weights, ts.val_mask
    o_val = data.outcomes[val_mask[data.outcomes["q"].to_numpy()]]
    p_val = data.pairs[val_mask[data.pairs["q"].to_numpy()]]
    results: dict[str, float] = {}
    if len(o_val):
        pc = irt_mf.p_correct(weights, X[o_val["q"].to_numpy()])[np.arange(len(o_val)), o_val["m"].to_numpy()]
        results["val_loss"] = _bce(pc, o_val["score"].to_numpy())
        results["val_auc"] = _auc(np.where(o_val["score"].to_numpy() >= 0.5, 1.0, 0.0), pc)
    if len(p_val):
        F = irt_mf.logits(weights, X[p_val["q"].to_numpy()])
        rows = np.arange(len(p_val))
        fa, fb = F[rows, p_val["a"].to_numpy()], F[rows, p_val["b"].to_numpy()]
        if config.pair_link == "bt":
            p_a = 1 / (1 + np.exp(-(fa - fb)))
        else:
            p_a = 0.5 + 0.5 * (1 / (1 + np.exp(-fa)) - 1 / (1 + np.exp(-fb)))
        results["val_pref_loss"] = _bce(p_a, p_val["target"].to_numpy())
        results["val_pref_auc"] = _auc(p_val["hard"].to_numpy(), p_a)
        _calibration_plot(p_a, p_val["target"].to_numpy(), tmp / "calibration.png")
        mlflow.log_artifact(str(tmp / "calibration.png"), "plots")
    else:
        _log_missing_plot("calibration", "no judged comparisons among the validation prompts")
    categories = per_category_apgr(data, X, weights, val_mask)
    if categories:
        mlflow.log_table(pd.DataFrame(categories), "per_category_apgr.json")
        for row in categories:
            key = f"{row['source']}_{row['category']}".replace("(all)", "all")
            results[f"apgr_val_{''.join(c if c.isalnum() or c in '_-.' else '_' for c in key)}"] = row["apgr"]
    return results


def calibration_table(router: MFRouter, ref_idx: np.ndarray) -> dict[str, Any] | None:
    """The alpha that sends each share of the reference prompts to strong, for the default pair."""
    strong, weak = router.default_strong, router.default_weak
    if not (strong and weak):
        return None
    alphas = [router.alpha_for_share(sh, strong, weak) for sh in CALIBRATION_SHARES]
    calibration = {"strong": strong, "weak": weak, "reference_prompts": int(len(ref_idx)),
                   "shares": list(CALIBRATION_SHARES), "alphas": alphas}
    router.metadata["calibration"] = calibration
    mlflow.log_table(pd.DataFrame({"strong_share": CALIBRATION_SHARES, "alpha": alphas}), "calibration_table.json")
    return calibration


def fleet_dial_record(settings: Settings, router: MFRouter, results: dict[str, float]) -> None:
    """The fleet dial (issue 27) calibrated on the same reference prompts for the configured fleet
    (ROUTEROPS_FLEET_FILE): fleet_dial.json, fleet_dial_* metrics; serving shows the same table."""
    if settings.fleet_file is None:
        return
    try:
        dial = calibrate_fleet(router, load_fleet(settings.fleet_file), settings).to_dict()
    except (ValueError, KeyError) as exc:  # a fleet the router does not know: said, not fatal
        dial = {"error": str(exc)[:500]}
        log.warning("fleet dial not calibrated: %s", exc)
    router.metadata["fleet_dial"] = dial
    mlflow.log_dict(dial, "fleet_dial.json")
    for key in ("lam", "cost_share", "quality_share"):
        if isinstance(dial.get(key), float):
            results[f"fleet_dial_{key}"] = dial[key]


def refusal(router: MFRouter, ts: TrainingSet, fit_info: dict[str, float], calibration: dict | None,
            ref_idx: np.ndarray, results: dict[str, float], progress: bool) -> str | None:
    """Why this router must not be registered (a pair's scores on unseen prompts must spread), or None;
    a refusal is said on stderr and in the run (tags and REFUSED.txt)."""
    strong, weak = router.default_strong, router.default_weak
    check = (strong, weak) if strong and weak else _most_labelled_pair(ts.data)
    val_scores = None
    if check is not None and ts.val_mask.any():
        val_scores = router._score_vectors(ts.X[np.flatnonzero(ts.val_mask)], *check)
        results["val_score_std"] = float(np.std(val_scores))
        results["labelled_prompts_of_pair"] = float(router.labelled_prompts(*check))
    judged_alphas = calibration["alphas"] if calibration and len(ref_idx) >= MIN_REFERENCE_PROMPTS else None
    reason = degenerate_reason(val_scores, fit_info, judged_alphas, int(results.get("labelled_prompts_of_pair", 0)))
    if not reason:
        return None
    refused = (f"degenerate router ({check[0]} vs {check[1]} checked): {reason}" if check
               else f"degenerate router: {reason}")
    log.error("%s; registering nothing", refused)
    if progress:
        print(f"REFUSED: {refused}. Nothing is registered as challenger.", file=sys.stderr, flush=True)
    mlflow.set_tags({"routerops.refused": "degenerate", "routerops.refused_reason": refused[:5000]})
    mlflow.log_text(refused + "\n", "REFUSED.txt")
    return refused


def evaluation_curves(router: MFRouter, ts: TrainingSet, tmp: Path) -> dict[str, float]:
    """APGR / CPT(50%) on each evaluation set, and the PGR-versus-strong-share plot (evaluation sets
    and each judged pair's validation prompts; a plot that cannot be drawn says why)."""
    results: dict[str, float] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    for ev, vecs in zip(ts.evals, ts.eval_emb, strict=True):
        try:
            scores = router.score_embeddings(vecs, ev.strong, ev.weak, prompts=ev.prompts)
        except KeyError as exc:  # the router does not know the eval pair
            log.warning("skipping evaluation set %s: %s", ev.name, exc)
            continue
        try:
            curve = rmetrics.pgr_curve(scores, ev.weak_q, ev.strong_q)
        except rmetrics.NoQualityGap as exc:  # strong not better than weak there: no APGR to report
            log.warning("skipping evaluation set %s: %s", ev.name, exc)
            continue
        a = curve.apgr()
        results[f"apgr_{ev.name}"] = a
        results[f"cpt50_{ev.name}"] = float(curve.cpt(0.5))
        curves[ev.name] = (np.asarray(curve.strong_share), np.asarray(curve.pgr), a)
    val_curves, no_curve = validation_pgr_curves(ts.data, ts.X, router.weights, ts.val_mask)
    curves.update(val_curves)
    if curves:
        _pgr_plot(curves, tmp / "pgr_curve.png")
        mlflow.log_artifact(str(tmp / "pgr_curve.png"), "plots")
    else:
        _log_missing_plot("pgr_curve", "no evaluation set and no validation source with a curve: "
                          + "; ".join(no_curve or ["no sources"]))
    return results


def loso_table(config: RouterTrainConfig, ts: TrainingSet, tmp: Path, results: dict[str, float]):  # noqa: ANN201
    """The leave-one-source-out table (training/router_loso.py), its plot and figures."""
    report = leave_one_source_out(ts.data, ts.X, config.irt(), progress=config.progress,
                                  embed_dim=int(ts.emb.shape[1]))
    if not report.rows:
        _log_missing_plot("loso_apgr", "no source has a pair of models to evaluate when held out")
        return report
    frame = report.frame()
    mlflow.log_table(frame, "loso_apgr.json")
    mlflow.log_text(report.table(), "loso_apgr.txt")
    _loso_plot(frame, tmp / "loso_apgr.png")
    mlflow.log_artifact(str(tmp / "loso_apgr.png"), "plots")
    results.update(loso_apgr_mean=report.mean_apgr, loso_apgr_min=report.min_apgr,
                   loso_by_difficulty_apgr_mean=report.mean_apgr_difficulty,
                   loso_with_memory_apgr_mean=report.mean_apgr_memory, loso_seconds=report.seconds)
    for row in report.rows:
        results[f"loso_apgr_{row.source}"] = row.apgr
    return report


def adaptation_table(config: RouterTrainConfig, ts: TrainingSet, tmp: Path, results: dict[str, float]):  # noqa: ANN201
    """The adaptation measure (training/router_adaptation.py), its plot and figures."""
    by_hash = dict(zip(ts.data.prompt_hashes, ts.emb, strict=True))
    report = adaptation_measure(ts.outcomes, ts.prefs, by_hash, config=config.irt(), weighting=config.weighting(),
                                prompt_stats=config.prompt_stats, val_fraction=config.val_fraction,
                                seed=config.seed, progress=config.progress)
    if report.rows:
        mlflow.log_table(report.frame(), "adaptation.json")
        mlflow.log_text(report.table(), "adaptation.txt")
        adaptation_plot(report, tmp / "adaptation.png")
        mlflow.log_artifact(str(tmp / "adaptation.png"), "plots")
        for n, row in report.means().iterrows():
            for col in ("router", "prior", "knn10", "knn50"):
                results[f"adapt_{col}_n{n}"] = float(row[col])
    return report


def log_router_model(router: MFRouter, embedder: Any, tmp: Path):  # noqa: ANN201 - mlflow ModelInfo
    """The router as an MLflow pyfunc ("models from code"), with the files serving embeds with."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    model_dir = router.save(tmp / "model")
    checkpoint("logging-model")
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "prompt"), ColSpec("string", "strong", required=False),
                       ColSpec("string", "weak", required=False)]),
        outputs=Schema([ColSpec("double", "p_strong_wins")]),
        params=ParamSchema([ParamSpec("strong", "string", ""), ParamSpec("weak", "string", "")]),
    )
    with warnings.catch_warnings():
        # an input example would make MLflow load the embedder and predict at log time
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        return mlflow.pyfunc.log_model(
            name=ARTIFACT_NAME,
            python_model=str(PYFUNC_CODE),
            artifacts={"weights": str(model_dir / "weights.npz"), "metadata": str(model_dir / "metadata.json"),
                       **embedder_artifacts(embedder, model_dir)},  # serving embeds as training did
            signature=signature,
            pip_requirements=[f"mlflow=={mlflow.__version__}", "numpy", "pandas", "sentence-transformers",
                              "routerops"],
        )


def register_router(settings: Settings, model_uri: str, router: MFRouter, ts: TrainingSet,
                    results: dict[str, float], calibration: dict | None, run_id: str, formulation: str) -> str:
    """A new version of the registered router with its tags, then the alias `challenger`.

    Registered last, in one registry write (the version with all its tags), after every artifact is
    logged: a process killed earlier leaves no model version at all; one killed between this and the
    alias leaves a complete version that is simply not the challenger."""
    tags = {k: f"{results[k]:.4f}" for k in ("val_auc", "val_loss", "val_pref_auc", "loso_apgr_mean",
                                             "loso_apgr_min") if k in results and np.isfinite(results[k])}
    tags["embedder"] = ts.embedder.name
    tags["formulation"] = formulation
    if calibration:
        tags["calibration_pair"] = f"{calibration['strong']} vs {calibration['weak']}"
        for sh, al in zip(calibration["shares"], calibration["alphas"], strict=True):
            tags[f"alpha_at_share_{sh:.1f}"] = f"{al:.4f}"
    tags["routerops.run_id"] = run_id
    tags.update({f"{registry.DATA_ID_TAG_PREFIX}{k}": str(v) for k, v in ts.data_ids.items()})  # what it saw
    checkpoint("registering")
    mv = mlflow.register_model(model_uri, settings.router_model_name, tags=redact_values(tags))
    version = str(mv.version)
    checkpoint("registered")
    registry.set_challenger(settings.router_model_name, version, settings)
    return version


def train_router(settings: Settings, config: RouterTrainConfig | None = None, **changes: Any) -> TrainResult:
    """Train on the store's rows, log the run to MLflow, register a challenger (unless refused).
    `changes` override fields of `config` (a convenience for scripts: train_router(s, seed=1))."""
    config = replace(config or RouterTrainConfig(), **changes)
    t_start = time.perf_counter()
    ts = load_training_set(settings, config)
    registry.configure_mlflow(settings)
    registry.mark_killed_runs(settings, "mf-router")
    # tagged as the run is created: a kill at any later point leaves a run mark_killed_runs recognises
    run_tags = {"routerops.kind": "mf-router", registry.OWNER_TAG: owner()}
    with mlflow.start_run(run_name="mf-router", tags=run_tags) as run, tempfile.TemporaryDirectory() as tmp_dir:
        tmp, run_id = Path(tmp_dir), run.info.run_id
        mlflow.log_params(redact_values(_run_params(config, ts)))
        mlflow.log_metrics({f"data_rows_{k}": v for k, v in ts.snap["per_source"].items()})
        mlflow.log_dict(ts.snap, "data_snapshot.json")
        router, fit_info, ref_idx = fit_router(settings, config, ts, run_id)
        results: dict[str, float] = {**ts.timings, **fit_info}
        results.update(validation_metrics(router, config, ts, tmp))
        calibration = calibration_table(router, ref_idx)
        fleet_dial_record(settings, router, results)
        refused = refusal(router, ts, fit_info, calibration, ref_idx, results, config.progress)
        results.update(evaluation_curves(router, ts, tmp))
        loso_report = loso_table(config, ts, tmp, results) if config.loso else None
        adaptation_report = adaptation_table(config, ts, tmp, results) if config.adaptation else None
        mlflow.log_metrics({k: v for k, v in results.items() if np.isfinite(v)})
        info = log_router_model(router, ts.embedder, tmp)
        version = None
        if config.register and not refused:
            version = register_router(settings, info.model_uri, router, ts, results, calibration, run_id,
                                      config.formulation)
        results["total_seconds"] = time.perf_counter() - t_start
    return TrainResult(run_id=run_id, model_version=version, model_uri=f"runs:/{run_id}/{ARTIFACT_NAME}",
                       metrics=results, vocabulary=ts.data.vocabulary, loso=loso_report, refused=refused,
                       adaptation=adaptation_report)


def _most_labelled_pair(data) -> tuple[str, str] | None:  # noqa: ANN001
    """The pair with the most judged comparisons, else the two models with the most outcome rows."""
    if len(data.pairs):
        a, b = data.pairs.groupby(["a", "b"])["n"].sum().idxmax()
        return data.vocabulary[int(a)], data.vocabulary[int(b)]
    counts = data.outcomes["m"].value_counts()
    if len(counts) >= 2:
        return data.vocabulary[int(counts.index[0])], data.vocabulary[int(counts.index[1])]
    return None
