"""Off-policy evaluation of routing policies on logged traffic (issue 24; docs/exploration-and-ope.md).

The logged data: N routed requests. Request i was served by the route the live router took (logged
with its propensity, 1.0 for the deterministic threshold router), and with probability q_i (its
logged `explore_propensity`, ROUTEROPS_EXPLORE_SHARE when it was served) the other model answered too
and the pair was judged. A judged pair gives d_i = outcome(strong) - outcome(weak): +1 strong won,
-1 weak won, 0 a tie (or a graded difference in [-1, 1]).

A routing policy pi (any router at any threshold; its choice s_i = 1 when it would call strong) has

    PGR(pi) = (Q(pi) - Q(weak)) / (Q(strong) - Q(weak)) = E[s(x) d(x)] / E[d(x)]

over the live prompt distribution, since Q(pi) - Q(weak) = E[s(x) (y_strong - y_weak)]. Only the
explored requests reveal d, each with probability q_i, independently of the prompt, so:

- IPS (inverse propensity): E[s d] ~ 1/N sum_i o_i s_i d_i / q_i and E[d] ~ 1/N sum_i o_i d_i / q_i
  (o_i = 1 when request i's pair was judged). Unbiased for both sums; their ratio is consistent.
- Doubly robust: a reward model m(x) ~ d(x) (here a calibrated map of the champion's logged
  P(strong wins), cross-fitted on two folds so no pair predicts itself) fills in every request, and
  the explored ones correct it: E[s d] ~ 1/N sum_i s_i (m_i + o_i (d_i - m_i) / q_i), likewise E[d].
  Unbiased whatever m is; lower variance the better m predicts d.

Strong share: 1/N sum_i s_i, on every logged request (no outcome needed). Confidence intervals:
percentile bootstrap over requests (the ratio resampled whole), at `confidence`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

WINNER_TO_D = {"strong": 1.0, "weak": -1.0, "tie": 0.0}


@dataclass(frozen=True)
class Estimate:
    value: float | None  # the point estimate; None when undefined (no judged pair, no quality gap)
    lo: float | None
    hi: float | None

    def covers(self, x: float) -> bool:
        return self.lo is not None and self.hi is not None and self.lo <= x <= self.hi

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PolicyEstimate:
    """One policy's off-policy figures on the logged traffic."""

    n_requests: int
    n_pairs: int
    strong_share: float
    pgr_ips: Estimate
    pgr_dr: Estimate
    gap_ips: float | None  # estimated Q(strong) - Q(weak) per request (the PGR denominator)

    def to_dict(self) -> dict:
        return {"n_requests": self.n_requests, "n_pairs": self.n_pairs, "strong_share": self.strong_share,
                "pgr_ips": self.pgr_ips.to_dict(), "pgr_dr": self.pgr_dr.to_dict(), "gap_ips": self.gap_ips}


def _as(name: str, x: object, n: int | None = None, dtype: type = np.float64) -> np.ndarray:
    arr = np.asarray(x, dtype=dtype).reshape(-1)
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} values, expected {n}")
    return arr


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(np.broadcast(num, den).shape, np.nan)
    ok = den > 0  # no quality gap (strong not better than weak): PGR undefined
    np.divide(num, den, out=out, where=ok)
    return out


