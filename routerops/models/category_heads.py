"""Category heads: the fleet's P(good answer | prompt) per model, read within the prompt's category.

The IRT-MF prior (irt_mf.py) shares one difficulty direction across every source and category, which
is what lets it route prompts of sources it never saw. Within a known category of the deployment's
own traffic that sharing costs accuracy: on RouterBench the best cheap model differs by task (Yi on
ARC, gpt-3.5 on MBPP, nothing near GPT-4 on Winogrande), and within a task the prompts a model gets
wrong cluster differently than the pooled difficulty says. So where the training rows carry
categories, the router also keeps

- a category classifier: multinomial logistic regression on the prompt vector, over the categories
  with at least `min_rows` labelled prompts (the most frequent `max_categories`), and
- one head per (category, model) with at least `min_rows` outcome rows there: a logistic regression
  of the model's outcome on the text embedding with the prior's logit as offset, strongly regularized
  (C=0.1), i.e. the category's correction of the prior, its intercept (the model's base rate in the
  category) free and its slope on the prompt kept small.

P(good | x) = sum_c P(c | x) * sigmoid(logit prior_m(x) + w_cm . x + b_cm); a (category, model)
without a head has w = 0, b = 0 and reads the prior. Measured out-of-fold on the training split
(benchmarks/fleet_routerbench.py): heads that replaced the prior instead of correcting it won the
RouterBench test figure by chance and lost calibration (Brier, log-loss) on RouterBench and MMLU-Pro
alike; the offset form improved both over the prior alone. Pair scores (the alpha threshold) do not use the heads: only the fleet's per-model quality
does (`MFRouter.quality_vectors`). Heads are arrays in the router's weights (`cat_*`), their
category names in its metadata (`category_heads`), so a registered router carries them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

KEYS = ("cat_W", "cat_b", "head_W", "head_b", "head_ok")


@dataclass(frozen=True)
class CategoryHeadsConfig:
    min_rows: int = 50  # labelled prompts a category (and a model's outcome rows in it) needs
    max_categories: int = 16  # the most frequent categories get a class and heads
    head_c: float = 0.1  # inverse L2 strength of a head slope (out-of-fold log-loss chose it on RouterBench and MMLU-Pro)
    classifier_c: float = 1.0
    max_iter: int = 500

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class FittedHeads:
    weights: dict[str, np.ndarray]
    categories: list[str]
    heads: int  # (category, model) heads fitted
    rows: dict[str, int]  # labelled prompts per category

    def metadata(self, config: CategoryHeadsConfig) -> dict[str, object]:
        return {"categories": self.categories, "heads": self.heads, "rows": self.rows, "config": config.to_dict()}


def _logistic(c: float, max_iter: int):  # noqa: ANN202 - sklearn estimator
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=max_iter)


def _fit_head(X: np.ndarray, y: np.ndarray, offset: np.ndarray, config: CategoryHeadsConfig) -> tuple[np.ndarray, float]:
    """argmin C x sum BCE(y, sigmoid(offset + X w + b)) + |w|^2 / 2 (sklearn's scaling of C; scores
    y in [0, 1] enter the cross-entropy as they are), by L-BFGS."""
    from scipy.optimize import minimize

    d = X.shape[1]
    c = config.head_c

    def loss(wb: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = wb[:d], wb[d]
        z = offset + X @ w + b
        g = 1.0 / (1.0 + np.exp(-z)) - y
        value = c * float(np.sum(np.logaddexp(0.0, z) - y * z)) + 0.5 * float(w @ w)
        return value, np.concatenate([c * (X.T @ g) + w, [c * g.sum()]])

    res = minimize(loss, np.zeros(d + 1), jac=True, method="L-BFGS-B", options={"maxiter": config.max_iter})
    return res.x[:d], float(res.x[d])


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-6, 1.0 - 1e-6)
    return np.log(p / (1.0 - p))


def fit_category_heads(X: np.ndarray, prompt_category: list[str | None], out_q: np.ndarray, out_m: np.ndarray,
                       out_y: np.ndarray, num_models: int, prior: np.ndarray, config: CategoryHeadsConfig | None = None,
                       progress: Callable[[str], None] | None = None, embed_dim: int | None = None
                       ) -> FittedHeads | None:
    """Heads from outcome rows (prompt index, model index, score) on the first `embed_dim` columns
    of the prompt vectors X (the text embedding), each row offset by the prior's P(good) for it
    (`prior`, one per row). None where fewer than two categories have `min_rows` labelled prompts:
    one category is the prior's job."""
    config = config or CategoryHeadsConfig()
    X = np.asarray(X)[:, : embed_dim or np.asarray(X).shape[1]]
    cats = np.asarray([c if c else "" for c in prompt_category], dtype=object)
    labelled = np.zeros(len(cats), bool)
    labelled[out_q] = True
    names, counts = np.unique(cats[labelled & (cats != "")], return_counts=True)
    order = np.argsort(-counts, kind="stable")
    keep = [(str(names[i]), int(counts[i])) for i in order if counts[i] >= config.min_rows][: config.max_categories]
    if len(keep) < 2:
        return None
    categories = [c for c, _ in keep]
    rows = np.flatnonzero(labelled & np.isin(cats, categories))
    Xf = np.asarray(X, np.float64)
    clf = _logistic(config.classifier_c, config.max_iter).fit(Xf[rows], cats[rows].astype(str))
    index = {c: list(clf.classes_).index(c) for c in categories}
    cat_W = np.stack([clf.coef_[index[c]] if len(categories) > 2 else clf.coef_[0] * (1 if index[c] else -1)
                      for c in categories])
    cat_b = np.array([clf.intercept_[index[c]] if len(categories) > 2 else clf.intercept_[0] * (1 if index[c] else -1)
                      for c in categories])
    if len(categories) == 2:  # sklearn's binary fit is one logit: softmax of (z/2, -z/2) gives the same P
        cat_W, cat_b = cat_W / 2, cat_b / 2
    d = Xf.shape[1]
    head_W = np.zeros((len(categories), num_models, d), np.float32)
    head_b = np.zeros((len(categories), num_models), np.float32)
    head_ok = np.zeros((len(categories), num_models), np.float32)
    q_cat = cats[out_q]
    for ci, c in enumerate(categories):
        in_c = q_cat == c
        for m in range(num_models):
            sel = in_c & (out_m == m)
            y = np.asarray(out_y[sel], np.float64)
            if sel.sum() < config.min_rows:
                continue  # too few rows: the prior reads it
            head_W[ci, m], head_b[ci, m] = _fit_head(Xf[out_q[sel]], y, logit(prior[sel]), config)
            head_ok[ci, m] = 1.0
        if progress is not None:
            progress(f"category heads: {c} ({ci + 1}/{len(categories)}), {int(head_ok[ci].sum())} models")
    weights = {"cat_W": cat_W.astype(np.float32), "cat_b": cat_b.astype(np.float32), "head_W": head_W,
               "head_b": head_b, "head_ok": head_ok}
    return FittedHeads(weights, categories, int(head_ok.sum()), dict(keep))


