"""Cascade scorers on RouterBench: ladder-aware rung scores, thresholds fit on train, figures on test.

RouterBench's train split is cut in two (seeded): part A fine-tunes the cross-encoder, part B fits
the rung combiners and the thresholds on cross-encoder scores it has never been trained on. The
static-embedding answer scorer is cheap enough to learn from all of train: it is cross-fitted (part B
gets out-of-fold scores from models that never saw those queries, test gets the model fit on all of
train), so the combiners and thresholds still see scores as they will be on new queries. Test is
only ever replayed. A rung's score depends on the ladder (agreement with the rung before), so every
ladder gets its own combiners and its own threshold surface.

A rung may take a second opinion (agreement-based cascading, Kolawole et al. 2024): the rung "A+B"
pays for A and for B, returns A's answer and scores it with A's agreement with B as well (the
`*_sample` signals). RouterBench holds one answer per model, so a second cheap model stands in for
the second sample of the same model that serving draws (routerops.serving.cascade, CascadeStep.second_sample).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from routerops.models.cascade_scorer.answer_scorer import AnswerScorer, pair_features
from routerops.models.cascade_scorer.cross_encoder import CrossEncoderScorer, TrainConfig
from routerops.models.cascade_scorer.features import (
    SIGNAL_NAMES,
    base_models,
    normalize_answer,
    rung_parts,
    token_overlap,
)
from routerops.models.cascade_scorer.model import fit_combiner, rung_metrics
from routerops.training.cascade_eval import (
    GPT4,
    NEVER,
    ROUTERBENCH_SETS,
    OutcomeTable,
    _ladder_surface,
    load_routerbench,
    response_text,
    threshold_grid,
)
from routerops.training.cascade_plans import (  # noqa: F401 - the benchmark and tests read them here too
    Choice,
    TaskFronts,
    TaskPlans,
    choose,
    choose_per_task,
    predict_tasks,
    task_fronts,
)

log = logging.getLogger(__name__)

# Models at most 10% of GPT-4's cost per query, and GPT-4 (claude-v1/v2 cost 70-75% of it and score less).
DEFAULT_MODELS = ("mistralai/mistral-7b-chat", "WizardLM/WizardLM-13B-V1.2", "mistralai/mixtral-8x7b-chat",
                  "meta/code-llama-instruct-34b-chat", "zero-one-ai/Yi-34B-Chat", "claude-instant-v1",
                  "meta/llama-2-70b-chat", "gpt-3.5-turbo-1106", GPT4)


def alias_rungs(per_model: dict[str, np.ndarray], rungs: Sequence[str]) -> dict[str, np.ndarray]:
    """A per-model score dict extended to second-opinion rungs (the answer scored is the primary's)."""
    return per_model | {r: per_model[rung_parts(r)[0]] for r in rungs if rung_parts(r)[1] is not None
                        and rung_parts(r)[0] in per_model}


@dataclass
class Split:
    """One set of queries: per model correctness, cost, response text; the prompt; the task."""

    prompts: list[str]
    tasks: np.ndarray
    correct: dict[str, np.ndarray]
    cost: dict[str, np.ndarray]
    answers: dict[str, list[str]]
    partner: dict[str, str] = field(default_factory=dict)  # second-opinion rung -> the model asked

    @property
    def n(self) -> int:
        return len(self.prompts)

    def add_rung(self, rung: str) -> None:
        """Make a second-opinion rung "A+B" a column: A's correctness and answer, A's plus B's cost."""
        primary, partner = rung_parts(rung)
        if partner is None or rung in self.correct:
            return
        self.correct[rung] = self.correct[primary]
        self.cost[rung] = self.cost[primary] + self.cost[partner]
        self.answers[rung] = self.answers[primary]
        self.partner[rung] = partner

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, models: Sequence[str]) -> Split:
        return cls([response_text(p) for p in frame["prompt"]], frame["dataset"].to_numpy(),
                   {m: frame[m].to_numpy(np.float64) for m in models},
                   {m: frame[f"{m}|total_cost"].to_numpy(np.float64) for m in models},
                   {m: [response_text(a) for a in frame[f"{m}|model_response"]] for m in models})

    def take(self, idx: np.ndarray) -> Split:
        return Split([self.prompts[i] for i in idx], self.tasks[idx], {m: v[idx] for m, v in self.correct.items()},
                     {m: v[idx] for m, v in self.cost.items()},
                     {m: [v[i] for i in idx] for m, v in self.answers.items()}, dict(self.partner))


@dataclass
class RouterBenchData:
    models: list[str]
    ce_train: Split  # train part A: the cross-encoder learns here
    fit: Split  # train part B: combiners and thresholds
    test: Split


