"""Leave-one-source-out: how a router does on prompts from a source it never saw.

For each source S: fit on every row whose prompt is not in S, then compute APGR on S's prompts for
one strong/weak pair that S contains, next to the random router (0.5) and the oracle. The pair is
chosen by a fixed rule, so nobody picks the pair a router happens to do well on:
- outcome sources: strong = S's model with the best mean score among models the fold was trained
  on; weak = a trained-on model at least 0.1 below it, the one nearest S's median model; both must
  have >= MIN_PROMPTS shared prompts;
- preference sources: the most often judged pair with >= MIN_PROMPTS prompts whose win rate is at
  least MIN_GAP / 2 away from even (the closest contest among equally judged ones); strong = the one
  that wins more; quality per prompt = P(strong wins) (strong) and 1 - that (weak).
When S's models are all unknown to the fold (its sources hold other models), the pair is S's own best
and median model and the router routes by its pair-free difficulty score: mode "difficulty".
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from routerops import metrics as rmetrics
from routerops.models import irt_mf
from routerops.models.adaptive import memory_weights
from routerops.models.router import FORMAT_V2, MFRouter
from routerops.training.router_data import RouterData, fit_data

log = logging.getLogger(__name__)
MIN_PROMPTS = 30
MIN_GAP = 0.1


@dataclass
class EvalPair:
    source: str
    strong: str
    weak: str
    mode: str  # "pair" | "difficulty"
    q: np.ndarray  # prompt indices
    weak_q: np.ndarray
    strong_q: np.ndarray


@dataclass
class LosoRow:
    source: str
    strong: str
    weak: str
    mode: str
    prompts: int
    apgr: float
    oracle: float
    random: float = 0.5
    # The same prompts routed by the pair-free difficulty alone (strong iff hard), beside the pair's
    # expected gain above: the two routing rules the router-quality issue asks to compare.
    apgr_difficulty: float = float("nan")
    # The shipped router: the prior plus its label memory (the fold's labelled prompts of the pair,
    # models/adaptive.py), where the other sources hold labels of the held-out source's pair.
    apgr_memory: float = float("nan")


@dataclass
class LosoReport:
    rows: list[LosoRow] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def mean_apgr(self) -> float:
        return float(np.mean([r.apgr for r in self.rows])) if self.rows else float("nan")

    @property
    def mean_apgr_difficulty(self) -> float:
        return float(np.mean([r.apgr_difficulty for r in self.rows])) if self.rows else float("nan")

    @property
    def mean_apgr_memory(self) -> float:
        return float(np.mean([r.apgr_memory for r in self.rows])) if self.rows else float("nan")

    @property
    def min_apgr(self) -> float:
        return float(np.min([r.apgr for r in self.rows])) if self.rows else float("nan")

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame([r.__dict__ for r in self.rows])

    def table(self) -> str:
        lines = [f"{'held-out source':<16} {'strong':<28} {'weak':<28} {'mode':<10} {'prompts':>7} "
                 f"{'APGR':>6} {'by-dif':>6} {'+mem':>6} {'random':>6} {'oracle':>6}"]
        for r in self.rows:
            lines.append(f"{r.source:<16} {r.strong[:28]:<28} {r.weak[:28]:<28} {r.mode:<10} {r.prompts:>7} "
                         f"{r.apgr:>6.3f} {r.apgr_difficulty:>6.3f} {r.apgr_memory:>6.3f} {r.random:>6.3f} {r.oracle:>6.3f}")
        lines.append(f"{'mean':<16} {'':<28} {'':<28} {'':<10} {'':>7} {self.mean_apgr:>6.3f} "
                     f"{self.mean_apgr_difficulty:>6.3f} {self.mean_apgr_memory:>6.3f} {0.5:>6.3f} "
                     f"{np.mean([r.oracle for r in self.rows]) if self.rows else float('nan'):>6.3f}")
        return "\n".join(lines)


def _outcome_pair(data: RouterData, source: str, known: set[int]) -> EvalPair | None:
    o = data.outcomes[data.outcomes["source"] == source]
    if o.empty:
        return None
    counts = o.groupby("m")["q"].nunique()
    means = o.groupby("m")["score"].mean()[counts >= MIN_PROMPTS].sort_values(ascending=False)
    if len(means) < 2:
        return None
    wide = o.pivot_table(index="q", columns="m", values="score", aggfunc="mean")
    median = float(means.median())

    def pick(candidates: pd.Series) -> tuple[int, int] | None:
        if len(candidates) < 2:
            return None
        strong = int(candidates.index[0])
        below = candidates[candidates <= candidates.iloc[0] - MIN_GAP]
        for weak in sorted(below.index, key=lambda m: abs(below[m] - median)):
            if wide[[strong, weak]].dropna().shape[0] >= MIN_PROMPTS:
                return strong, int(weak)
        return None

    mode, chosen = "pair", pick(means[[m in known for m in means.index]])
    if chosen is None:
        mode, chosen = "difficulty", pick(means)
    if chosen is None:
        return None
    s, w = chosen
    both = wide[[s, w]].dropna()
    return EvalPair(source, data.vocabulary[s], data.vocabulary[w], mode, both.index.to_numpy(np.int64),
                    both[w].to_numpy(np.float64), both[s].to_numpy(np.float64))


def _preference_pair(data: RouterData, source: str, known: set[int]) -> EvalPair | None:
    p = data.pairs[data.pairs["source"] == source]
    if p.empty:
        return None
    lo, hi = np.minimum(p["a"], p["b"]), np.maximum(p["a"], p["b"])
    p = p.assign(lo=lo.to_numpy(), hi=hi.to_numpy(), t_hi=np.where(p["a"] == hi, p["target"], 1 - p["target"]))
    stats = p.groupby(["lo", "hi"]).agg(prompts=("q", "nunique"), rate=("t_hi", "mean"))
    stats = stats[(stats["prompts"] >= MIN_PROMPTS) & ((2 * stats["rate"] - 1).abs() >= MIN_GAP)]
    if stats.empty:
        return None
    # the most judged pair; among equally judged ones, the closest contest
    stats = stats.assign(gap=(2 * stats["rate"] - 1).abs()).sort_values(["prompts", "gap"], ascending=[False, True])
    known_pairs = [k for k in stats.index if k[0] in known and k[1] in known]
    mode, (lo_m, hi_m) = ("pair", known_pairs[0]) if known_pairs else ("difficulty", stats.index[0])
    rows = p[(p["lo"] == lo_m) & (p["hi"] == hi_m)]
    per_prompt = rows.groupby("q")["t_hi"].mean()
    strong, weak = (hi_m, lo_m) if per_prompt.mean() >= 0.5 else (lo_m, hi_m)
    p_strong = per_prompt.to_numpy(np.float64) if strong == hi_m else 1 - per_prompt.to_numpy(np.float64)
    return EvalPair(source, data.vocabulary[strong], data.vocabulary[weak], mode,
                    per_prompt.index.to_numpy(np.int64), 1 - p_strong, p_strong)


def eval_pair(data: RouterData, source: str, known: set[int]) -> EvalPair | None:
    return _outcome_pair(data, source, known) or _preference_pair(data, source, known)


def prompts_of(data: RouterData, source: str) -> np.ndarray:
    mask = np.zeros(len(data.prompts), dtype=bool)
    mask[data.outcomes.loc[data.outcomes["source"] == source, "q"].to_numpy()] = True
    mask[data.pairs.loc[data.pairs["source"] == source, "q"].to_numpy()] = True
    return mask


def evaluate(params: dict[str, np.ndarray], X: np.ndarray, ev: EvalPair, index: dict[str, int]) -> LosoRow:
    Xs = X[ev.q]
    by_difficulty = irt_mf.difficulty(params, Xs)
    scores = irt_mf.pair_score(params, Xs, index[ev.strong], index[ev.weak]) if ev.mode == "pair" else by_difficulty
    return LosoRow(ev.source, ev.strong, ev.weak, ev.mode, len(ev.q),
                   float(rmetrics.apgr(scores, ev.weak_q, ev.strong_q)),
                   float(rmetrics.oracle_curve(ev.weak_q, ev.strong_q).apgr()),
                   apgr_difficulty=float(rmetrics.apgr(by_difficulty, ev.weak_q, ev.strong_q)))


def leave_one_source_out(data: RouterData, X: np.ndarray, config: irt_mf.IRTMFConfig, *,
                         sources: list[str] | None = None, progress: bool = False,
                         embed_dim: int | None = None) -> LosoReport:
    """`embed_dim`: how many leading columns of X are the text embedding (the label memory's
    neighbours are found on those; None: all of X)."""
    """One fit per held-out source (only sources with an evaluable pair get a row)."""
    started = time.perf_counter()
    report = LosoReport()
    index = {m: i for i, m in enumerate(data.vocabulary)}
    for source in sources or data.sources:
        held = prompts_of(data, source)
        train = ~held
        fd = fit_data(data, X, train)
        known = set(np.unique(np.concatenate([fd.out_m, fd.pair_a, fd.pair_b])).tolist())
        ev = eval_pair(data, source, known)
        if ev is None:
            log.info("LOSO: %s has no pair with >= %d prompts; skipped", source, MIN_PROMPTS)
            continue
        if len(fd.out_q) + len(fd.pair_q) == 0:
            continue
        t0 = time.perf_counter()
        params, _ = irt_mf.fit(fd, config)
        row = evaluate(params, X, ev, index)
        row.apgr_memory = row.apgr
        if ev.mode == "pair":
            weights = {**params, **memory_weights(X, train, fd.out_q, fd.out_m, fd.out_y, fd.pair_q, fd.pair_a,
                                                  fd.pair_b, fd.pair_t)}
            router = MFRouter(weights, {"format": FORMAT_V2, "vocabulary": data.vocabulary, "embedding": {},
                                        "prompt_features": {"mean": [0.0] * (X.shape[1] - embed_dim)} if embed_dim
                                        else None})
            row.apgr_memory = float(rmetrics.apgr(router._score_vectors(X[ev.q], ev.strong, ev.weak),
                                                  ev.weak_q, ev.strong_q))
        report.rows.append(row)
        if progress:
            print(f"  LOSO {source:<16} APGR {row.apgr:.3f}, with label memory {row.apgr_memory:.3f} (oracle {row.oracle:.3f}, {row.mode}, "
                  f"{row.strong} vs {row.weak}, {row.prompts} prompts) in {time.perf_counter() - t0:.0f}s",
                  flush=True)
    report.seconds = time.perf_counter() - started
    return report
