"""The per-rung combiner of signals into P(correct): a scaled logistic regression, or a constant where
a rung's training labels are all one class."""

from __future__ import annotations

import numpy as np


def make_combiner(c: float = 1.0, seed: int = 0):  # noqa: ANN201 - sklearn Pipeline
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))


class ConstantCombiner:
    """A rung whose training answers were all right (or all wrong): P is that rate."""

    def __init__(self, p: float):
        self.p = float(p)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        return np.column_stack([np.full(n, 1 - self.p), np.full(n, self.p)])


def fit_combiner(x: np.ndarray, y: np.ndarray, c: float = 1.0, seed: int = 0):  # noqa: ANN201
    y = np.asarray(y).round().astype(int)
    if len(np.unique(y)) < 2:
        return ConstantCombiner(float(y.mean()) if len(y) else 0.5)
    return make_combiner(c, seed).fit(np.asarray(x, np.float64), y)
