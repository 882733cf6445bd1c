"""Cascade calibration and evaluation on recorded outcomes (FrugalGPT's LLM cascade).

A table of queries holds, per model m: correctness `m` (0/1 or a quality in [0, 1]), cost
`m|total_cost` (USD) and a scorer's P(m's answer is good) `m|score`. A ladder (m1, ..., mk) with
thresholds (t1, ..., t(k-1)) pays for m1; returns m1's answer iff score >= t1, else pays for m2, ...;
mk's answer is always returned. Calibration searches ladders (ordered subsets of up to 3 models,
cheaper first, as FrugalGPT prunes) and per-step threshold grids on a training split for

- max quality subject to mean cost <= budget, or
- min mean cost subject to quality >= target,

and evaluation replays the chosen cascade on a test split.

For RouterBench no probe over API models' hidden states exists, so the scorer is a text probe per
model (standardized logistic regression over MiniLM embeddings of prompt and response), trained on
the train split; train-split scores are out-of-fold so the thresholds are fit on honest scores.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from routerops import registry
from routerops.models.embeddings import get_embedder
from routerops.models.probes.probe import auroc, make_probe

log = logging.getLogger(__name__)

NEVER = math.inf  # a threshold no score reaches: always escalate
ROUTERBENCH_SETS = ("arc_challenge", "mbpp", "winograde")
GPT4 = "gpt-4-1106-preview"


@dataclass
class OutcomeTable:
    """Per-model arrays over the same queries."""

    models: list[str]
    correct: dict[str, np.ndarray]
    cost: dict[str, np.ndarray]
    score: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("an outcome table needs at least one model")
        n = len(self.correct[self.models[0]])
        for m in self.models:
            for what, d in (("correctness", self.correct), ("cost", self.cost), ("score", self.score)):
                if m not in d:
                    raise ValueError(f"model {m!r} has no {what} column")
                if len(d[m]) != n:
                    raise ValueError(f"model {m!r} {what} has {len(d[m])} rows, expected {n}")
                if np.isnan(np.asarray(d[m], dtype=np.float64)).any():
                    raise ValueError(f"model {m!r} {what} has missing values")

    @property
    def n(self) -> int:
        return len(self.correct[self.models[0]])

    def subset(self, idx: np.ndarray) -> OutcomeTable:
        return OutcomeTable(list(self.models), {m: v[idx] for m, v in self.correct.items()},
                            {m: v[idx] for m, v in self.cost.items()}, {m: v[idx] for m, v in self.score.items()})

    @classmethod
    def from_frame(cls, df: pd.DataFrame, models: Sequence[str] | None = None) -> OutcomeTable:
        """Columns `m`, `m|total_cost`, `m|score` for each model m (RouterBench spelling + scores)."""
        if models is None:
            models = [c[: -len("|score")] for c in df.columns if c.endswith("|score")]
        if not models:
            raise ValueError("no '<model>|score' columns: the table needs a probe score per model")
        missing = [c for m in models for c in (m, f"{m}|total_cost", f"{m}|score") if c not in df.columns]
        if missing:
            raise ValueError(f"outcome table lacks columns {missing}")
        return cls(list(models), {m: df[m].to_numpy(np.float64) for m in models},
                   {m: df[f"{m}|total_cost"].to_numpy(np.float64) for m in models},
                   {m: df[f"{m}|score"].to_numpy(np.float64) for m in models})


@dataclass(frozen=True)
class CascadePlan:
    models: tuple[str, ...]
    thresholds: tuple[float, ...]
    quality: float
    cost: float

    def describe(self) -> str:
        parts = [self.models[0]]
        for t, m in zip(self.thresholds, self.models[1:], strict=True):
            parts.append(f"(p<{t:.3f})-> {m}" if math.isfinite(t) else f"(always)-> {m}")
        return " ".join(parts)


def simulate(table: OutcomeTable, models: Sequence[str], thresholds: Sequence[float]) -> tuple[float, float]:
    """(mean quality, mean cost) of one cascade on the table."""
    if len(thresholds) != len(models) - 1:
        raise ValueError(f"{len(models)} models need {len(models) - 1} thresholds")
    undecided = np.ones(table.n, dtype=bool)
    quality = np.zeros(table.n)
    cost = np.zeros(table.n)
    for i, m in enumerate(models):
        cost[undecided] += table.cost[m][undecided]
        accept = undecided if i == len(models) - 1 else undecided & (table.score[m] >= thresholds[i])
        quality[accept] = table.correct[m][accept]
        undecided &= ~accept
    return float(quality.mean()), float(cost.mean())


def threshold_grid(scores: np.ndarray, size: int = 21) -> np.ndarray:
    """Candidate thresholds: 0 (always accept), score quantiles, and NEVER (always escalate)."""
    qs = np.quantile(scores, np.linspace(0, 1, size)[1:-1]) if size > 2 else np.array([])
    return np.unique(np.concatenate([[0.0], qs, [NEVER]]))


def _ladder_surface(table: OutcomeTable, models: Sequence[str], grids: Sequence[np.ndarray]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Mean quality and cost for every threshold combination (arrays of shape grid sizes)."""
    n = table.n
    if len(models) == 1:
        m = models[0]
        return np.array(table.correct[m].mean()), np.array(table.cost[m].mean())
    # Work backwards: value of "arriving at step i" per query, as a function of later thresholds.
    last = models[-1]
    q_next = table.correct[last][None, :]  # (1, n): no thresholds after the last step
    c_next = table.cost[last][None, :]
    for i in range(len(models) - 2, -1, -1):
        m = models[i]
        acc = (table.score[m][None, :] >= grids[i][:, None]).astype(np.float64)  # (G_i, n)
        # new[g_i, g_rest..., q] = acc*correct_m + (1-acc)*q_next ; cost = cost_m + (1-acc)*c_next
        q_new = acc[:, None, :] * table.correct[m][None, None, :] + (1 - acc)[:, None, :] * q_next[None, :, :]
        c_new = table.cost[m][None, None, :] + (1 - acc)[:, None, :] * c_next[None, :, :]
        q_next = q_new.reshape(-1, n)
        c_next = c_new.reshape(-1, n)
    shape = tuple(len(g) for g in grids)
    return q_next.mean(axis=1).reshape(shape), c_next.mean(axis=1).reshape(shape)