def load_data(folder: Path | str, datasets: Sequence[str] = ROUTERBENCH_SETS, models: Sequence[str] = DEFAULT_MODELS,
              ce_fraction: float = 0.4, seed: int = 0) -> RouterBenchData:
    """`models` may name second-opinion rungs ("A+B"); they become columns of every split."""
    train, test = load_routerbench(folder, "train", datasets), load_routerbench(folder, "test", datasets)
    plain = base_models(models)
    same = [r for r in models if rung_parts(r)[1] == rung_parts(r)[0]]
    if same:
        raise ValueError(f"RouterBench holds one answer per model, so it cannot replay a second sample {same}; "
                         "name a different partner model (A+B)")
    unknown = set(plain) - set(train.models)
    if unknown:
        raise ValueError(f"RouterBench has no models {sorted(unknown)}; it has {train.models}")
    full, test_split = Split.from_frame(train.frame, plain), Split.from_frame(test.frame, plain)
    for split in (full, test_split):
        for rung in models:
            split.add_rung(rung)
    rng = np.random.default_rng(seed)
    in_a = rng.random(full.n) < ce_fraction
    return RouterBenchData(list(models), full.take(np.flatnonzero(in_a)), full.take(np.flatnonzero(~in_a)),
                           test_split)


class SignalCache:
    """Pairwise agreement / overlap arrays per split, computed once per model pair."""

    def __init__(self, split: Split):
        self.split = split
        self.norm = {m: [normalize_answer(a) for a in ans] for m, ans in split.answers.items()}
        self._agree: dict[tuple[str, str], np.ndarray] = {}
        self._overlap: dict[tuple[str, str], np.ndarray] = {}
        self.log_length = {m: np.log1p([len(a) for a in ans]) for m, ans in split.answers.items()}

    def agree(self, a: str, b: str) -> np.ndarray:
        key = tuple(sorted((a, b)))
        if key not in self._agree:
            self._agree[key] = np.array([x == y for x, y in zip(self.norm[a], self.norm[b], strict=True)], float)
        return self._agree[key]

    def overlap(self, a: str, b: str) -> np.ndarray:
        key = tuple(sorted((a, b)))
        if key not in self._overlap:
            self._overlap[key] = np.array([token_overlap(x, y) for x, y in
                                           zip(self.split.answers[a], self.split.answers[b], strict=True)])
        return self._overlap[key]

    def rung_signals(self, ladder: Sequence[str], rung: int) -> np.ndarray:
        """SIGNAL_NAMES columns for rung `rung` of `ladder` (same values signals() gives row by row)."""
        m, n = ladder[rung], self.split.n
        cols = {name: np.zeros(n) for name in SIGNAL_NAMES}
        if rung > 0:
            prev = ladder[rung - 1]
            cols["has_prev"] = np.ones(n)
            cols["agree_prev"] = self.agree(m, prev)
            cols["overlap_prev"] = self.overlap(m, prev)
            cols["agree_earlier"] = np.mean([self.agree(m, e) for e in ladder[:rung]], axis=0)
        partner = self.split.partner.get(m)
        if partner is not None:
            cols["has_sample"] = np.ones(n)
            cols["agree_sample"] = self.agree(m, partner)
            cols["overlap_sample"] = self.overlap(m, partner)
        cols["log_length"] = self.log_length[m]
        return np.column_stack([cols[name] for name in SIGNAL_NAMES])


def ladder_features(cache: SignalCache, ladder: Sequence[str], rung: int,
                    ce_logits: dict[str, np.ndarray] | None, as_logits: dict[str, np.ndarray] | None = None
                    ) -> np.ndarray:
    """Columns in CascadeScorer.feature_names_for order: [ce_logit], [answer_logit], signals."""
    x = cache.rung_signals(ladder, rung)
    if as_logits is not None:
        x = np.column_stack([as_logits[ladder[rung]], x])
    if ce_logits is not None:
        x = np.column_stack([ce_logits[ladder[rung]], x])
    return x


@dataclass
class LadderFit:
    ladder: tuple[str, ...]
    scorer: str  # "signals" | "signals+ce" | "signals+as" | "signals+as+ce" | "oracle"
    grids: list[np.ndarray]
    q: np.ndarray  # train-B quality per threshold combination
    c: np.ndarray
    fit_table: OutcomeTable
    test_table: OutcomeTable
    combiners: list = field(default_factory=list)