def _bootstrap(num_terms: np.ndarray, den_terms: np.ndarray, n_boot: int, confidence: float,
               rng: np.random.Generator) -> tuple[float | None, float | None]:
    """Percentile CI of sum(num)/sum(den) resampling requests with replacement (in chunks)."""
    n = num_terms.shape[0]
    vals: list[np.ndarray] = []
    chunk = max(1, min(n_boot, 4_000_000 // max(n, 1)))
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        # multinomial counts per request == resampling indices, without the (b, n) index matrix per term
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float64)
        vals.append(_ratio(counts @ num_terms, counts @ den_terms))
        done += b
    v = np.concatenate(vals)
    v = v[np.isfinite(v)]
    if v.size < 0.5 * n_boot:  # the ratio is undefined in most resamples: no interval
        return None, None
    tail = (1.0 - confidence) / 2
    return float(np.quantile(v, tail)), float(np.quantile(v, 1.0 - tail))


def reward_model(p_logged: np.ndarray, observed: np.ndarray, d: np.ndarray, q: np.ndarray,
                 folds: int = 2, seed: int = 0) -> np.ndarray:
    """m(x) ~ E[d | x]: a weighted least-squares line in the logged P(strong wins), cross-fitted (each
    request's prediction comes from a fit on the other folds' judged pairs). Falls back to the
    weighted mean of d where a fold has too few pairs; 0 where there is nothing at all."""
    n = p_logged.shape[0]
    m = np.zeros(n)
    p = np.where(np.isfinite(p_logged), p_logged, 0.5)
    fold = np.random.default_rng(seed).integers(0, folds, n)
    for k in range(folds):
        train = (fold != k) & observed
        w = 1.0 / q[train]
        if train.sum() >= 5 and np.ptp(p[train]) > 1e-9:
            x = np.column_stack([np.ones(train.sum()), p[train]])
            beta = np.linalg.lstsq(x * np.sqrt(w)[:, None], d[train] * np.sqrt(w), rcond=None)[0]
            m[fold == k] = np.clip(beta[0] + beta[1] * p[fold == k], -1.0, 1.0)
        elif train.any():
            m[fold == k] = float(np.average(d[train], weights=w))
    return m


def _dr_bootstrap(s: np.ndarray, o: np.ndarray, d: np.ndarray, w: np.ndarray, x: np.ndarray, n_boot: int,
                  confidence: float, rng: np.random.Generator) -> tuple[float | None, float | None]:
    """Percentile CI of the DR PGR with the reward model refitted in every resample (a weighted line in
    x, closed form), so the interval carries the reward model's own uncertainty, not only the pairs'."""
    n = s.shape[0]
    vals: list[np.ndarray] = []
    chunk = max(1, min(n_boot, 2_000_000 // max(n, 1)))
    done = 0
    wo = w * o  # 1/q on judged pairs, 0 elsewhere
    while done < n_boot:
        b = min(chunk, n_boot - done)
        c = rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float64)  # (b, n)
        cw = c * wo
        sw, sx, sxx = cw.sum(1), cw @ x, cw @ (x * x)
        sy, sxy = cw @ d, cw @ (x * d)
        det = sw * sxx - sx * sx
        ok = det > 1e-12 * np.maximum(sw * sw, 1e-300)
        slope = np.where(ok, (sw * sxy - sx * sy) / np.where(ok, det, 1.0), 0.0)
        mean = np.where(sw > 0, sy / np.where(sw > 0, sw, 1.0), 0.0)
        icpt = np.where(ok, (sy - slope * sx) / np.where(sw > 0, sw, 1.0), mean)
        m = np.clip(icpt[:, None] + slope[:, None] * x[None, :], -1.0, 1.0)  # (b, n)
        terms = m + wo[None, :] * (d[None, :] - m)
        vals.append(_ratio((c * terms) @ s, (c * terms).sum(1)))
        done += b
    v = np.concatenate(vals)
    v = v[np.isfinite(v)]
    if v.size < 0.5 * n_boot:
        return None, None
    tail = (1.0 - confidence) / 2
    return float(np.quantile(v, tail)), float(np.quantile(v, 1.0 - tail))


def evaluate_policy(target_strong: object, observed: object, d: object, explore_propensity: object,
                    m: object | None = None, *, feature: object | None = None, n_boot: int = 1000,
                    confidence: float = 0.95, seed: int = 0) -> PolicyEstimate:
    """IPS and DR PGR (with bootstrap CIs) and the strong share of the policy choosing `target_strong`.

    All arrays have one value per logged routed request: target_strong (the evaluated policy would
    call strong), observed (the request's exploration pair was judged), d (strong minus weak outcome;
    ignored where not observed), explore_propensity (probability the pair was observed, q_i > 0 where
    observed), m (reward model prediction of d; default 0, which makes DR equal IPS). With `feature`
    (one number per request, e.g. the live router's logged P(strong wins)) and no m, the reward model
    is reward_model(feature, ...), cross-fitted, for the point estimate and refitted in every bootstrap
    resample for the interval.
    """
    s = _as("target_strong", target_strong).astype(np.float64)
    n = s.shape[0]
    o = _as("observed", observed, n, bool)
    q = _as("explore_propensity", explore_propensity, n)
    dd = np.where(o, _as("d", d, n), 0.0)
    if np.any(o & ~(q > 0)):
        raise ValueError("an observed pair needs a positive explore_propensity")
    x = None
    if feature is not None:
        x = _as("feature", feature, n)
        x = np.where(np.isfinite(x), x, 0.5)
        if m is None:
            m = reward_model(x, o, dd, np.where(q > 0, q, 1.0), seed=seed)
    mm = np.zeros(n) if m is None else _as("m", m, n)
    w = np.where(o, 1.0 / np.where(q > 0, q, 1.0), 0.0)
    ips_num, ips_den = s * w * dd, w * dd
    dr_terms = mm + w * (dd - mm)
    dr_num, dr_den = s * dr_terms, dr_terms
    rng = np.random.default_rng(seed)
    n_pairs = int(o.sum())

    def est(num: np.ndarray, den: np.ndarray) -> Estimate:
        if n == 0 or n_pairs == 0:
            return Estimate(None, None, None)
        value = _ratio(np.asarray(num.sum()), np.asarray(den.sum()))
        point = float(value) if np.isfinite(value) else None
        lo, hi = _bootstrap(num, den, n_boot, confidence, rng)
        return Estimate(point, lo, hi)

    pgr_dr = est(dr_num, dr_den)
    if x is not None and pgr_dr.value is not None:
        lo, hi = _dr_bootstrap(s, o.astype(np.float64), dd, w, x, n_boot, confidence, rng)
        pgr_dr = Estimate(pgr_dr.value, lo, hi)
    return PolicyEstimate(n_requests=n, n_pairs=n_pairs, strong_share=float(s.mean()) if n else float("nan"),
                          pgr_ips=est(ips_num, ips_den), pgr_dr=pgr_dr,
                          gap_ips=float(ips_den.mean()) if n else None)


def pgr_on_pairs(served_strong: object, d: object, weights: object | None = None, *, n_boot: int = 1000,
                 confidence: float = 0.95, seed: int = 0) -> Estimate:
    """The live router's PGR from its judged exploration pairs alone (a uniform sample of its traffic):
    sum(served strong * d) / sum(d) with a bootstrap CI. The monitor compares it with the served share
    (a random router at that share has PGR equal to it)."""
    s = _as("served_strong", served_strong)
    dd = _as("d", d, s.shape[0])
    if weights is not None:  # 1 / explore propensity: pairs explored at a lower share stand for more requests
        dd = dd * _as("weights", weights, s.shape[0])
    if s.shape[0] == 0:
        return Estimate(None, None, None)
    value = _ratio(np.asarray((s * dd).sum()), np.asarray(dd.sum()))
    lo, hi = _bootstrap(s * dd, dd, n_boot, confidence, np.random.default_rng(seed))
    return Estimate(float(value) if np.isfinite(value) else None, lo, hi)
