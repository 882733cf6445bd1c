"""Train a cascade scorer for one ladder on RouterBench: cross-encoder on train part A, the
static-embedding answer scorer on all of train (cross-fitted), rung combiners on train part B,
per-rung AUROC / ECE on test; log and register it (`challenger`). A rung "A+B" takes B's answer as a
second opinion on A's (routerops.models.cascade_scorer.features.rung_parts); the text scorers judge A's answer."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from routerops.models.cascade_scorer.features import rung_parts
from routerops.models.cascade_scorer.model import CascadeScorer, fit_combiner, rung_metrics
from routerops.models.embeddings import get_embedder
from routerops.settings import get_settings
from routerops.training.cascade_eval import ROUTERBENCH_SETS
from routerops.training.cascade_scorer.register import log_cascade_scorer
from routerops.training.cascade_scorer.routerbench import (
    SignalCache,
    alias_rungs,
    answer_scorer_logits,
    load_data,
    score_split,
    train_cross_encoder,
)

log = logging.getLogger(__name__)


@dataclass
class ScorerReport:
    scorer: CascadeScorer
    per_rung: dict[str, dict[str, float]]  # model -> test auroc, ece, n, correct_rate
    ce_stats: dict | None
    as_stats: dict | None = None
    run_id: str | None = None
    version: str | None = None


def train_routerbench_scorer(folder: Path | str, ladder: Sequence[str], *, datasets: Sequence[str] = ROUTERBENCH_SETS,
                             use_cross_encoder: bool = True, ce_examples: int = 400, max_length: int = 128,
                             threads: int | None = 1, seed: int = 0, progress: bool = True,
                             use_answer_scorer: bool = False, embedder=None) -> ScorerReport:  # noqa: ANN001
    """`embedder` (with use_answer_scorer): the answer scorer's embedder; default: the configured one."""
    ladder = list(ladder)
    if len(ladder) < 2:
        raise ValueError("a cascade scorer needs a ladder of at least two models")
    called = [m for r in ladder for m in rung_parts(r) if m is not None]
    if len(set(called)) != len(called):
        raise ValueError(f"the ladder calls a model twice: {ladder}")
    if rung_parts(ladder[-1])[1] is not None:
        raise ValueError(f"the last rung {ladder[-1]!r} is never scored, so a second opinion there only costs")
    data = load_data(folder, datasets, ladder, seed=seed)
    scored = ladder[:-1]
    judged = list(dict.fromkeys(rung_parts(r)[0] for r in scored))  # the models whose answers the text scorers read
    ce = ce_stats = None
    ce_fit = ce_test = None
    if use_cross_encoder:
        ce, ce_stats = train_cross_encoder(data.ce_train, judged, examples=ce_examples, max_length=max_length,
                                           threads=threads, seed=seed, progress=progress)
        ce_fit, ce_test = score_split(ce, data.fit, judged, progress), score_split(ce, data.test, judged, progress)
        ce_fit, ce_test = alias_rungs(ce_fit, scored), alias_rungs(ce_test, scored)
    answer_scorer = as_stats = as_fit = as_test = None
    if use_answer_scorer:
        if embedder is None:
            embedder = get_embedder(get_settings())
        answer_scorer, as_fit, as_test, as_stats = answer_scorer_logits(data, judged, embedder, seed=seed)
        as_fit, as_test = alias_rungs(as_fit, scored), alias_rungs(as_test, scored)
    fit_c, test_c = SignalCache(data.fit), SignalCache(data.test)
    combiners, per_rung = [], {}
    for i, m in enumerate(scored):
        x_fit, x_test = fit_c.rung_signals(ladder, i), test_c.rung_signals(ladder, i)
        if use_answer_scorer:  # column order of CascadeScorer.feature_names_for: [ce], [answer], signals
            x_fit, x_test = np.column_stack([as_fit[m], x_fit]), np.column_stack([as_test[m], x_test])
        if use_cross_encoder:
            x_fit, x_test = np.column_stack([ce_fit[m], x_fit]), np.column_stack([ce_test[m], x_test])
        comb = fit_combiner(x_fit, data.fit.correct[m], seed=seed)
        combiners.append(comb)
        r = rung_metrics(data.test.correct[m], comb.predict_proba(x_test)[:, 1])
        per_rung[m] = {"auroc": r.auroc, "ece": r.ece, "n": r.n, "correct_rate": r.correct_rate}
    meta = {"trained_on": f"routerbench:{','.join(datasets)}", "test_per_rung": per_rung,
            "cross_encoder_stats": ce_stats, "answer_scorer_stats": as_stats, "n_ce_train": data.ce_train.n, "n_fit": data.fit.n, "n_test": data.test.n}
    scorer = CascadeScorer(ladder, combiners, CascadeScorer.feature_names_for(use_cross_encoder, use_answer_scorer),
                           ce, meta, answer_scorer=answer_scorer)
    return ScorerReport(scorer, per_rung, ce_stats, as_stats)


def log_report(report: ScorerReport, settings, params: dict, register: bool = True) -> ScorerReport:  # noqa: ANN001
    metrics: dict[str, float] = {}
    for i, r in enumerate(report.per_rung.values()):
        metrics[f"test_auroc_rung{i}"] = r["auroc"]
        metrics[f"test_ece_rung{i}"] = r["ece"]
    if report.ce_stats:
        metrics |= {f"ce_{k}": float(v) for k, v in report.ce_stats.items() if isinstance(v, int | float)}
    if report.as_stats:
        metrics |= {f"as_{k}": float(v) for k, v in report.as_stats.items() if isinstance(v, int | float)}
        params = params | {"answer_scorer_embedder": report.as_stats["embedder"]}
    params = params | {"ladder": ",".join(report.scorer.models), "features": ",".join(report.scorer.feature_names)}
    report.run_id, report.version = log_cascade_scorer(report.scorer, settings, metrics=metrics, params=params,
                                                       register=register)
    return report