def fit_ladder(ladder: Sequence[str], fit: SignalCache, test: SignalCache, *, scorer: str = "signals",
               ce_fit: dict[str, np.ndarray] | None = None, ce_test: dict[str, np.ndarray] | None = None,
               as_fit: dict[str, np.ndarray] | None = None, as_test: dict[str, np.ndarray] | None = None,
               grid_size: int = 21) -> LadderFit:
    ladder = tuple(ladder)
    fs, ts = fit.split, test.split
    s_fit: dict[str, np.ndarray] = {}
    s_test: dict[str, np.ndarray] = {}
    combiners = []
    for i, m in enumerate(ladder[:-1]):
        if scorer == "oracle":
            s_fit[m], s_test[m] = fs.correct[m].copy(), ts.correct[m].copy()
            continue
        use_ce, use_as = scorer.endswith("+ce"), "+as" in scorer
        x_fit = ladder_features(fit, ladder, i, ce_fit if use_ce else None, as_fit if use_as else None)
        x_test = ladder_features(test, ladder, i, ce_test if use_ce else None, as_test if use_as else None)
        comb = fit_combiner(x_fit, fs.correct[m])
        combiners.append(comb)
        s_fit[m], s_test[m] = comb.predict_proba(x_fit)[:, 1], comb.predict_proba(x_test)[:, 1]
    last = ladder[-1]
    s_fit[last], s_test[last] = np.zeros(fs.n), np.zeros(ts.n)

    def table(split: Split, scores: dict[str, np.ndarray]) -> OutcomeTable:
        return OutcomeTable(list(ladder), {m: split.correct[m] for m in ladder}, {m: split.cost[m] for m in ladder},
                            scores)

    fit_t, test_t = table(fs, s_fit), table(ts, s_test)
    size = grid_size if len(ladder) <= 3 else max(5, int(round(grid_size ** (2 / 3))) + 2)
    grids = [threshold_grid(s_fit[m], size) if scorer != "oracle" else np.array([0.5, NEVER]) for m in ladder[:-1]]
    q, c = _ladder_surface(fit_t, ladder, grids)
    return LadderFit(ladder, scorer, grids, np.atleast_1d(q).ravel(), np.atleast_1d(c).ravel(), fit_t, test_t,
                     combiners)


def candidate_ladders(models: Sequence[str], mean_cost: dict[str, float], max_length: int = 4,
                      last: str | None = GPT4) -> list[tuple[str, ...]]:
    """Every single model, then cheaper-first ladders of length 2..max_length (3 for those not ending
    in `last`). A second-opinion rung is only a first rung (it is the cheap tier's check; the cost
    order does not apply to it), followed by models it does not call; no ladder calls a model twice."""
    plain = sorted((m for m in models if rung_parts(m)[1] is None), key=lambda m: mean_cost[m])
    firsts: list[tuple[str, ...]] = [()] + [(m,) for m in models if rung_parts(m)[1] is not None]
    out: list[tuple[str, ...]] = [(m,) for m in plain]
    for head in firsts:
        called = {m for r in head for m in rung_parts(r) if m is not None}
        rest = [m for m in plain if m not in called]
        for k in range(2, max_length + 1):
            for tail in itertools.combinations(rest, k - len(head)):
                combo = head + tail
                if k == max_length and last is not None and combo[-1] != last:
                    continue
                out.append(combo)
    return out


