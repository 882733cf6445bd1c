"""A learned answer scorer on static embeddings: P(this model's answer is correct) from the query and
the answer, cheap enough (~0.3 ms a text to embed, a linear model on top) to train on all of
RouterBench's train split on a CPU, where the fine-tuned cross-encoder managed 480 pairs.

Features per (query, answer): the static embeddings q and a, q*a and |q-a|, plus answer statistics
(length, lines, code block, refusal phrases, whether its form fits what the query asks for: a choice
letter for a multiple-choice prompt, code for a programming prompt). A one-letter answer says little
on its own, so a choice letter is embedded together with the text of the option it picks.

Bag-of-token embeddings cannot check reasoning, so one more feature is shared across models: a
query-difficulty estimate (ridge regression from q to the mean correctness of all trained models on
that query; out-of-fold on the training rows, so the per-model fits see it as they will on new ones).
Then one model per judged model (the rung's model): a standardized logistic regression whose C is
picked by cross-validated log loss on the training rows. The scorer records the embedder it was trained with
(name, dim, and for a built embedder its folder travels with the saved scorer) and refuses any other
one, as routers do (routerops.models.embedders.router_files).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from routerops.models.cascade_scorer.combiner import ConstantCombiner
from routerops.models.cascade_scorer.features import normalize_answer
from routerops.models.embedders.router_files import (
    EmbedderMismatchError,
    embedder_artifacts,
    embedder_from_router_metadata,
)
from routerops.models.embeddings import embedding_ref
from routerops.models.legacy import load_joblib
from routerops.settings import get_settings

META_FILE = "answer_scorer.json"
MODELS_FILE = "answer_models.joblib"
C_GRID = (0.00003, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.1)  # 1,000+ features, a few thousand rows: strong L2 wins on RouterBench
DIFFICULTY_ALPHA = 10.0
DIFFICULTY_FILE = "difficulty.joblib"

STAT_NAMES: tuple[str, ...] = (
    "log_chars", "log_lines", "has_code_block", "has_def", "refusal", "is_choice", "query_wants_choice",
    "query_wants_code", "form_fits", "choice_in_options", "log_query_chars",
)
_REFUSAL = re.compile(r"(?i)\b(i'?m sorry|i cannot|i can'?t|as an ai|i am unable|i'm unable|not possible to|"
                      r"cannot be determined|none of the (?:above|options))\b")
_OPTION = re.compile(r"(?m)^\s*\(?([A-E])\)\s*(.+?)\s*$")
_WANTS_CHOICE = re.compile(r"(?i)single choice|answer with the letter|\n\s*\(?[A-E]\)\s")
_WANTS_CODE = re.compile(r"(?i)\b(?:write a (?:python )?function|def |python|program)\b")


def _options(query: str) -> dict[str, str]:
    """The last question's options: "A) text" lines, read from the end until a letter repeats (a
    few-shot prompt lists earlier questions' options first)."""
    found = _OPTION.findall(query or "")
    out: dict[str, str] = {}
    for letter, text in reversed(found):  # the last question's options come last
        if letter in out:
            break
        out[letter] = text
    return out


def answer_view(query: str, answer: str) -> str:
    """The answer text that is embedded: a choice letter becomes "B) <the option's text>"."""
    norm = normalize_answer(answer)
    if len(norm) == 1 and norm.isalpha():
        text = _options(query).get(norm)
        if text:
            return f"{norm}) {text}"
    return answer or ""


