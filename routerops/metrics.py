"""Routing metrics with RouteLLM's definitions, computed exactly from per-prompt arrays.

Inputs, one entry per prompt: `scores` (the router's P(strong wins)), `weak_q` and `strong_q` (the
quality of each model's answer: 0/1 correctness or any real number). A router with threshold alpha
sends a prompt to the strong model iff score >= alpha.

- PGR (performance gap recovered) = (q_router - q_weak) / (q_strong - q_weak), q = mean quality.
  Defined only when q_strong > q_weak: otherwise `pgr` and `pgr_curve` raise NoQualityGap (a
  ValueError saying why), never a number (all-strong routing would otherwise read 1.0).
- The PGR curve: PGR against the share of prompts sent to strong, from 0 (all weak) to 1 (all
  strong). We compute it exactly: prompts sorted by score, high first; prompts with equal scores form
  one block, because no threshold can split them. Its vertices are the shares a threshold can
  realise; a point between two vertices is what randomising the routing of the boundary block
  achieves in expectation, which is why the curve is linear there.
- APGR = area under the PGR curve over share in [0, 1] (exact trapezoids on the vertices). A random
  router's expected PGR at share s is s, so its APGR is 0.5.
- CPT(x%) = the smallest strong share at which PGR reaches x%.

Differences from RouteLLM's evaluation code (routellm/evals/evaluate.py): it samples thresholds at
score percentiles and finds CPT with `np.interp(target, accuracy, share)`, which assumes accuracy
rises monotonically with share. Where it does not (a router that sends prompts the weak model gets
right to strong first), np.interp's answer is meaningless. `cpt` here returns the FIRST share at
which the curve reaches the target, interpolating linearly inside the segment where it first
crosses, and NaN where the curve never reaches it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ArrayLike = np.ndarray | list[float] | tuple[float, ...]


def _as_1d(name: str, values: ArrayLike) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name} has {bad.size} non-finite value(s) at position(s) {bad[:10].tolist()}")
    return arr


def _check(scores: ArrayLike, weak_q: ArrayLike, strong_q: ArrayLike) -> tuple[np.ndarray, ...]:
    s, w, q = _as_1d("scores", scores), _as_1d("weak_q", weak_q), _as_1d("strong_q", strong_q)
    if not (len(s) == len(w) == len(q)):
        raise ValueError(f"length mismatch: scores {len(s)}, weak_q {len(w)}, strong_q {len(q)}")
    if len(s) == 0:
        raise ValueError("no prompts: the arrays are empty")
    return s, w, q


def _check_probabilities(scores: np.ndarray) -> None:
    if scores.size and (scores.min() < 0.0 or scores.max() > 1.0):
        raise ValueError(f"scores must be probabilities in [0, 1] to give an alpha; "
                         f"got range [{scores.min()}, {scores.max()}]")


def _alpha_above(max_score: float) -> float:
    """Smallest alpha in [0, 1] sending nobody to strong: just above the top score, at most 1.0."""
    return float(min(1.0, np.nextafter(max_score, np.inf)))


def routed_quality(scores: ArrayLike, weak_q: ArrayLike, strong_q: ArrayLike,
                   alpha: float) -> tuple[float, float]:
    """(mean quality, strong share) of routing to strong iff score >= alpha."""
    s, w, q = _check(scores, weak_q, strong_q)
    strong = s >= alpha
    return float(np.where(strong, q, w).mean()), float(strong.mean())


def strong_share_at(scores: ArrayLike, alpha: float) -> float:
    """Share of prompts the rule score >= alpha sends to strong."""
    s = _as_1d("scores", scores)
    if len(s) == 0:
        raise ValueError("no prompts: scores is empty")
    return float((s >= alpha).mean())


class NoQualityGap(ValueError):
    """PGR is undefined: the strong model is not better than the weak one on this set. A ratio over a
    zero or negative gap would read as "all recovered" (e.g. 1.0 when everything goes to strong)."""


def quality_gap_problem(q_weak: float, q_strong: float) -> str | None:
    """Why PGR cannot be computed for these mean qualities, or None when it can (q_strong > q_weak)."""
    if q_strong > q_weak:
        return None
    if q_strong == q_weak:
        return (f"PGR is undefined: strong and weak quality are equal ({q_strong:.4g}); "
                "there is no gap to recover on this set")
    return (f"PGR is undefined: strong quality {q_strong:.4g} is below weak quality {q_weak:.4g}; "
            "there is no gap to recover on this set")


def pgr(q_router: float, q_weak: float, q_strong: float) -> float:
    """Performance gap recovered. NoQualityGap (a ValueError) unless strong is better than weak."""
    problem = quality_gap_problem(q_weak, q_strong)
    if problem is not None:
        raise NoQualityGap(problem)
    return (q_router - q_weak) / (q_strong - q_weak)


def routed_cost(scores: ArrayLike, weak_cost: ArrayLike, strong_cost: ArrayLike, alpha: float) -> float:
    """Mean cost per prompt of routing with alpha, from per-prompt costs of each model's answer."""
    s, w, q = _check(scores, weak_cost, strong_cost)
    return float(np.where(s >= alpha, q, w).mean())