def ce_cache_key(data: RouterBenchData, models: Sequence[str], config: dict) -> str:
    h = hashlib.sha256(json.dumps({"models": list(models), "config": config, "n": [data.ce_train.n, data.fit.n,
                                   data.test.n], "p0": data.fit.prompts[:3]}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def train_cross_encoder(split: Split, models: Sequence[str], *, examples: int, max_length: int,
                        threads: int | None, seed: int = 0, progress: bool = True):  # noqa: ANN201
    """Fine-tune on up to `examples` (query, model, answer) pairs drawn from `split` over `models`."""

    rng = np.random.default_rng(seed)
    pairs = [(i, m) for i in range(split.n) for m in models]
    pick = rng.choice(len(pairs), size=min(examples, len(pairs)), replace=False)
    ce = CrossEncoderScorer.base(seed=seed)
    stats = ce.fit([split.prompts[pairs[k][0]] for k in pick], [pairs[k][1] for k in pick],
                   [split.answers[pairs[k][1]][pairs[k][0]] for k in pick],
                   [split.correct[pairs[k][1]][pairs[k][0]] for k in pick],
                   TrainConfig(max_length=max_length, seed=seed, threads=threads), progress=progress)
    return ce, stats


def score_split(ce, split: Split, models: Sequence[str], progress: bool = True) -> dict[str, np.ndarray]:  # noqa: ANN001
    return {m: ce.logits(split.prompts, [m] * split.n, split.answers[m], progress=progress) for m in models}


def cross_encoder_logits(data: RouterBenchData, models: Sequence[str], *, examples: int, max_length: int,
                         threads: int | None, cache_dir: Path | None, seed: int = 0, progress: bool = True
                         ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """Fine-tune on part A, score part B and test. Logits are cached (npz keyed by the configuration)
    so a rerun does not pay again."""

    config = {"examples": examples, "max_length": max_length, "seed": seed}
    path = None
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        path = cache_dir / f"ce-{ce_cache_key(data, models, config)}.npz"
        if path.is_file():
            z = np.load(path, allow_pickle=False)
            stats = json.loads(str(z["stats"])) | {"cached": True}
            return ({m: z[f"fit::{m}"] for m in models}, {m: z[f"test::{m}"] for m in models}, stats)
    ce, stats = train_cross_encoder(data.ce_train, models, examples=examples, max_length=max_length,
                                    threads=threads, seed=seed, progress=progress)
    t0 = time.perf_counter()
    fit_l, test_l = score_split(ce, data.fit, models, progress), score_split(ce, data.test, models, progress)
    stats["score_seconds"] = time.perf_counter() - t0
    stats["scored_pairs"] = (data.fit.n + data.test.n) * len(models)
    if path is not None:
        np.savez(path, stats=json.dumps(stats), **{f"fit::{m}": v for m, v in fit_l.items()},
                 **{f"test::{m}": v for m, v in test_l.items()})
    return fit_l, test_l, stats


def answer_scorer_logits(data: RouterBenchData, models: Sequence[str], embedder, *, folds: int = 5,  # noqa: ANN001
                         seed: int = 0) -> tuple[object, dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """Fit the static-embedding answer scorer on all of train (parts A and B, every model in `models`)
    and cross-fit it: returns (the scorer fit on all of train, out-of-fold logits on part B per model,
    test logits per model, stats). Each fold's scorer keeps the C the full fit chose per model."""

    t0 = time.perf_counter()
    models = list(models)
    prompts = data.ce_train.prompts + data.fit.prompts
    n_a, n = data.ce_train.n, data.ce_train.n + data.fit.n
    x_train = {m: pair_features(embedder, prompts, data.ce_train.answers[m] + data.fit.answers[m]) for m in models}
    x_test = {m: pair_features(embedder, data.test.prompts, data.test.answers[m]) for m in models}
    y_train = {m: np.concatenate([data.ce_train.correct[m], data.fit.correct[m]]) for m in models}
    t_embed = time.perf_counter() - t0

    def rows(idx: np.ndarray) -> tuple[list[str], list[str], list[str], np.ndarray, np.ndarray]:
        q = [prompts[i] for i in idx] * len(models)
        judged = [m for m in models for _ in idx]
        return q, judged, [""] * len(q), np.concatenate([y_train[m][idx] for m in models]), \
            np.concatenate([x_train[m][idx] for m in models])

    q, judged, blank, y, x = rows(np.arange(n))
    full = AnswerScorer.fit(embedder, q, judged, blank, y, seed=seed, features=x)
    test = {m: full.logits([""] * data.test.n, [m] * data.test.n, [""] * data.test.n, features=x_test[m])
            for m in models}
    oof = {m: np.zeros(n) for m in models}
    fold_of = np.random.default_rng(seed).permutation(n) % folds
    for k in range(folds):
        q, judged, blank, y, x = rows(np.flatnonzero(fold_of != k))
        part = AnswerScorer.fit(embedder, q, judged, blank, y, seed=seed, features=x, c_by_model=full.meta["c"])
        held = np.flatnonzero(fold_of == k)
        for m in models:
            oof[m][held] = part.logits([""] * len(held), [m] * len(held), [""] * len(held),
                                       features=x_train[m][held])
    stats = {"train_rows": int(n * len(models)), "folds": folds, "embed_seconds": t_embed,
             "seconds": time.perf_counter() - t0, "c": full.meta.get("c"), "embedder": embedder.name}
    return full, {m: v[n_a:] for m, v in oof.items()}, test, stats


def rung_report(fit: LadderFit, tasks: np.ndarray | None = None) -> dict[str, dict]:
    """Test AUROC / ECE of each scored rung over all test queries, pooled and (given tasks) per task."""
    out: dict[str, dict] = {}
    for m in fit.ladder[:-1]:
        y, p = fit.test_table.correct[m], fit.test_table.score[m]
        r = rung_metrics(y, p)
        out[m] = {"auroc": r.auroc, "ece": r.ece, "n": r.n, "correct_rate": r.correct_rate}
        if tasks is not None:
            out[m]["per_task"] = {}
            for t in sorted(set(tasks)):
                rt = rung_metrics(y[tasks == t], p[tasks == t])
                out[m]["per_task"][str(t)] = {"auroc": rt.auroc, "ece": rt.ece, "n": rt.n,
                                              "correct_rate": rt.correct_rate}
    return out
