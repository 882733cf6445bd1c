"""`routerops cascade calibrate --per-category`: one ladder and thresholds per category, chosen jointly
(routerops.training.cascade_plans), and the category classifier serving predicts with, from

- a user's outcome file (`--table`): columns `category`, per model `<m>`, `<m>|total_cost`, `<m>|score`,
  optional `prompt` (the classifier learns from it; without it requests must name their category)
  and `split` (train/test); rows with a missing or out-of-range value are reported and skipped;
- RouterBench (`--routerbench`): its datasets are the categories, its prompts train the classifier;
- the fleet's logged traffic (`--from-logs`): explored, labelled cascade requests
  (training/cascade_logged.py), each with the category its plan or its metadata logged.

With a fleet served (ROUTEROPS_FLEET_FILE) the ladders use only the fleet's models (an outcome column
may name a model by its fleet name or its `router_name`), cheapest first by the fleet's prices; the
others are left out, said in the notes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from routerops.fleet import Fleet, load_fleet
from routerops.models.cascade_config import CascadeConfig
from routerops.models.embeddings import get_embedder
from routerops.settings import Settings
from routerops.training.cascade_eval import OutcomeTable, score_routerbench
from routerops.training.cascade_logged import NoLoggedOutcomes, logged_category_table
from routerops.training.cascade_plans import (
    build_per_category_config,
    checked_margin,
    choose,
    choose_per_task,
    fit_category_classifier,
    ordered_ladders,
    table_fits,
)


class CalibrationError(ValueError):
    """What is wrong with the input, in words for the CLI."""


@dataclass
class CategoryData:
    """Train (and test) outcomes with each query's category and, where known, its prompt."""

    train: OutcomeTable
    train_categories: np.ndarray
    test: OutcomeTable | None
    test_categories: np.ndarray | None
    source: str
    train_prompts: list[str] | None = None
    test_prompts: list[str] | None = None
    notes: list[str] = field(default_factory=list)


def _bad_rows(df: pd.DataFrame, models: Sequence[str]) -> pd.Series:
    """Per row, why it cannot be used ('' when it can)."""
    why = pd.Series("", index=df.index, dtype=object)
    cat = df["category"]
    why[cat.isna() | (cat.astype(str).str.strip() == "")] = "no category"
    for m in models:
        for col, lo, hi in ((m, 0.0, 1.0), (f"{m}|total_cost", 0.0, math.inf), (f"{m}|score", 0.0, 1.0)):
            v = pd.to_numeric(df[col], errors="coerce")
            bad = v.isna() | (v < lo) | (v > hi)
            why[(why == "") & bad] = f"{col} missing or out of range"
    return why


def read_category_table(path: Path, train_frac: float, seed: int) -> CategoryData:
    df = pd.read_csv(path)
    if "category" not in df.columns:
        raise CalibrationError(f"{path}: --per-category needs a 'category' column (the plan each row belongs to)")
    models = [c[: -len("|score")] for c in df.columns if c.endswith("|score")]
    missing = [c for m in models for c in (m, f"{m}|total_cost") if c not in df.columns]
    if not models or missing:
        raise CalibrationError(f"{path}: the table needs <model>, <model>|total_cost and <model>|score columns"
                               + (f"; lacks {missing}" if missing else ""))
    why = _bad_rows(df, models)
    notes = []
    if (why != "").any():
        counts = why[why != ""].value_counts()
        first = [int(i) + 2 for i in why.index[why != ""][:5]]  # file line numbers (header is line 1)
        notes.append(f"{int((why != '').sum())} of {len(df)} rows skipped ("
                     + ", ".join(f"{r}: {n}" for r, n in counts.items()) + f"; first at lines {first})")
    df = df[why == ""].copy()
    if df.empty:
        raise CalibrationError(f"{path}: no usable rows ({notes[0] if notes else 'the table is empty'})")
    df["category"] = df["category"].astype(str).str.strip()
    if "split" in df.columns:
        bad = set(df["split"].astype(str)) - {"train", "test"}
        if bad:
            raise CalibrationError(f"{path}: column 'split' may hold only train/test, found {sorted(bad)}")
        tr, te = df[df["split"] == "train"], df[df["split"] == "test"]
    else:
        mask = np.random.default_rng(seed).random(len(df)) < train_frac
        tr, te = df[mask], df[~mask]
    has_prompt = "prompt" in df.columns and df["prompt"].notna().all()
    if not has_prompt:
        notes.append("no complete 'prompt' column: no category classifier (requests must name their category, "
                     "else they run the fallback plan)")
    return CategoryData(OutcomeTable.from_frame(tr, models), tr["category"].to_numpy(),
                        OutcomeTable.from_frame(te, models) if len(te) else None,
                        te["category"].to_numpy() if len(te) else None, str(path),
                        tr["prompt"].astype(str).tolist() if has_prompt else None,
                        te["prompt"].astype(str).tolist() if has_prompt and len(te) else None, notes)


def routerbench_category_data(folder: Path, datasets: Sequence[str], settings: Settings) -> CategoryData:
    scored = score_routerbench(folder, get_embedder(settings), settings.data_dir / "cascade_eval" / "embeddings",
                               datasets)
    return CategoryData(scored.train, scored.datasets_train, scored.test, scored.datasets_test,
                        f"routerbench:{folder}:{','.join(datasets)}", scored.prompts_train, scored.prompts_test)