def candidate_ladders(table: OutcomeTable, max_length: int = 3, cheaper_first: bool = True) -> list[tuple[str, ...]]:
    mean_cost = {m: float(table.cost[m].mean()) for m in table.models}
    out: list[tuple[str, ...]] = []
    for k in range(1, max_length + 1):
        for ladder in itertools.permutations(table.models, k):
            if cheaper_first and any(mean_cost[a] > mean_cost[b] for a, b in itertools.pairwise(ladder)):
                continue
            out.append(ladder)
    return out


def _better(q: float, c: float, best: CascadePlan | None, objective: str) -> bool:
    if best is None:
        return True
    if objective == "max_quality":
        return q > best.quality + 1e-12 or (abs(q - best.quality) <= 1e-12 and c < best.cost - 1e-15)
    return c < best.cost - 1e-15 or (abs(c - best.cost) <= 1e-15 and q > best.quality + 1e-12)


def search(table: OutcomeTable, *, budget: float | None = None, quality_target: float | None = None,
           max_length: int = 3, grid_size: int = 21, ladders: Sequence[Sequence[str]] | None = None,
           grids: dict[str, np.ndarray] | None = None,
           cache: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] | None = None) -> CascadePlan | None:
    """The best cascade on `table`: max quality with mean cost <= budget, or min cost with quality >=
    quality_target (exactly one of the two). None when nothing is feasible. `cache` keeps each ladder's
    quality/cost surface across calls with the same table and grids (budget sweeps)."""
    if (budget is None) == (quality_target is None):
        raise ValueError("give exactly one of budget or quality_target")
    objective = "max_quality" if budget is not None else "min_cost"
    if grids is None:
        grids = {m: threshold_grid(table.score[m], grid_size) for m in table.models}
    best: CascadePlan | None = None
    for ladder in ladders or candidate_ladders(table, max_length):
        ladder = tuple(ladder)
        ladder_grids = [grids[m] for m in ladder[:-1]]
        if cache is not None and ladder in cache:
            q, c = cache[ladder]
        else:
            q, c = _ladder_surface(table, ladder, ladder_grids)
            q, c = np.atleast_1d(q).ravel(), np.atleast_1d(c).ravel()
            if cache is not None:
                cache[ladder] = (q, c)
        feasible = c <= budget + 1e-12 if budget is not None else q >= quality_target - 1e-12  # type: ignore[operator]
        if not feasible.any():
            continue
        idx = np.flatnonzero(feasible)
        if objective == "max_quality":
            top = idx[np.lexsort((c[idx], -q[idx]))[0]]
        else:
            top = idx[np.lexsort((-q[idx], c[idx]))[0]]
        if _better(float(q[top]), float(c[top]), best, objective):
            combo = np.unravel_index(top, tuple(len(g) for g in ladder_grids)) if ladder_grids else ()
            thresholds = tuple(float(ladder_grids[i][j]) for i, j in enumerate(combo))
            best = CascadePlan(tuple(ladder), thresholds, float(q[top]), float(c[top]))
    return best


