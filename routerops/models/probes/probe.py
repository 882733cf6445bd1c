"""Linear probes (standardize + logistic regression), their selection on validation, and metrics.

A probe predicts P(the weak answer is good). One probe per feature key (layer x pooling, or the text
embedding); the key and the regularization strength are chosen by validation AUROC, then the
chosen probe is refit on train + validation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

C_GRID: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0)


def make_probe(c: float = 0.1, seed: int = 0):  # noqa: ANN201 - sklearn Pipeline
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=seed))


def auroc(y: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present (undefined)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, np.asarray(scores, dtype=np.float64)))


def reliability(y: Sequence[int] | np.ndarray, p: Sequence[float] | np.ndarray, n_bins: int = 10
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal-width bins over [0, 1]: (mean predicted, observed frequency, count) per bin (NaN if empty).
    A prediction of exactly 1.0 falls in the last bin."""
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    conf = np.full(n_bins, np.nan)
    freq = np.full(n_bins, np.nan)
    count = np.bincount(bins, minlength=n_bins).astype(int)
    for b in range(n_bins):
        if count[b]:
            conf[b] = p[bins == b].mean()
            freq[b] = y[bins == b].mean()
    return conf, freq, count


def ece(y: Sequence[int] | np.ndarray, p: Sequence[float] | np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error: sum over bins of (bin share) * |observed - mean predicted|."""
    conf, freq, count = reliability(y, p, n_bins)
    total = count.sum()
    if total == 0:
        return float("nan")
    used = count > 0
    return float(np.sum(count[used] / total * np.abs(freq[used] - conf[used])))


@dataclass
class KeyResult:
    key: str
    c: float
    val_auroc: float
    test_auroc: float | None = None
    test_ece: float | None = None


@dataclass
class Selection:
    best_key: str
    best_c: float
    per_key: list[KeyResult]
    model: object  # the chosen probe refit on train + validation
    extra: dict[str, object] = field(default_factory=dict)


def _nan_to_low(x: float) -> float:
    return -1.0 if math.isnan(x) else x


def select_probe(train: Mapping[str, np.ndarray], y_train: np.ndarray, val: Mapping[str, np.ndarray],
                 y_val: np.ndarray, test: Mapping[str, np.ndarray] | None = None, y_test: np.ndarray | None = None,
                 c_grid: Sequence[float] = C_GRID, seed: int = 0) -> Selection:
    """Fit a probe per (key, C) on train; choose the key and C with the best validation AUROC (ties:
    the earlier key, the stronger regularization); report test AUROC/ECE per key if given."""
    y_train, y_val = np.asarray(y_train).astype(int), np.asarray(y_val).astype(int)
    if len(np.unique(y_train)) < 2:
        raise ValueError(f"training labels are all {int(y_train[0]) if len(y_train) else '?'}: a probe needs "
                         "both good and bad answers")
    if not train:
        raise ValueError("no feature sets to choose from")
    per_key: list[KeyResult] = []
    best: tuple[float, str, float] | None = None
    for key in train:
        key_best: tuple[float, float, object] | None = None
        for c in c_grid:
            model = make_probe(c, seed).fit(train[key], y_train)
            score = auroc(y_val, model.predict_proba(val[key])[:, 1])
            if key_best is None or _nan_to_low(score) > _nan_to_low(key_best[0]):
                key_best = (score, c, model)
        assert key_best is not None
        result = KeyResult(key=key, c=key_best[1], val_auroc=key_best[0])
        if test is not None and y_test is not None:
            p = key_best[2].predict_proba(test[key])[:, 1]  # type: ignore[attr-defined]
            result.test_auroc, result.test_ece = auroc(y_test, p), ece(y_test, p)
        per_key.append(result)
        if best is None or _nan_to_low(result.val_auroc) > _nan_to_low(best[0]):
            best = (result.val_auroc, key, result.c)
    assert best is not None
    _, best_key, best_c = best
    final = make_probe(best_c, seed).fit(np.vstack([train[best_key], val[best_key]]),
                                          np.concatenate([y_train, y_val]))
    return Selection(best_key=best_key, best_c=best_c, per_key=per_key, model=final)


def stratified_split(y: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, held-out) with about `fraction` of each class held out."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y).astype(int)
    held: list[int] = []
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        held += idx[: max(1, int(round(fraction * len(idx))))].tolist()
    mask = np.zeros(len(y), dtype=bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)