@dataclass(frozen=True)
class PGRCurve:
    """Vertices of the exact PGR curve. Entry 0 is all-weak (share 0, threshold +inf: any alpha above
    the top score); entry k follows the k-th block of equal scores (threshold = that score)."""

    strong_share: np.ndarray
    pgr: np.ndarray
    quality: np.ndarray
    thresholds: np.ndarray
    q_weak: float
    q_strong: float

    def apgr(self) -> float:
        """Exact trapezoid area under PGR over share in [0, 1]."""
        x, y = self.strong_share, self.pgr
        return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))

    def cpt(self, target_pgr: float) -> float:
        """Smallest share at which PGR >= target (first crossing, linear inside its segment); NaN if
        the curve never reaches the target (only possible for a target above 1, the all-strong PGR,
        or above the curve's maximum)."""
        reached = np.flatnonzero(self.pgr >= target_pgr)
        if reached.size == 0:
            return float("nan")
        i = int(reached[0])
        if i == 0:
            return float(self.strong_share[0])
        x0, x1 = self.strong_share[i - 1], self.strong_share[i]
        y0, y1 = self.pgr[i - 1], self.pgr[i]  # y0 < target <= y1
        return float(x0 + (target_pgr - y0) / (y1 - y0) * (x1 - x0))

    def pgr_at_share(self, share: float) -> float:
        """PGR at any share in [0, 1] (linear between vertices: randomised boundary block)."""
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {share}")
        return float(np.interp(share, self.strong_share, self.pgr))  # shares are strictly increasing

    @property
    def max_pgr(self) -> float:
        return float(self.pgr.max())


def pgr_curve(scores: ArrayLike, weak_q: ArrayLike, strong_q: ArrayLike) -> PGRCurve:
    """The exact PGR curve (see the module docstring). NoQualityGap when q_strong <= q_weak."""
    s, w, q = _check(scores, weak_q, strong_q)
    n = len(s)
    q_weak, q_strong = float(w.mean()), float(q.mean())
    pgr(q_weak, q_weak, q_strong)  # NoQualityGap unless strong is better than weak
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    gain = (q - w)[order]
    # Last index of each block of equal scores (descending order).
    block_end = np.flatnonzero(np.append(s_sorted[1:] != s_sorted[:-1], True))
    cum_gain = np.cumsum(gain)[block_end]
    shares = np.concatenate([[0.0], (block_end + 1) / n])
    quality = np.concatenate([[q_weak], q_weak + cum_gain / n])
    quality[-1] = q_strong  # exact at share 1 (the cumulative sum may round)
    thresholds = np.concatenate([[np.inf], s_sorted[block_end]])
    pgrs = (quality - q_weak) / (q_strong - q_weak)
    return PGRCurve(shares, pgrs, quality, thresholds, q_weak, q_strong)


def oracle_curve(weak_q: ArrayLike, strong_q: ArrayLike) -> PGRCurve:
    """The best possible router on this set: sends prompts to strong in order of strong's gain."""
    w, q = _as_1d("weak_q", weak_q), _as_1d("strong_q", strong_q)
    return pgr_curve(q - w, w, q)


def apgr(scores: ArrayLike, weak_q: ArrayLike, strong_q: ArrayLike) -> float:
    """Area under the exact PGR curve over strong share in [0, 1]."""
    return pgr_curve(scores, weak_q, strong_q).apgr()


def cpt(scores: ArrayLike, weak_q: ArrayLike, strong_q: ArrayLike, target_pgr: float) -> float:
    """Call-performance threshold: smallest strong share with PGR >= target_pgr (e.g. 0.5 for
    CPT(50%)); NaN when never reached. See PGRCurve.cpt and the module docstring."""
    return pgr_curve(scores, weak_q, strong_q).cpt(target_pgr)


def random_router_pgr(share: float) -> float:
    """Expected PGR of a router sending a random `share` of prompts to strong: exactly `share`."""
    return float(share)


def random_router_apgr() -> float:
    """Expected APGR of the random router: area under the line PGR = share over [0, 1], i.e. 0.5."""
    return 0.5


def alpha_for_strong_share(scores: ArrayLike, share: float) -> float:
    """The alpha whose rule score >= alpha sends as close as possible to `share` of the prompts to
    strong on these scores.

    Ties: prompts with equal scores go together, so only block boundaries are reachable; we pick the
    reachable share nearest to `share` (the lower one when two are equally near). The alpha returned
    is the lowest score sent to strong, so share 1 gives min(scores). Share 0 gives the next float
    above max(scores), capped at 1.0 (alpha must lie in [0, 1]): when a score is exactly 1.0 that
    prompt still goes to strong; `strong_share_at(scores, alpha)` reports the realised share.
    """
    s = _as_1d("scores", scores)
    if len(s) == 0:
        raise ValueError("no prompts: scores is empty")
    _check_probabilities(s)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"strong share must be in [0, 1], got {share}")
    desc = np.sort(s)[::-1]
    block_end = np.flatnonzero(np.append(desc[1:] != desc[:-1], True))
    shares = np.concatenate([[0.0], (block_end + 1) / len(s)])
    dist = np.abs(shares - share)
    i = int(np.flatnonzero(dist <= dist.min() + 1e-12)[0])  # equally near (up to rounding): the lower share
    return _alpha_above(float(desc[0])) if i == 0 else float(desc[block_end[i - 1]])


def alpha_for_pgr(scores: ArrayLike, weak_q: ArrayLike, strong_q: ArrayLike, target_pgr: float) -> float:
    """The alpha reaching PGR >= target_pgr at the least strong share (over realisable thresholds:
    whole blocks of equal scores). ValueError naming the best PGR when no threshold reaches it."""
    s, w, q = _check(scores, weak_q, strong_q)
    _check_probabilities(s)
    curve = pgr_curve(s, w, q)
    reached = np.flatnonzero(curve.pgr >= target_pgr)
    if reached.size == 0:
        raise ValueError(f"no threshold reaches PGR {target_pgr:.3f} on this set; the best is "
                         f"{curve.max_pgr:.3f} at strong share {curve.strong_share[np.argmax(curve.pgr)]:.3f}")
    i = int(reached[0])
    return _alpha_above(float(s.max())) if i == 0 else float(curve.thresholds[i])