def answer_stats(query: str, answer: str) -> list[float]:
    """STAT_NAMES values for one (query, answer)."""
    a, q = answer or "", query or ""
    norm = normalize_answer(a)
    is_choice = float(len(norm) == 1 and norm.isalpha())
    wants_choice = float(bool(_WANTS_CHOICE.search(q[-1500:])))
    wants_code = float(not wants_choice and bool(_WANTS_CODE.search(q[-1500:])))
    has_block = float("```" in a)
    has_def = float(bool(re.search(r"(?m)^\s*def \w+\(", a)))
    fits = is_choice if wants_choice else (max(has_block, has_def) if wants_code else 1.0)
    in_options = float(is_choice > 0 and norm in _options(q))
    return [float(np.log1p(len(a))), float(np.log1p(a.count("\n"))), has_block, has_def,
            float(bool(_REFUSAL.search(a))), is_choice, wants_choice, wants_code, fits, in_options,
            float(np.log1p(len(q)))]


def pair_features(embedder, queries: Sequence[str], answers: Sequence[str]) -> np.ndarray:  # noqa: ANN001
    """[q, a, q*a, |q-a|, stats] per pair, float32."""
    if len(queries) != len(answers):
        raise ValueError("queries and answers must have the same length")
    if not len(queries):
        return np.zeros((0, 4 * int(embedder.dim) + len(STAT_NAMES)), np.float32)
    q = np.asarray(embedder.encode(list(queries)), np.float32)
    a = np.asarray(embedder.encode([answer_view(x, y) for x, y in zip(queries, answers, strict=True)]), np.float32)
    stats = np.array([answer_stats(x, y) for x, y in zip(queries, answers, strict=True)], np.float32)
    return np.column_stack([q, a, q * a, np.abs(q - a), stats])


