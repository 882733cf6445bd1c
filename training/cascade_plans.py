"""Per-category cascade plans: one ladder and thresholds per category, chosen jointly so that the
pooled quality meets a target at the least pooled cost (or the best quality within a budget), and the
category classifier serving uses to pick a plan for a request that does not name its category.

Shared by `routerops cascade calibrate --per-category` (outcome files, RouterBench, logged traffic) and
benchmarks/cascade_routerbench.py (its task-aware plans). A "fit" is anything with the fields of
training.cascade_scorer.routerbench.LadderFit: ladder, scorer, grids, q, c (the train surface over the
threshold grids), fit_table and test_table (OutcomeTables whose `score` is the rung scorer's P(good)).
`table_fits` makes them from an outcome table whose scores are given (a file, the logs).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from routerops.models.cascade_config import CascadeConfig, CategoryClassifier, CategoryPlan
from routerops.models.cascade_scorer.features import short_rung
from routerops.models.embeddings import embedding_ref
from routerops.training.cascade_eval import OutcomeTable, _ladder_surface, simulate, threshold_grid


@dataclass(frozen=True)
class Choice:
    ladder: tuple[str, ...]
    thresholds: tuple[float, ...]
    scorer: str
    train_quality: float
    train_cost: float
    test_quality: float
    test_cost: float

    def describe(self) -> str:
        parts = [short_rung(self.ladder[0])]
        for t, m in zip(self.thresholds, self.ladder[1:], strict=True):
            parts.append(f"(p<{t:.3f})-> {short_rung(m)}" if math.isfinite(t) else f"(always)-> {short_rung(m)}")
        return " ".join(parts)


def choose(fits: Sequence[Any], *, budget: float | None = None, quality_target: float | None = None
           ) -> Choice | None:
    """The best ladder and thresholds on train-B for one objective, replayed on test."""
    if (budget is None) == (quality_target is None):
        raise ValueError("give exactly one of budget or quality_target")
    best: tuple[float, float, Any, int] | None = None
    for f in fits:
        feasible = f.c <= budget + 1e-12 if budget is not None else f.q >= quality_target - 1e-12  # type: ignore[operator]
        if not feasible.any():
            continue
        idx = np.flatnonzero(feasible)
        top = idx[np.lexsort((f.c[idx], -f.q[idx]))[0]] if budget is not None else idx[np.lexsort((-f.q[idx], f.c[idx]))[0]]
        q, c = float(f.q[top]), float(f.c[top])
        key = (-q, c) if budget is not None else (c, -q)
        if best is None or key < ((-best[0], best[1]) if budget is not None else (best[1], -best[0])):
            best = (q, c, f, int(top))
    if best is None:
        return None
    q, c, f, top = best
    combo = np.unravel_index(top, tuple(len(g) for g in f.grids)) if f.grids else ()
    thresholds = tuple(float(f.grids[i][j]) for i, j in enumerate(combo))
    tq, tc = simulate(f.test_table, f.ladder, thresholds)
    return Choice(f.ladder, thresholds, f.scorer, q, c, tq, tc)


@dataclass(frozen=True)
class TaskPlans:
    """One plan per task (what a cascade that knows the query's task would run), chosen together so
    the pooled train quality meets the target at the least pooled train cost; figures pooled over
    tasks by their query counts."""

    plans: dict[str, Choice]
    train_quality: float
    train_cost: float
    test_quality: float
    test_cost: float


def _front(q: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Indices of the (quality up, cost down) Pareto front, cheapest first."""
    order = np.lexsort((-q, c))
    best, keep = -np.inf, []
    for i in order:
        if q[i] > best + 1e-12:
            keep.append(i)
            best = q[i]
    return np.array(keep, dtype=np.int64)


@dataclass(frozen=True)
class TaskFronts:
    """Each task's train Pareto front over every (ladder, scorer, thresholds), and their exact merge."""

    tasks: list[str]
    per_task: list[tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]  # weight, q, c, fit, flat index
    pooled_q: np.ndarray
    pooled_c: np.ndarray
    picks: np.ndarray  # (front point, task) -> index into that task's front


def task_fronts(fits: Sequence[Any], fit_tasks: np.ndarray) -> TaskFronts:
    tasks = sorted(set(fit_tasks.tolist()))
    per_task = []
    for t in tasks:
        idx = np.flatnonzero(fit_tasks == t)
        qs, cs, fi, fl = [], [], [], []
        for k, f in enumerate(fits):
            q, c = _ladder_surface(f.fit_table.subset(idx), f.ladder, f.grids)
            q, c = np.atleast_1d(q).ravel(), np.atleast_1d(c).ravel()
            keep = _front(q, c)
            qs.append(q[keep])
            cs.append(c[keep])
            fi.append(np.full(len(keep), k))
            fl.append(keep)
        q, c, fi_a, fl_a = (np.concatenate(v) for v in (qs, cs, fi, fl))
        keep = _front(q, c)
        per_task.append((len(idx) / len(fit_tasks), q[keep], c[keep], fi_a[keep], fl_a[keep]))
    # merge the fronts: pooled (q, c) of every pair, pruned to its front, keeping which points made it
    w0, q0, c0, *_ = per_task[0]
    pooled_q, pooled_c, picks = w0 * q0, w0 * c0, np.arange(len(q0))[:, None]
    for w, q, c, *_ in per_task[1:]:
        pq = (pooled_q[:, None] + w * q[None, :]).ravel()
        pc = (pooled_c[:, None] + w * c[None, :]).ravel()
        keep = _front(pq, pc)
        a, b = np.unravel_index(keep, (len(pooled_q), len(q)))
        pooled_q, pooled_c, picks = pq[keep], pc[keep], np.column_stack([picks[a], b])
    return TaskFronts([str(t) for t in tasks], per_task, pooled_q, pooled_c, picks)


def choose_per_task(fits: Sequence[Any], fit_tasks: np.ndarray, test_tasks: np.ndarray, *,
                    quality_target: float | None = None, budget: float | None = None,
                    fronts: TaskFronts | None = None) -> TaskPlans | None:
    """Per task, the Pareto front of every (ladder, scorer, thresholds) on that task's train rows;
    then the cheapest combination of one front point per task whose count-weighted quality meets
    the target (fronts merged pairwise and pruned, so this is exact). Replayed on the test rows of
    each task as `test_tasks` gives them (pass predicted tasks to replay what serving would do).
    `fronts` (task_fronts of the same fits) saves recomputing them for each target. With `budget`
    instead: the best pooled quality whose pooled mean cost stays within it."""
    if (budget is None) == (quality_target is None):
        raise ValueError("give exactly one of budget or quality_target")
    fronts = fronts or task_fronts(fits, fit_tasks)
    tasks, per_task, pooled_q, pooled_c, picks = (fronts.tasks, fronts.per_task, fronts.pooled_q,
                                                  fronts.pooled_c, fronts.picks)
    if budget is not None:
        ok = np.flatnonzero(pooled_c <= budget + 1e-12)
        if not len(ok):
            return None
        best = ok[np.lexsort((pooled_c[ok], -pooled_q[ok]))[0]]
    else:
        ok = np.flatnonzero(pooled_q >= quality_target - 1e-12)
        if not len(ok):
            return None
        best = ok[np.argmin(pooled_c[ok])]
    plans, tq, tc = {}, 0.0, 0.0
    for t, (_w, q, c, fi_a, fl_a), j in zip(tasks, per_task, picks[best], strict=True):
        f = fits[int(fi_a[j])]
        combo = np.unravel_index(int(fl_a[j]), tuple(len(g) for g in f.grids)) if f.grids else ()
        thresholds = tuple(float(f.grids[i][k]) for i, k in enumerate(combo))
        test_idx = np.flatnonzero(test_tasks == t)
        q_test, c_test = simulate(f.test_table.subset(test_idx), f.ladder, thresholds)
        plans[str(t)] = Choice(f.ladder, thresholds, f.scorer, float(q[j]), float(c[j]), q_test, c_test)
        tq += len(test_idx) / len(test_tasks) * q_test
        tc += len(test_idx) / len(test_tasks) * c_test
    return TaskPlans(plans, float(pooled_q[best]), float(pooled_c[best]), tq, tc)


@dataclass
class TableFit:
    """A ladder's train surface on an outcome table with given scores (the LadderFit fields)."""

    ladder: tuple[str, ...]
    scorer: str
    grids: list[np.ndarray]
    q: np.ndarray
    c: np.ndarray
    fit_table: OutcomeTable
    test_table: OutcomeTable
    combiners: list = field(default_factory=list)


def ordered_ladders(models: Sequence[str], order: Sequence[str], max_length: int = 3) -> list[tuple[str, ...]]:
    """Every single model and every ladder of 2..max_length models in `order` (cheapest first)."""
    ranked = [m for m in order if m in set(models)]
    out: list[tuple[str, ...]] = []
    for k in range(1, max_length + 1):
        out += list(itertools.combinations(ranked, k))
    return out


def table_fits(train: OutcomeTable, test: OutcomeTable | None, ladders: Sequence[Sequence[str]],
               grid_size: int = 21, scorer: str = "table") -> list[TableFit]:
    """One fit per ladder: the threshold grids are quantiles of the train scores of its rungs."""
    test = test if test is not None and test.n else train
    fits = []
    for ladder in ladders:
        ladder = tuple(ladder)
        grids = [threshold_grid(train.score[m], grid_size) for m in ladder[:-1]]
        q, c = _ladder_surface(train, ladder, grids)
        fits.append(TableFit(ladder, scorer, grids, np.atleast_1d(q).ravel(), np.atleast_1d(c).ravel(), train, test))
    return fits


def fit_category_classifier(embedder: Any, prompts: Sequence[str], categories: Sequence[str], seed: int = 0,
                            c: float = 1.0) -> CategoryClassifier:
    """A multinomial logistic regression on the prompts' embeddings (what serving predicts with)."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray([str(t) for t in categories])
    classes = sorted(set(y.tolist()))
    ref = embedding_ref(embedder).to_dict()
    if len(classes) == 1:  # one category: it is always the prediction
        return CategoryClassifier(classes, [[0.0] * int(ref["dim"])], [0.0], ref, 1.0, len(y))
    x = np.asarray(embedder.encode(list(prompts)), np.float32)
    clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x, y)
    return CategoryClassifier.from_sklearn(clf, ref, train_accuracy=round(float(clf.score(x, y)), 4), n_train=len(y))


def predict_tasks(embedder: Any, train_prompts: Sequence[str], train_tasks: np.ndarray,
                  prompts: Sequence[str], seed: int = 0) -> np.ndarray:
    """The task of each prompt as a serving cascade would infer it: the category classifier
    (fit_category_classifier) on the prompts' embeddings, fit on the train prompts' tasks."""
    clf = fit_category_classifier(embedder, train_prompts, train_tasks, seed=seed)
    p = clf.proba(np.asarray(embedder.encode(list(prompts)), np.float64))
    return np.asarray(clf.classes)[p.argmax(axis=1)]


def build_per_category_config(tp: TaskPlans, fallback: Choice | None, *, classifier: CategoryClassifier | None,
                              **config_fields: Any) -> CascadeConfig:
    """The CascadeConfig `calibrate --per-category` stores: one plan per category, the classifier, and
    the pooled plan (or, without one, the dearest category plan's ladder) as the fallback."""
    plans = {t: CategoryPlan(list(ch.ladder), [float(x) for x in ch.thresholds],
                             expected={"train_quality": ch.train_quality, "train_cost": ch.train_cost,
                                       "test_quality": ch.test_quality, "test_cost": ch.test_cost},
                             scorer_uri=None) for t, ch in tp.plans.items()}
    if fallback is None:
        fallback = max(tp.plans.values(), key=lambda ch: ch.train_cost)
    expected = {"train_quality": tp.train_quality, "train_cost": tp.train_cost, "test_quality": tp.test_quality,
                "test_cost": tp.test_cost}
    return CascadeConfig(models=list(fallback.ladder), thresholds=[float(x) for x in fallback.thresholds],
                         plans=plans, classifier=classifier, expected=expected, **config_fields)


def _rows(fit: Any, idx: np.ndarray, check: np.ndarray) -> TableFit:
    """`fit` restricted to the train rows `idx`, replayed on the train rows `check`."""
    return TableFit(fit.ladder, fit.scorer, fit.grids, fit.q, fit.c, fit.fit_table.subset(idx),
                    fit.fit_table.subset(check))


def checked_margin(fits: Sequence[Any], fit_tasks: np.ndarray, *, quality_target: float,
                   margins: Sequence[float] = tuple(np.linspace(0.0, 0.04, 17)), seed: int = 0) -> float:
    """How much to raise the pooled train target so that plans chosen on train keep it on queries they
    were not chosen on: the train rows are cut in two halves (stratified by category); plans chosen on
    one half at target + m are replayed on the other, both ways; the smallest m whose mean held-out
    quality reaches the target (the largest margin tried when none does). Per-category plans chosen on
    few rows per category find accuracy surpluses that are partly noise; this discounts them."""
    fit_tasks = np.asarray(fit_tasks)
    rng = np.random.default_rng(seed)
    half = np.zeros(len(fit_tasks), dtype=bool)
    for t in set(fit_tasks.tolist()):
        idx = rng.permutation(np.flatnonzero(fit_tasks == t))
        half[idx[: len(idx) // 2]] = True
    ways = []
    for a, b in ((half, ~half), (~half, half)):
        ia, ib = np.flatnonzero(a), np.flatnonzero(b)
        sub = [_rows(f, ia, ib) for f in fits]
        ways.append((sub, fit_tasks[ia], fit_tasks[ib], task_fronts(sub, fit_tasks[ia])))
    for m in margins:
        held = []
        for sub, ta, tb, fronts in ways:
            tp = choose_per_task(sub, ta, tb, quality_target=quality_target + m, fronts=fronts)
            if tp is None:
                return float(m)  # nothing reaches the raised target: no larger margin helps
            held.append(tp.test_quality)
        if float(np.mean(held)) >= quality_target - 1e-12:
            return float(m)
    return float(margins[-1])
