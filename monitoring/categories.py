"""Per-category figures of a monitor run: aggregate quality can hold while one cohort gets worse.

Categories are the golden traces' `category` field. Per category: replayed and labelled traces,
strong-call share at the live alpha, quality of weak/strong/routed answers, PGR now and its baseline
(the same router and alpha on the recorded answers and labels). A category with fewer than
`min_traces` labelled traces (ROUTEROPS_CATEGORY_MIN_TRACES) reports its counts only: a PGR over a
handful of traces swings by a whole trace's weight, which would read as a regression that is noise.
A PGR that cannot be computed (strong not better than weak in that category) is null with its reason,
as for the whole set.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from routerops import metrics


@dataclass(frozen=True)
class CategoryFigures:
    category: str
    n: int  # replayed traces
    n_labelled: int  # of which labelled now (quality and PGR are computed on these)
    reported: bool  # n_labelled >= min_traces: the figures below are filled in
    strong_share: float | None = None
    quality_weak: float | None = None
    quality_strong: float | None = None
    quality_routed: float | None = None
    pgr: float | None = None
    pgr_null_reason: str | None = None
    baseline_pgr: float | None = None
    baseline_pgr_null_reason: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _pgr(scores: np.ndarray, wq: np.ndarray, sq: np.ndarray, alpha: float) -> tuple[float | None, str | None]:
    q_router, _ = metrics.routed_quality(scores, wq, sq, alpha)
    try:
        return metrics.pgr(q_router, float(wq.mean()), float(sq.mean())), None
    except metrics.NoQualityGap as exc:
        return None, str(exc)


def _labelled(a: Sequence[float | None], b: Sequence[float | None], sel: np.ndarray) -> np.ndarray:
    return np.asarray([i for i in np.flatnonzero(sel) if a[i] is not None and b[i] is not None], dtype=np.int64)


def per_category(categories: Sequence[str], scores: np.ndarray, weak_q: Sequence[float | None],
                 strong_q: Sequence[float | None], weak_q_ref: Sequence[float | None],
                 strong_q_ref: Sequence[float | None], alpha: float, min_traces: int) -> list[CategoryFigures]:
    """One row per category (sorted by name); per-trace inputs aligned with `categories`; None = unlabelled."""
    if min_traces < 1:
        raise ValueError(f"min_traces must be >= 1, got {min_traces}")
    cats = np.asarray(categories, dtype=object)
    scores = np.asarray(scores, dtype=np.float64)
    if not (len(cats) == len(scores) == len(weak_q) == len(strong_q) == len(weak_q_ref) == len(strong_q_ref)):
        raise ValueError("per_category: the per-trace inputs differ in length")
    rows = []
    for cat in sorted(set(cats.tolist())):
        sel = cats == cat
        idx = _labelled(weak_q, strong_q, sel)
        if len(idx) < min_traces:
            rows.append(CategoryFigures(cat, int(sel.sum()), len(idx), False))
            continue
        wq = np.asarray([weak_q[i] for i in idx], dtype=np.float64)
        sq = np.asarray([strong_q[i] for i in idx], dtype=np.float64)
        q_routed, share = metrics.routed_quality(scores[idx], wq, sq, alpha)
        pgr, reason = _pgr(scores[idx], wq, sq, alpha)
        ridx = _labelled(weak_q_ref, strong_q_ref, sel)
        if len(ridx) >= min_traces:
            base, base_reason = _pgr(scores[ridx], np.asarray([weak_q_ref[i] for i in ridx], dtype=np.float64),
                                     np.asarray([strong_q_ref[i] for i in ridx], dtype=np.float64), alpha)
        else:
            base, base_reason = None, f"fewer than {min_traces} labelled recorded traces"
        rows.append(CategoryFigures(cat, int(sel.sum()), len(idx), True, share, float(wq.mean()),
                                    float(sq.mean()), q_routed, pgr, reason, base, base_reason))
    return rows


_UNSAFE = re.compile(r"[^0-9A-Za-z_\-. ]+")  # what MLflow allows in a metric name, less "/"


def mlflow_metrics(rows: Sequence[CategoryFigures]) -> dict[str, float]:
    """`category.<name>.<figure>` for every reported, defined figure (a null PGR is no metric)."""
    out: dict[str, float] = {}
    for r in rows:
        prefix = f"category.{_UNSAFE.sub('_', r.category)}"
        out[f"{prefix}.n_labelled"] = float(r.n_labelled)
        if not r.reported:
            continue
        for name in ("strong_share", "quality_weak", "quality_strong", "quality_routed", "pgr", "baseline_pgr"):
            value = getattr(r, name)
            if value is not None:
                out[f"{prefix}.{name}"] = float(value)
    return out


def table(rows: Sequence[CategoryFigures], min_traces: int) -> list[str]:
    """The monitor's per-category lines (CLI output)."""
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    p = lambda v: "null" if v is None else f"{v:.3f}"  # noqa: E731
    width = max([len("category"), *(len(r.category) for r in rows)])
    lines = [f"per category (figures from >= {min_traces} labelled traces):",
             f"  {'category':<{width}}  {'n':>4} {'labelled':>8} {'strong':>6} {'q_weak':>6} {'q_strong':>8} "
             f"{'q_routed':>8} {'PGR':>6} {'baseline':>8}"]
    for r in rows:
        if not r.reported:
            lines.append(f"  {r.category:<{width}}  {r.n:>4} {r.n_labelled:>8}  (too few labelled traces)")
            continue
        lines.append(f"  {r.category:<{width}}  {r.n:>4} {r.n_labelled:>8} {f(r.strong_share):>6} "
                     f"{f(r.quality_weak):>6} {f(r.quality_strong):>8} {f(r.quality_routed):>8} "
                     f"{p(r.pgr):>6} {p(r.baseline_pgr):>8}")
    return lines