# --- RouterBench -------------------------------------------------------------------------------
@dataclass
class RouterBenchSplit:
    frame: pd.DataFrame
    models: list[str]


def load_routerbench(folder: Path | str, split: str, datasets: Sequence[str] = ROUTERBENCH_SETS) -> RouterBenchSplit:
    folder = Path(folder)
    frames = []
    for name in datasets:
        path = folder / f"{name}_{split}.csv.gz"
        if not path.is_file():
            raise FileNotFoundError(f"RouterBench file {path} does not exist")
        df = pd.read_csv(path)
        df["dataset"] = name
        frames.append(df)
    frame = pd.concat(frames, ignore_index=True)
    models = [c[: -len("|total_cost")] for c in frame.columns if c.endswith("|total_cost")]
    bad = frame[models].isna().any(axis=1) | frame[[f"{m}|total_cost" for m in models]].isna().any(axis=1)
    if bad.any():
        log.warning("RouterBench %s: %d rows with missing scores/costs skipped", split, int(bad.sum()))
        frame = frame[~bad].reset_index(drop=True)
    return RouterBenchSplit(frame, models)


def response_text(raw: object) -> str:
    """RouterBench stores responses as the repr of a one-element list: "['A']"."""
    text = "" if raw is None or (isinstance(raw, float) and math.isnan(raw)) else str(raw)
    if text.startswith("['") and text.endswith("']") or text.startswith('["') and text.endswith('"]'):
        text = text[2:-2]
    return text.replace("\\n", "\n").strip()


class EmbeddingStore:
    """Embeddings of texts by sha256, kept in one .npy + index under a folder: embed each text once."""

    def __init__(self, folder: Path, embedder) -> None:  # noqa: ANN001
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.embedder = embedder
        tag = hashlib.sha256(embedder.name.encode()).hexdigest()[:10]
        self.vec_path = self.folder / f"vectors-{tag}.npy"
        self.key_path = self.folder / f"keys-{tag}.txt"
        self.keys: list[str] = self.key_path.read_text().split() if self.key_path.is_file() else []
        self.vectors = np.load(self.vec_path) if self.vec_path.is_file() and self.keys else None
        if self.vectors is not None and len(self.vectors) != len(self.keys):
            log.warning("embedding store %s is inconsistent; rebuilding", self.folder)
            self.keys, self.vectors = [], None
        self.index = {k: i for i, k in enumerate(self.keys)}

    def embed(self, texts: Sequence[str], batch: int = 512, progress: bool = True) -> np.ndarray:
        hashes = [hashlib.sha256(t.encode()).hexdigest()[:24] for t in texts]
        todo = list(dict.fromkeys(h for h in hashes if h not in self.index))
        if todo:
            by_hash = dict(zip(hashes, texts, strict=True))
            new = []
            for i in tqdm(range(0, len(todo), batch), desc="MiniLM embeddings", disable=not progress):
                new.append(np.asarray(self.embedder.encode([by_hash[h] for h in todo[i : i + batch]]), np.float32))
            stacked = np.concatenate(new)
            self.vectors = stacked if self.vectors is None else np.concatenate([self.vectors, stacked])
            for h in todo:
                self.index[h] = len(self.keys)
                self.keys.append(h)
            np.save(self.vec_path, self.vectors)
            self.key_path.write_text("\n".join(self.keys))
        assert self.vectors is not None
        return self.vectors[[self.index[h] for h in hashes]]


