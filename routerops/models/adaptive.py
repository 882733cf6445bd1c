"""The router's adaptive part: the labelled prompts it was trained on, read locally at routing time.

The IRT-MF model (irt_mf.py) is the prior: what every source taught about every model. It moves
little for a few hundred labels of one pair among tens of thousands of public rows. So the router
also keeps its labelled prompts (the "memory": each prompt's vector and the outcomes / preferences
logged on it) and, for the served pair (strong, weak), corrects the prior by the pair's labelled
neighbours of each prompt:

    t_j  = 0.5 + 0.5 (y_strong - y_weak)   (outcome rows; or P(strong preferred) from a judge)
    r_j  = t_j - p0(x_j) - mean(t - p0)     (what the prior got wrong at labelled prompt j)
    p(x) = p0(x) + mean(t - p0) + sum_j K(x, x_j) r_j / (sum_j K(x, x_j) + tau)

over the k nearest labelled prompts j of that pair (cosine similarity of the text embeddings),
K(x, x_j) = exp((cos - 1) / bandwidth). That is an empirical-Bayes shrinkage: where the pair has
many close labels the local mean of its outcome gap dominates; where it has none (an unlabelled
region or pair) the score is the prior's. k, bandwidth and tau are not fixed: per pair they are
chosen by leave-one-out on the pair's own labelled prompts (`choose`), and where no setting predicts
the held-out labels better than the prior, tau is infinite and the prior stands. (An optional
linear re-read of the prior per pair, `Calibration`, is off by default: measured, it lost as much
as it won; docs/adaptation.md.) The labels a deployment imports (`ingest scores` /
`native`, feedback, `routerops label`) are in the memory after the next `train router`, so they
move the routing of that pair at once, for a model first seen in them as well.

Per pair the candidate set (prompts labelled for both models) and its residuals are built once, on
first use, and cached, so a decision is one (k x dim) similarity product over that set.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from threadpoolctl import ThreadpoolController

# weight keys of the memory inside weights.npz
KEYS = ("mem_X", "mem_out_q", "mem_out_m", "mem_out_y", "mem_pair_q", "mem_pair_a", "mem_pair_b", "mem_pair_t")


@dataclass(frozen=True)
class AdaptiveConfig:
    """The estimator's settings. k, bandwidth and tau are chosen per pair, on first use, from the grids
    below by leave-one-out on the pair's own labelled prompts (each predicted from its neighbours,
    squared error on the residual): empirical Bayes, so a pair whose labels are dense and locally
    consistent gets little shrinkage and one whose neighbours say nothing stays at the prior."""

    ks: tuple[int, ...] = (10, 30, 100, 300)  # neighbours read per prompt
    bandwidths: tuple[float, ...] = (0.05, 0.1, 0.3, 1.0)  # kernel width on the cosine similarity
    taus: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0, 30.0)  # prior strength, in kernel weight (a label at cos 1 weighs 1)
    # ridge penalties of the pair's linear calibration (Calibration); none by default: measured, it lost
    # more than it won on the adaptation benchmark (docs/adaptation.md)
    lambdas: tuple[float, ...] = ()
    # "residual": neighbours correct the prior by its error at them; "shrink": the neighbours' mean
    # outcome, shrunk toward the prior at the prompt itself
    mode: str = "residual"
    loo_sample: int = 1000  # labelled prompts predicted to choose them
    max_candidates: int = 20000  # labelled prompts searched per pair (the last ones kept)
    seed: int = 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict | None) -> AdaptiveConfig:
        raw = raw or {}
        vals = {k: (tuple(raw[k]) if isinstance(raw[k], list) else raw[k])
                for k in cls.__dataclass_fields__ if k in raw}
        return cls(**vals)


@dataclass(frozen=True)
class Choice:
    k: int
    bandwidth: float
    tau: float
    loo_mse: float = float("nan")
    prior_mse: float = float("nan")


def normalize_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def pair_targets(weights: dict[str, np.ndarray], strong: int, weak: int) -> tuple[np.ndarray, np.ndarray]:
    """(memory prompt indices, P(strong beats weak) observed there): from outcome rows of both models
    on a prompt, and from judged comparisons of the two; where a prompt has both, their mean."""
    oq, om, oy = weights["mem_out_q"], weights["mem_out_m"], weights["mem_out_y"]
    n = len(weights["mem_X"])
    total = np.zeros(n, np.float64)
    count = np.zeros(n, np.float64)
    ys = np.full(n, np.nan)
    yw = np.full(n, np.nan)
    s_rows, w_rows = om == strong, om == weak
    ys[oq[s_rows]] = oy[s_rows]
    yw[oq[w_rows]] = oy[w_rows]
    both = ~np.isnan(ys) & ~np.isnan(yw)
    total[both] += 0.5 + 0.5 * (ys[both] - yw[both])
    count[both] += 1
    pq, pa, pb, pt = weights["mem_pair_q"], weights["mem_pair_a"], weights["mem_pair_b"], weights["mem_pair_t"]
    fwd = (pa == strong) & (pb == weak)
    rev = (pa == weak) & (pb == strong)
    for rows, t in ((fwd, pt[fwd]), (rev, 1.0 - pt[rev])):
        sums = np.bincount(pq[rows], t.astype(np.float64), n)
        cnt = np.bincount(pq[rows], None, n).astype(np.float64)
        has = cnt > 0
        total[has] += sums[has] / cnt[has]
        count[has] += 1
    idx = np.flatnonzero(count > 0)
    return idx.astype(np.int64), (total[idx] / count[idx])


class PairMemory:
    """The labelled neighbourhood of one pair: normalized embeddings, the prior's residuals there and
    the estimator's settings chosen for them."""

    def __init__(self, E: np.ndarray, base: np.ndarray, target: np.ndarray, config: AdaptiveConfig):
        self.E = E  # (n, dim) float32, unit rows
        self.ET: np.ndarray | None = None
        self.mode = config.mode
        self.calibration = Calibration.fit(base, target, config.lambdas)
        own = self.calibration.apply(base) if len(target) else np.zeros(0)
        # residual: neighbours carry what the prior got wrong at them; shrink: their observed outcome
        self.values = (target - own if self.mode == "residual" else np.asarray(target)).astype(np.float64)
        self.choice = (choose(E, self.values, own, config) if len(target)
                       else Choice(1, 1.0, float("inf")))

    def __len__(self) -> int:
        return len(self.values)

    def adjust(self, queries: np.ndarray, prior: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(correction to add to the prior `prior` (m,), kernel mass of the neighbours) for (m, dim)
        unit queries."""
        m = len(queries)
        if not len(self) or not m:
            return np.zeros(m), np.zeros(m)
        c = self.choice
        if self.ET is None:
            self.ET = np.ascontiguousarray(self.E.T)  # (dim, n): one GEMV per decision
        sims = _similarities(queries, self.ET)  # (m, n)
        n = sims.shape[1]
        k = min(c.k, n)
        if k < n:
            top = np.argpartition(sims, n - k, axis=1)[:, n - k:]  # the k largest, no negated copy
            sims = np.take_along_axis(sims, top, axis=1)
            vals = self.values[top]
        else:
            vals = np.broadcast_to(self.values, sims.shape)
        if self.mode == "shrink":
            vals = vals - np.asarray(prior, np.float64)[:, None]
        return _estimate(sims.astype(np.float64), vals, c.bandwidth, c.tau)


@dataclass
class Calibration:
    """The pair's own linear read of the prior: t ~ p0 + b0 + beta . standardized [p0, difficulty],
    ridge toward beta = 0 (the prior as is) with the penalty chosen by exact leave-one-out (PRESS).
    With a few labels the prior stands; with more, a pair whose outcome gap follows the pair-free
    difficulty rather than the prior's pair score (a model first seen in the deployment's labels,
    whose ability is placed from a few rows) is read the way its labels say."""

    mean: np.ndarray
    scale: np.ndarray
    beta: np.ndarray
    b0: float
    lam: float

    @classmethod
    def fit(cls, base: np.ndarray, target: np.ndarray, lambdas: tuple[float, ...]) -> Calibration:
        base = np.asarray(base, np.float64)
        base = base if base.ndim == 2 else base.reshape(len(target), -1)
        mean = base.mean(axis=0) if len(target) else np.zeros(base.shape[1])
        scale = base.std(axis=0) if len(target) else np.ones(base.shape[1])
        scale = np.where(scale > 1e-9, scale, 1.0)
        none = cls(mean, scale, np.zeros(base.shape[1]), 0.0, float("inf"))
        if len(target) < 5:
            return none
        F = (base - mean) / scale
        y = np.asarray(target, np.float64) - base[:, 0]
        b0 = float(y.mean())
        yc = y - b0
        best_press, best = float(np.sum(yc ** 2)), none
        best = cls(mean, scale, np.zeros(base.shape[1]), b0, float("inf"))
        G = F.T @ F
        for lam in lambdas:
            inv = np.linalg.inv(G + lam * np.eye(G.shape[0]))
            beta = inv @ (F.T @ yc)
            hat = np.einsum("ij,jk,ik->i", F, inv, F)
            press = float(np.sum(((yc - F @ beta) / np.maximum(1.0 - hat, 1e-6)) ** 2))
            if press < best_press:
                best_press, best = press, cls(mean, scale, beta, b0, float(lam))
        return best

    def apply(self, base: np.ndarray) -> np.ndarray:
        base = np.asarray(base, np.float64)
        return base[:, 0] + self.b0 + ((base - self.mean) / self.scale) @ self.beta


_blas = None
SINGLE_THREAD_BELOW = 64  # queries; a batch this small is one GEMV-like product


def _similarities(queries: np.ndarray, ET: np.ndarray) -> np.ndarray:
    """queries @ ET. A routing decision is a few queries: on one BLAS thread, since a threaded GEMV
    of this size spends more on waking threads than on the product (measured on 2 busy cores:
    ~2 ms threaded, ~0.1-0.4 ms on one thread); batches keep every thread."""
    global _blas
    if len(queries) >= SINGLE_THREAD_BELOW:
        return queries @ ET
    if _blas is None:
        _blas = ThreadpoolController()
    with _blas.limit(limits=1, user_api="blas"):
        return queries @ ET


def _estimate(sims: np.ndarray, res: np.ndarray, bandwidth: float, tau: float) -> tuple[np.ndarray, np.ndarray]:
    kern = np.exp((sims - 1.0) / bandwidth)
    mass = kern.sum(axis=1)
    return (kern * res).sum(axis=1) / (mass + tau), mass


def choose(E: np.ndarray, values: np.ndarray, own: np.ndarray, config: AdaptiveConfig) -> Choice:
    """Leave-one-out choice of (k, bandwidth, tau) on a sample of the pair's labelled prompts: each is
    predicted from its neighbours (never itself), squared error against its label."""
    n = len(values)
    if n < 3:
        return Choice(max(config.ks), max(config.bandwidths), max(config.taus))
    rng = np.random.default_rng(config.seed)
    sample = rng.choice(n, size=min(n, config.loo_sample), replace=False)
    sims = E[sample] @ E.T
    sims[np.arange(len(sample)), sample] = -np.inf  # a prompt never predicts itself
    kmax = min(max(config.ks), n - 1)
    top = np.argpartition(-sims, kmax - 1, axis=1)[:, :kmax]
    s_top = np.take_along_axis(sims, top, axis=1)
    order = np.argsort(-s_top, axis=1)
    s_top = np.take_along_axis(s_top, order, axis=1).astype(np.float64)
    r_top = values[np.take_along_axis(top, order, axis=1)]
    target = values[sample]
    if config.mode == "shrink":  # the correction is toward the neighbours' outcomes from this prompt's prior
        r_top = r_top - own[sample][:, None]
        target = target - own[sample]
    prior_mse = float(np.mean(target ** 2))
    best = Choice(max(config.ks), max(config.bandwidths), float("inf"), prior_mse, prior_mse)  # the prior alone
    for k in config.ks:
        kk = min(k, kmax)
        for h in config.bandwidths:
            for tau in config.taus:
                pred, _ = _estimate(s_top[:, :kk], r_top[:, :kk], h, tau)
                mse = float(np.mean((target - pred) ** 2))
                if mse < best.loo_mse:
                    best = Choice(k, h, tau, mse, prior_mse)
    return best


class AdaptiveMemory:
    """The memory stored with a router (weights `mem_*`, metadata `adaptive`), per-pair caches."""

    def __init__(self, weights: dict[str, np.ndarray], embed_dim: int, config: AdaptiveConfig):
        self.weights = weights
        self.embed_dim = int(embed_dim)
        self.config = config
        self._pairs: dict[tuple[int, int], PairMemory] = {}
        self._lock = threading.Lock()

    @staticmethod
    def present(weights: dict[str, np.ndarray]) -> bool:
        return all(k in weights for k in KEYS) and len(weights["mem_X"]) > 0

    def queries(self, X: np.ndarray) -> np.ndarray:
        return normalize_rows(np.asarray(X)[:, : self.embed_dim])

    def pair(self, strong: int, weak: int, base: Callable[[np.ndarray], np.ndarray]) -> PairMemory:
        key = (strong, weak)
        mem = self._pairs.get(key)
        if mem is not None:
            return mem
        with self._lock:
            mem = self._pairs.get(key)
            if mem is None:
                idx, t = pair_targets(self.weights, strong, weak)
                idx, t = idx[-self.config.max_candidates:], t[-self.config.max_candidates:]
                Xc = self.weights["mem_X"][idx].astype(np.float32)
                mem = PairMemory(self.queries(Xc), base(Xc) if len(idx) else np.zeros((0, 2)), t, self.config)
                self._pairs[key] = mem
        return mem

    def score(self, X: np.ndarray, strong: int, weak: int, base: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """`base(X)`: (n, 2) [the prior's P(strong wins), the pair-free difficulty logit]."""
        mem = self.pair(strong, weak, base)
        prior = mem.calibration.apply(base(X))
        adj, _ = mem.adjust(self.queries(X), prior)
        return np.clip(prior + adj, 1e-6, 1.0 - 1e-6)


def memory_weights(X: np.ndarray, prompt_mask: np.ndarray, out_q: np.ndarray, out_m: np.ndarray,
                   out_y: np.ndarray, pair_q: np.ndarray, pair_a: np.ndarray, pair_b: np.ndarray,
                   pair_t: np.ndarray) -> dict[str, np.ndarray]:
    """The `mem_*` arrays for the labelled rows whose prompt is in `prompt_mask` (prompts renumbered;
    their order kept, so the last prompts are the most recently added where the caller orders so)."""
    keep = np.flatnonzero(prompt_mask)
    remap = np.full(len(X), -1, np.int64)
    remap[keep] = np.arange(len(keep))
    o = prompt_mask[out_q]
    p = prompt_mask[pair_q]
    return {"mem_X": np.asarray(X[keep], np.float16),
            "mem_out_q": remap[out_q[o]].astype(np.int32), "mem_out_m": np.asarray(out_m[o], np.int32),
            "mem_out_y": np.asarray(out_y[o], np.float32),
            "mem_pair_q": remap[pair_q[p]].astype(np.int32), "mem_pair_a": np.asarray(pair_a[p], np.int32),
            "mem_pair_b": np.asarray(pair_b[p], np.int32), "mem_pair_t": np.asarray(pair_t[p], np.float32)}
