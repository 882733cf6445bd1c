"""The adaptation measure: how fast the router learns one deployment's own labels of its served pair.

For each source S with an evaluable pair (the leave-one-source-out pair rule, training/router_loso.py,
here among all of S's models since the deployment's labels name them): the prior is every row whose
prompt is not S's; the deployment imports N of S's prompts with both models' outcomes (only the pair's
rows, as a user would import them), N = 0, 50, 100, 200, 400, 1000 (3000 where S has them); the
router is retrained exactly as `train router` does with its defaults (same weighting, validation
split, fit and label memory: train_router.fit_weights); APGR on a fixed test split of S's other
prompts. Beside it: the prior alone (the IRT-MF model without its memory), the plain kNN rule (mean
strong-minus-weak outcome of the k nearest labelled prompts, k = 10 and 50, same embedder, same N
labels), random (0.5) and the oracle.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from routerops import metrics as rmetrics
from routerops.models import irt_mf
from routerops.models.adaptive import AdaptiveConfig, normalize_rows
from routerops.models.prompt_features import CLIP, fit_standardizer, raw_features
from routerops.models.router import FORMAT_V2, MFRouter
from routerops.training.router_data import Weighting, build_router_data, split_prompts
from routerops.training.router_fit import fit_weights  # the same fit as `train router`
from routerops.training.router_loso import eval_pair

log = logging.getLogger(__name__)
NS = (0, 50, 100, 200, 400, 1000, 3000)
TEST_FRACTION = 0.3
MAX_TEST = 1000
KNN_KS = (10, 50)


@dataclass
class AdaptRow:
    source: str
    strong: str
    weak: str
    n: int
    test_prompts: int
    router: float
    prior: float
    knn10: float
    knn50: float
    oracle: float
    random: float = 0.5
    extra: dict[str, float] = field(default_factory=dict)  # other adaptive settings, same fit


@dataclass
class AdaptReport:
    rows: list[AdaptRow] = field(default_factory=list)
    seconds: float = 0.0

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame([{**{k: v for k, v in r.__dict__.items() if k != "extra"}, **r.extra}
                             for r in self.rows])

    def means(self) -> pd.DataFrame:
        """Mean over sources per N (each N over the sources that have that many labels to give)."""
        f = self.frame()
        if f.empty:
            return f
        cols = [c for c in f.columns if c not in ("source", "strong", "weak", "n", "test_prompts")]
        out = f.groupby("n")[cols].mean()
        out.insert(0, "sources", f.groupby("n")["source"].nunique())
        return out

    def table(self) -> str:
        f = self.frame()
        if f.empty:
            return "(no source with an evaluable pair)"
        cols = ["router", "prior", "knn10", "knn50", "random", "oracle"]
        cols += [c for c in f.columns if c not in cols and c not in ("source", "strong", "weak", "n", "test_prompts")]
        lines = [f"{'source':<14} {'N':>5} {'test':>5} " + " ".join(f"{c[:9]:>9}" for c in cols)]
        for r in f.itertuples(index=False):
            lines.append(f"{r.source[:14]:<14} {r.n:>5} {r.test_prompts:>5} "
                         + " ".join(f"{getattr(r, c):>9.3f}" for c in cols))
        lines.append("mean over sources (sources counted per N):")
        for n, r in self.means().iterrows():
            lines.append(f"{'mean':<10} {int(r['sources']):>2}s {n:>5} {'':>5} " + " ".join(f"{r[c]:>9.3f}" for c in cols))
        return "\n".join(lines)


def _features(raw: np.ndarray, standardizer: dict) -> np.ndarray:
    z = (raw - np.asarray(standardizer["mean"], np.float32)) / np.asarray(standardizer["std"], np.float32)
    return np.clip(z, -CLIP, CLIP).astype(np.float32)


def knn_scores(E_test: np.ndarray, E_lab: np.ndarray, t_lab: np.ndarray, k: int) -> np.ndarray:
    """Mean observed P(strong beats weak) of the k nearest labelled prompts (cosine)."""
    if not len(t_lab):
        return np.full(len(E_test), 0.5)
    sims = E_test @ E_lab.T
    k = min(k, len(t_lab))
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < len(t_lab) else np.tile(np.arange(len(t_lab)), (len(E_test), 1))
    return t_lab[top].mean(axis=1)


def adaptation_measure(outcomes: pd.DataFrame, prefs: pd.DataFrame, embeddings: dict[str, np.ndarray], *,
                       config: irt_mf.IRTMFConfig, weighting: Weighting = Weighting(),
                       adaptive: AdaptiveConfig | None = None, prompt_stats: bool = True,
                       val_fraction: float = 0.1, ns: tuple[int, ...] = NS, sources: list[str] | None = None,
                       extra: dict[str, AdaptiveConfig] | None = None, seed: int = 0,
                       max_test: int = MAX_TEST, progress: bool = False) -> AdaptReport:
    """`outcomes` / `prefs`: the store's rows (importers.store.load_*); `embeddings`: prompt hash ->
    vector for every prompt in them (the embedding cache)."""
    started = time.perf_counter()
    adaptive = adaptive or AdaptiveConfig()
    report = AdaptReport()
    full = build_router_data(outcomes, prefs, weighting)
    raw_by_hash = dict(zip(full.prompt_hashes, raw_features(full.prompts), strict=True)) if prompt_stats else {}
    every_model = set(range(len(full.vocabulary)))
    rng_seed = np.random.default_rng(seed).integers(1 << 30)
    o_src = outcomes["source"].to_numpy()
    p_src = prefs["source"].to_numpy()
    for source in sources or full.sources:
        ev = eval_pair(full, source, every_model)
        if ev is None:
            continue
        hashes = np.asarray(full.prompt_hashes, dtype=object)[ev.q]
        order = np.random.default_rng(rng_seed).permutation(len(hashes))
        n_test = min(int(round(TEST_FRACTION * len(hashes))), max_test)
        test, pool = order[:n_test], order[n_test:]
        t_all = 0.5 + 0.5 * (ev.strong_q - ev.weak_q)
        E_all = normalize_rows(np.stack([embeddings[h] for h in hashes]))
        source_hashes = set(outcomes.loc[o_src == source, "prompt_hash"]) | set(prefs.loc[p_src == source, "prompt_hash"])
        o_prior = outcomes[~outcomes["prompt_hash"].isin(source_hashes)]
        p_prior = prefs[~prefs["prompt_hash"].isin(source_hashes)]
        o_pair = outcomes[(o_src == source) & outcomes["model"].isin([ev.strong, ev.weak])]
        p_pair = prefs[(p_src == source) & (((prefs["model_a"] == ev.strong) & (prefs["model_b"] == ev.weak))
                                            | ((prefs["model_a"] == ev.weak) & (prefs["model_b"] == ev.strong)))]
        oracle = float(rmetrics.oracle_curve(ev.weak_q[test], ev.strong_q[test]).apgr())
        for n in ns:
            if n > len(pool):
                continue
            t0 = time.perf_counter()
            labelled = set(hashes[pool[:n]])
            o_run = pd.concat([o_prior, o_pair[o_pair["prompt_hash"].isin(labelled)]], ignore_index=True)
            p_run = pd.concat([p_prior, p_pair[p_pair["prompt_hash"].isin(labelled)]], ignore_index=True)
            data = build_router_data(o_run, p_run, weighting)
            emb = np.stack([embeddings[h] for h in data.prompt_hashes]).astype(np.float32)
            standardizer = None
            if prompt_stats:
                raw = np.stack([raw_by_hash[h] for h in data.prompt_hashes])
                standardizer = fit_standardizer(raw)
                X = np.hstack([emb, _features(raw, standardizer)])
                X_test = np.hstack([np.stack([embeddings[h] for h in hashes[test]]).astype(np.float32),
                                    _features(np.stack([raw_by_hash[h] for h in hashes[test]]), standardizer)])
            else:
                X, X_test = emb, np.stack([embeddings[h] for h in hashes[test]]).astype(np.float32)
            val_mask = split_prompts(len(data.prompts), val_fraction, seed)
            weights, _ = fit_weights(data, X, ~val_mask, config)
            index = {m: i for i, m in enumerate(data.vocabulary)}
            wq, sq = ev.weak_q[test], ev.strong_q[test]

            def apgr(scores: np.ndarray, wq: np.ndarray = wq, sq: np.ndarray = sq) -> float:
                return float(rmetrics.apgr(scores, wq, sq))

            row_extra: dict[str, float] = {}
            if ev.strong in index and ev.weak in index:
                si, wi = index[ev.strong], index[ev.weak]
                prior = apgr(irt_mf.pair_score(weights, X_test, si, wi))
                scores: dict[str, float] = {}
                for name, cfg in {"router": adaptive, **(extra or {})}.items():
                    router = MFRouter(weights, {"format": FORMAT_V2, "vocabulary": data.vocabulary,
                                                "embedding": {}, "prompt_features": standardizer,
                                                "adaptive": cfg.to_dict()})
                    scores[name] = apgr(router._score_vectors(X_test, ev.strong, ev.weak))
                router_apgr = scores.pop("router")
                row_extra = scores
            else:  # the pair is unknown before its labels: the pair-free difficulty, as LOSO does
                prior = router_apgr = apgr(irt_mf.difficulty(weights, X_test))
                row_extra = {name: router_apgr for name in (extra or {})}
            lab = pool[:n]
            knn = {k: apgr(knn_scores(E_all[test], E_all[lab], t_all[lab], k)) if n else 0.5 for k in KNN_KS}
            row = AdaptRow(source, ev.strong, ev.weak, n, len(test), router_apgr, prior, knn[10], knn[50],
                           oracle, extra=row_extra)
            report.rows.append(row)
            if progress:
                print(f"  adapt {source:<14} N={n:<5} router {row.router:.3f} prior {row.prior:.3f} "
                      f"knn10 {row.knn10:.3f} knn50 {row.knn50:.3f} oracle {oracle:.3f} "
                      + " ".join(f"{k} {v:.3f}" for k, v in row_extra.items())
                      + f" ({time.perf_counter() - t0:.0f}s)", flush=True)
    report.seconds = time.perf_counter() - started
    return report


def adaptation_plot(report: AdaptReport, path) -> None:  # noqa: ANN001
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = report.means()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = means.index.to_numpy()
    xs = np.where(x == 0, 25, x)  # log axis: N = 0 drawn at the left edge
    for col, style in (("router", "o-"), ("prior", "s--"), ("knn10", "^:"), ("knn50", "v:"), ("oracle", "-")):
        if col in means:
            ax.plot(xs, means[col], style, label=col if col != "oracle" else "oracle (clipped)", alpha=0.9)
    ax.axhline(0.5, color="grey", linestyle="--", label="random")
    ax.set_xscale("log")
    ax.set_xticks(xs, [str(int(v)) for v in x])
    ax.set_ylim(0.4, min(1.2, max(0.9, float(np.nanmax(means.get("router", 0.9))) + 0.1)))
    ax.set_xlabel("labels of the served pair imported from the deployment (N)")
    ax.set_ylabel("APGR on the deployment's unseen prompts (mean over sources)")
    ax.set_title("Adaptation to the deployment's own labels")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