def _fit_difficulty(q: np.ndarray, queries: list[str], y: np.ndarray, seed: int, folds: int = 5):  # noqa: ANN202
    """Ridge from the query embedding to the query's mean correctness over all rows that share it;
    returns the model fit on every query and the out-of-fold prediction for each row."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold

    index: dict[str, int] = {}
    group = np.array([index.setdefault(t, len(index)) for t in queries])
    n = len(index)
    target = np.bincount(group, weights=y, minlength=n) / np.bincount(group, minlength=n)
    first = np.zeros(n, dtype=int)
    first[group[::-1]] = np.arange(len(group))[::-1]  # one row per query: its embedding
    qx = q[first]
    oof = np.full(n, float(target.mean()))
    if n >= 2 * folds:
        for tr, va in KFold(folds, shuffle=True, random_state=seed).split(qx):
            oof[va] = Ridge(alpha=DIFFICULTY_ALPHA).fit(qx[tr], target[tr]).predict(qx[va])
    return Ridge(alpha=DIFFICULTY_ALPHA).fit(qx, target), oof[group]


def _fit_one(x: np.ndarray, y: np.ndarray, seed: int, c_grid: Sequence[float]):  # noqa: ANN202
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(y).round().astype(int)
    if len(np.unique(y)) < 2:
        return ConstantCombiner(float(y.mean()) if len(y) else 0.5), None

    def make(c: float):  # noqa: ANN202
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000, random_state=seed))

    c = c_grid[0]
    folds = min(3, int(np.bincount(y).min()))
    if len(c_grid) > 1 and folds >= 2:
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        # log loss, not AUROC: a C that shrinks every logit to ~0 can rank as well, but its scale is
        # arbitrary, and the combiner (and out-of-fold scores pooled over folds) need calibrated ones
        scores = [cross_val_score(make(c), x, y, cv=cv, scoring="neg_log_loss").mean() for c in c_grid]
        c = c_grid[int(np.argmax(scores))]
    return make(c).fit(x, y), c


class AnswerScorer:
    """Per-model P(correct) from static-embedding features; `logits` feed the rung combiner."""

    def __init__(self, embedder, models: dict[str, Any], meta: dict[str, Any] | None = None,  # noqa: ANN001
                 difficulty=None):  # noqa: ANN001
        if difficulty is None:
            raise ValueError("an answer scorer needs its query-difficulty model")
        self.embedder = embedder
        self.models = dict(models)
        self.difficulty = difficulty
        self.embedding = embedding_ref(embedder).to_dict()
        self.meta = dict(meta or {})

    @classmethod
    def fit(cls, embedder, queries: Sequence[str], judged: Sequence[str], answers: Sequence[str],  # noqa: ANN001
            labels: Sequence[float], *, seed: int = 0, c_grid: Sequence[float] = C_GRID,
            features: np.ndarray | None = None, c_by_model: dict[str, float] | None = None) -> AnswerScorer:
        """One model per distinct name in `judged` (the model that wrote each answer); `c_by_model`
        fixes a model's C instead of picking it from `c_grid` by cross-validation."""
        judged = np.asarray(judged)
        x = pair_features(embedder, queries, answers) if features is None else features
        y = np.asarray(labels, np.float64)
        difficulty, d_oof = _fit_difficulty(x[:, : int(embedder.dim)], list(queries), y, seed)
        x = np.column_stack([x, d_oof])
        models, chosen = {}, {}
        for m in sorted(set(judged.tolist())):
            sel = judged == m
            grid = [c_by_model[m]] if c_by_model and c_by_model.get(m) is not None else c_grid
            models[m], chosen[m] = _fit_one(x[sel], y[sel], seed, grid)
        return cls(embedder, models, {"train_rows": int(len(y)), "c": chosen, "stats": list(STAT_NAMES)},
                   difficulty)

    def check_embedder(self, embedder) -> None:  # noqa: ANN001
        if embedder.name != self.embedding["name"] or int(embedder.dim) != int(self.embedding["dim"]):
            raise EmbedderMismatchError(
                f"this answer scorer was trained with embedder {self.embedding['name']} "
                f"({self.embedding['dim']}-d) but was given {embedder.name} ({embedder.dim}-d): its scores "
                f"would be meaningless. Use the embedder it was trained with (or retrain)")

    def logits(self, queries: Sequence[str], judged: Sequence[str], answers: Sequence[str],
               features: np.ndarray | None = None) -> np.ndarray:
        x = pair_features(self.embedder, queries, answers) if features is None else features
        x = np.column_stack([x, self.difficulty.predict(x[:, : int(self.embedder.dim)])])
        judged = list(judged)
        unknown = sorted(set(judged) - set(self.models))
        if unknown:
            raise ValueError(f"the answer scorer has no model for {unknown}; it was trained on {sorted(self.models)}")
        out = np.zeros(len(judged))
        for m in set(judged):
            sel = np.array([j == m for j in judged])
            p = np.clip(self.models[m].predict_proba(x[sel])[:, 1], 1e-6, 1 - 1e-6)
            out[sel] = np.log(p / (1 - p))
        return out

    def predict(self, queries: Sequence[str], judged: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits(queries, judged, answers)))

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        joblib.dump(self.models, path / MODELS_FILE)
        joblib.dump(self.difficulty, path / DIFFICULTY_FILE)
        embedder_artifacts(self.embedder, path)  # a built embedder's folder goes with the scorer
        (path / META_FILE).write_text(json.dumps(self.meta | {"embedding": self.embedding}, indent=1,
                                                 sort_keys=True, default=str))
        return path

    @classmethod
    def load(cls, path: Path | str, embedder=None, settings=None) -> AnswerScorer:  # noqa: ANN001
        """With `embedder`: that one, refused unless it is the recorded one. Without: the scorer's own
        embedder folder, else this process's configured embedder of the recorded backend (checked)."""

        path = Path(path)
        if not (path / META_FILE).is_file():
            raise FileNotFoundError(f"{path} is not a saved answer scorer (no {META_FILE})")
        meta = json.loads((path / META_FILE).read_text())
        ref = meta.pop("embedding")
        if embedder is None:
            embedder = embedder_from_router_metadata(ref, path, settings or get_settings())
        scorer = cls(embedder, load_joblib(path / MODELS_FILE), meta, load_joblib(path / DIFFICULTY_FILE))
        scorer.embedding = ref
        scorer.check_embedder(embedder)
        return scorer