def present(weights: dict[str, np.ndarray]) -> bool:
    return all(k in weights for k in KEYS)


def _embedding_part(weights: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    # heads read the text embedding, not the prompt statistics appended to it: at C=0.1 the
    # standardized statistics (unit scale, against ~0.05 per embedding entry) would dominate them
    return np.asarray(X, np.float32)[:, : weights["cat_W"].shape[1]]


def category_probabilities(weights: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """(n, categories) P(category | prompt vector)."""
    z = _embedding_part(weights, X) @ weights["cat_W"].T + weights["cat_b"]
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def quality(weights: dict[str, np.ndarray], X: np.ndarray, idx: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """(n, len(idx)) sum_c P(c | x) sigmoid(logit prior + head_c,m(x)) for the prior `prior` (n, len(idx))."""
    pc = category_probabilities(weights, X)  # (n, C)
    X = _embedding_part(weights, X)
    C, M, d = weights["head_W"].shape
    # one GEMV over every head, then the fleet's columns: cheaper than gathering (C, k, d) weights
    z = (X @ weights["head_W"].reshape(C * M, d).T).reshape(len(X), C, M)[:, :, idx] + weights["head_b"][None, :, idx]
    per_cat = 1.0 / (1.0 + np.exp(-(z.astype(np.float64) + logit(prior)[:, None, :])))  # (n, C, k)
    return np.einsum("nc,nck->nk", pc.astype(np.float64), per_cat)