def logged_category_data(session: Any, train_frac: float, seed: int) -> CategoryData:
    """The fleet's logged traffic (CalibrationError when there is none to learn from)."""
    try:
        logged = logged_category_table(session)
    except NoLoggedOutcomes as exc:
        raise CalibrationError(str(exc)) from None
    table = logged.table.outcome_table()
    cats = np.asarray(logged.categories)
    mask = np.random.default_rng(seed).random(len(cats)) < train_frac
    tr, te = np.flatnonzero(mask), np.flatnonzero(~mask)
    prompts = logged.prompts if all(p for p in logged.prompts) else None
    notes = [logged.report()]
    if prompts is None:
        notes.append("some logged requests have no stored prompt (ROUTEROPS_STORE_PROMPTS): no category classifier")
    return CategoryData(table.subset(tr), cats[tr], table.subset(te) if len(te) else None,
                        cats[te] if len(te) else None, "logs:cascade_steps",
                        [prompts[i] for i in tr] if prompts else None,
                        [prompts[i] for i in te] if prompts and len(te) else None, notes)


def restrict_to_fleet(data: CategoryData, fleet: Fleet | None) -> tuple[CategoryData, list[str]]:
    """The data with its models renamed to the fleet's names, the others left out; the ladder order
    (cheapest first: the fleet's prices, else the train mean cost)."""
    models = data.train.models
    if fleet is None:
        order = sorted(models, key=lambda m: float(data.train.cost[m].mean()))
        return data, order
    rename: dict[str, str] = {}
    for m in models:
        hit = next((fm.name for fm in fleet.models if m in (fm.name, fm.logs_name)), None)
        if hit is not None and hit not in rename.values():
            rename[m] = hit
    dropped = [m for m in models if m not in rename]
    if dropped:
        data.notes.append(f"left out, not served by the fleet ({fleet.source}): {', '.join(dropped)}")
    if not rename:
        raise CalibrationError(f"none of the outcome table's models {models} is served by the fleet "
                               f"({', '.join(fleet.names)})")

    def renamed(t: OutcomeTable | None) -> OutcomeTable | None:
        if t is None:
            return None
        return OutcomeTable([rename[m] for m in rename], {rename[m]: t.correct[m] for m in rename},
                            {rename[m]: t.cost[m] for m in rename}, {rename[m]: t.score[m] for m in rename})

    data.train, data.test = renamed(data.train), renamed(data.test)
    price = {fm.name: fm.price_in + fm.price_out for fm in fleet.models}
    order = sorted(rename.values(), key=lambda m: (price[m], fleet.names.index(m)))
    return data, order


def served_fleet(settings: Settings) -> Fleet | None:
    return load_fleet(settings.fleet_file) if settings.fleet_file else None


def calibrate_per_category(data: CategoryData, order: Sequence[str], settings: Settings, *,
                           budget: float | None, quality_target: float | None, max_length: int = 3,
                           grid_size: int = 21, seed: int = 0, holdout_margin: bool = False,
                           **config_fields: Any) -> CascadeConfig:
    """Plans per category chosen jointly on train, the pooled plan as the fallback, the classifier
    (when prompts are known); test figures replayed with the classifier's categories where there is one.
    With holdout_margin, a quality target is raised by the margin held-out halves of train need
    (cascade_plans.checked_margin), said in the notes and stored in `expected`."""
    ladders = ordered_ladders(data.train.models, order, max_length)
    fits = table_fits(data.train, data.test, ladders, grid_size)
    margin = None
    if holdout_margin and quality_target is not None:
        margin = checked_margin(fits, np.asarray(data.train_categories), quality_target=quality_target, seed=seed)
        data.notes.append(f"held-out halves of train need the target raised by {margin:.4f}: "
                          f"{quality_target:.4f} -> {quality_target + margin:.4f}")
        quality_target += margin
    elif holdout_margin:
        data.notes.append("--holdout-margin applies to a quality target (--match, --quality-target), not a budget")
    classifier = None
    test_cats = data.test_categories
    if data.train_prompts is not None:
        embedder = get_embedder(settings)
        classifier = fit_category_classifier(embedder, data.train_prompts, data.train_categories, seed=seed)
        if data.test is not None and data.test_prompts is not None:
            p = classifier.proba(np.asarray(embedder.encode(data.test_prompts), np.float64))
            test_cats = np.asarray(classifier.classes)[p.argmax(axis=1)]
    if test_cats is None:  # no test split: the train rows stand in for it
        test_cats = data.train_categories
    tp = choose_per_task(fits, np.asarray(data.train_categories), np.asarray(test_cats),
                         quality_target=quality_target, budget=budget)
    if tp is None:
        goal = f"mean cost <= {budget}" if budget is not None else f"quality >= {quality_target:.4f}"
        raise CalibrationError(f"no combination of per-category plans reaches {goal} on the training split")
    fallback = choose(fits, quality_target=quality_target, budget=budget)
    config = build_per_category_config(
        tp, fallback, classifier=classifier, source=data.source, budget=budget, quality_target=quality_target,
        objective="max_quality_under_budget" if budget is not None else "min_cost_at_quality", **config_fields)
    if margin is not None:
        config.expected["holdout_margin"] = margin
    return config