@dataclass
class ScoredRouterBench:
    train: OutcomeTable
    test: OutcomeTable
    datasets_train: np.ndarray
    datasets_test: np.ndarray
    probe_auroc: dict[str, float] = field(default_factory=dict)  # test AUROC of each model's probe
    prompts_train: list[str] = field(default_factory=list)
    prompts_test: list[str] = field(default_factory=list)


def score_routerbench(folder: Path | str, embedder, cache_dir: Path, datasets: Sequence[str] = ROUTERBENCH_SETS,  # noqa: ANN001
                      c: float = 0.05, folds: int = 5, seed: int = 0, progress: bool = True) -> ScoredRouterBench:
    """Text probes per model on the train split; out-of-fold scores on train, fitted-probe scores on test."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    train, test = load_routerbench(folder, "train", datasets), load_routerbench(folder, "test", datasets)
    models = train.models
    store = EmbeddingStore(cache_dir, embedder)
    truncate = 1000  # characters: about the 256 tokens MiniLM reads at most

    def features(frame: pd.DataFrame, m: str) -> np.ndarray:
        prompts = [response_text(p)[:truncate] for p in frame["prompt"]]
        answers = [response_text(a)[:truncate] for a in frame[f"{m}|model_response"]]
        return np.hstack([store.embed(prompts, progress=False), store.embed(answers, progress=False)])

    # Embed everything in one pass first (with a progress bar), then the per-model lookups are cached.
    all_texts = [response_text(p)[:truncate] for fr in (train.frame, test.frame) for p in fr["prompt"]]
    all_texts += [response_text(a)[:truncate] for fr in (train.frame, test.frame) for m in models
                  for a in fr[f"{m}|model_response"]]
    store.embed(all_texts, progress=progress)

    tr_scores, te_scores, aurocs = {}, {}, {}
    for m in models:
        y_tr = train.frame[m].to_numpy(np.float64).round().astype(int)
        x_tr, x_te = features(train.frame, m), features(test.frame, m)
        if len(np.unique(y_tr)) < 2:  # a model always right (or wrong) on train: constant score
            tr_scores[m] = np.full(len(y_tr), float(y_tr[0]))
            te_scores[m] = np.full(len(test.frame), float(y_tr[0]))
        else:
            k = max(2, min(folds, int(np.bincount(y_tr).min())))
            cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
            tr_scores[m] = cross_val_predict(make_probe(c, seed), x_tr, y_tr, cv=cv, method="predict_proba")[:, 1]
            te_scores[m] = make_probe(c, seed).fit(x_tr, y_tr).predict_proba(x_te)[:, 1]
        aurocs[m] = auroc(test.frame[m].to_numpy().round().astype(int), te_scores[m])

    def table(split: RouterBenchSplit, scores: dict[str, np.ndarray]) -> OutcomeTable:
        f = split.frame
        return OutcomeTable(models, {m: f[m].to_numpy(np.float64) for m in models},
                            {m: f[f"{m}|total_cost"].to_numpy(np.float64) for m in models}, scores)

    return ScoredRouterBench(table(train, tr_scores), table(test, te_scores), train.frame["dataset"].to_numpy(),
                             test.frame["dataset"].to_numpy(), aurocs,
                             [response_text(p) for p in train.frame["prompt"]],
                             [response_text(p) for p in test.frame["prompt"]])


@dataclass
class CascadeEvaluation:
    name: str
    singles: dict[str, tuple[float, float]]  # model -> (test accuracy, test mean cost)
    match_gpt4: dict[str, object]
    budgets: list[dict[str, object]]
    pareto: list[tuple[float, float, str]]  # (test cost, test accuracy, plan) per budget
    probe_auroc: dict[str, float]


def evaluate_cascades(train: OutcomeTable, test: OutcomeTable, *, name: str = "all", reference: str = GPT4,
                      budgets: Sequence[float] | None = None, n_pareto: int = 12, max_length: int = 3,
                      grid_size: int = 21, probe_auroc: dict[str, float] | None = None) -> CascadeEvaluation:
    """Calibrate on train, replay on test: cost to match `reference`'s accuracy, accuracy at budgets,
    and a Pareto sweep of budgets between the cheapest and the dearest single model."""
    grids = {m: threshold_grid(train.score[m], grid_size) for m in train.models}
    ladders = candidate_ladders(train, max_length)
    cache: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}
    singles = {m: (float(test.correct[m].mean()), float(test.cost[m].mean())) for m in test.models}

    def replay(plan: CascadePlan | None) -> dict[str, object]:
        if plan is None:
            return {"plan": None}
        q, c = simulate(test, plan.models, plan.thresholds)
        return {"plan": plan.describe(), "models": list(plan.models), "thresholds": list(plan.thresholds),
                "train_accuracy": plan.quality, "train_cost": plan.cost, "test_accuracy": q, "test_cost": c}

    ref_q_train = float(train.correct[reference].mean())
    match = replay(search(train, quality_target=ref_q_train, ladders=ladders, grids=grids, cache=cache))
    ref_q, ref_c = singles[reference]
    match |= {"reference": reference, "reference_test_accuracy": ref_q, "reference_test_cost": ref_c}
    if match.get("test_cost") is not None:
        match["savings"] = 1.0 - float(match["test_cost"]) / ref_c  # type: ignore[arg-type]
    costs = sorted(c for _, c in singles.values())
    if budgets is None:
        budgets = [ref_c * f for f in (0.05, 0.1, 0.25, 0.5)]
    at_budget = [{"budget": b, **replay(search(train, budget=b, ladders=ladders, grids=grids, cache=cache))} for b in budgets]
    sweep = np.geomspace(costs[0], costs[-1], n_pareto)
    pareto = []
    for b in sweep:
        r = replay(search(train, budget=float(b), ladders=ladders, grids=grids, cache=cache))
        if r.get("plan"):
            pareto.append((float(r["test_cost"]), float(r["test_accuracy"]), str(r["plan"])))  # type: ignore[arg-type]
    return CascadeEvaluation(name, singles, match, at_budget, pareto, dict(probe_auroc or {}))


def pareto_plot(evals: Sequence[CascadeEvaluation], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(evals), figsize=(5.2 * len(evals), 4.4), squeeze=False)
    for ax, ev in zip(axes[0], evals, strict=True):
        for m, (q, c) in ev.singles.items():
            ax.scatter(c, q, s=22, color="C3" if m == GPT4 else "grey")
            ax.annotate(m.rsplit("/", 1)[-1][:18], (c, q), fontsize=6, alpha=0.8)
        if ev.pareto:
            pts = sorted(ev.pareto)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color="C0", label="cascade (test)")
        ax.set_xscale("log")
        ax.set_xlabel("mean cost per query (USD, log)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"RouterBench {ev.name}: cascade vs single models")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_routerbench_eval(folder: Path | str, settings, *, datasets: Sequence[str] = ROUTERBENCH_SETS,  # noqa: ANN001
                         per_dataset: bool = True, log_mlflow: bool = True, progress: bool = True
                         ) -> tuple[list[CascadeEvaluation], ScoredRouterBench, str | None]:
    """Score with text probes, evaluate pooled and per dataset; log figures and the Pareto plot."""

    embedder = get_embedder(settings)
    scored = score_routerbench(folder, embedder, settings.data_dir / "cascade_eval" / "embeddings", datasets,
                               progress=progress)
    evals = [evaluate_cascades(scored.train, scored.test, name="all", probe_auroc=scored.probe_auroc)]
    if per_dataset and len(datasets) > 1:
        for d in datasets:
            tr = scored.train.subset(np.flatnonzero(scored.datasets_train == d))
            te = scored.test.subset(np.flatnonzero(scored.datasets_test == d))
            evals.append(evaluate_cascades(tr, te, name=d))
    run_id = None
    if log_mlflow:
        import mlflow


        registry.configure_mlflow(settings)
        with mlflow.start_run(run_name="cascade-routerbench") as run, tempfile.TemporaryDirectory() as tmp:
            metrics: dict[str, float] = {}
            for ev in evals:
                for key in ("test_accuracy", "test_cost", "savings", "reference_test_accuracy", "reference_test_cost"):
                    v = ev.match_gpt4.get(key)
                    if isinstance(v, float) and np.isfinite(v):
                        metrics[f"{ev.name}_match_gpt4_{key}"] = v
                for i, b in enumerate(ev.budgets):
                    if b.get("test_accuracy") is not None:
                        metrics[f"{ev.name}_budget{i}_test_accuracy"] = float(b["test_accuracy"])  # type: ignore[arg-type]
            metrics |= {f"probe_test_auroc_{m.replace('/', '_')}": a for m, a in scored.probe_auroc.items()
                        if np.isfinite(a)}
            mlflow.log_metrics(metrics)
            mlflow.log_artifact(str(pareto_plot(evals, Path(tmp) / "cascade_pareto.png")), "plots")
            run_id = run.info.run_id
    return evals, scored, run_id


def format_report(evals: Sequence[CascadeEvaluation]) -> str:
    """Plain-text figures: probe AUROC, cost to match GPT-4, accuracy at budgets, Pareto points."""
    lines: list[str] = []
    for ev in evals:
        lines.append(f"== RouterBench {ev.name} (calibrated on train, figures on test) ==")
        if ev.probe_auroc:
            lines.append("text-probe test AUROC per model: " + ", ".join(
                f"{m.rsplit('/', 1)[-1]} {a:.3f}" for m, a in ev.probe_auroc.items()))
        mg = ev.match_gpt4
        ref = f"{mg['reference']} acc {mg['reference_test_accuracy']:.3f} at ${mg['reference_test_cost']:.6f}/query"
        if mg.get("plan"):
            lines.append(f"match {ref}: cascade {mg['plan']}\n    test acc {mg['test_accuracy']:.3f} at "
                         f"${mg['test_cost']:.6f}/query -> saves {100 * mg['savings']:.1f}% "
                         f"(FrugalGPT reports 57-98% at GPT-4 quality on its datasets)")
        else:
            lines.append(f"match {ref}: no cascade reaches it on train")
        for b in ev.budgets:
            if b.get("plan"):
                lines.append(f"budget ${b['budget']:.6f}: test acc {b['test_accuracy']:.3f} at ${b['test_cost']:.6f}"
                             f"  [{b['plan']}]")
            else:
                lines.append(f"budget ${b['budget']:.6f}: nothing feasible")
        best_single = max(ev.singles.items(), key=lambda kv: kv[1][0])
        lines.append(f"best single model: {best_single[0]} acc {best_single[1][0]:.3f} at ${best_single[1][1]:.6f}")
        lines.append("pareto (test cost -> acc): " + ", ".join(f"${c:.6f}->{q:.3f}" for c, q, _ in sorted(ev.pareto)))
    return "\n".join(lines)
