"""RouterBench fleet figures (issue 27): the cost-accuracy front of the fleet router over RouterBench's 11
models with their real costs, beside every single model, the best one-model-per-task plans, random
mixes of single models (RouterBench's "zero router"), the plain kNN rule and the oracle.

    nice -n 10 python benchmarks/fleet_routerbench.py [--data ../shared/data/routerbench] [--no-mlflow]
        [--cache /tmp/routerops-fleet-bench] [--rank 16] [--k 20] [--folds 5]

Protocol: train splits fit, test splits judge. The fleet router is the router as `routerops train
router` fits it: the IRT-MF prior (routerops.models.irt_mf) on MiniLM embeddings + prompt statistics of
the train prompts, fit on the train outcomes (0/1 per model), and the category heads
(routerops.models.category_heads) from the rows' categories (RouterBench's task, a scores source's
category), the category of a test prompt predicted by the heads' classifier. "IRT-MF prior alone" is
the router without the heads. The expected cost per model is a linear fit of its real cost on the
prompt's length (train). The decision is routerops.models.fleet_dial: max P(good) - lambda x relative
cost, swept over lambda on test for the front. "dial chosen on train" picks lambda on out-of-fold train
predictions (--folds fits) for GPT-4's train accuracy (and 95% of it) and reports the test point: no
test data is used to choose it. Cost ratios are test mean cost over always-GPT-4's test mean cost; on a
front, points between two routers are their random mix. Where a figure comes from: the test prompts
redrawn 200 times (percentiles) and the out-of-fold train front. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _fronts import cost_at, hull, pareto  # noqa: E402

GPT4 = "gpt-4-1106-preview"
LAMBDAS = np.concatenate([[0.0], np.logspace(-4, 2, 200)])


def sweep(q_pred: np.ndarray, cost_pred: np.ndarray, correct: np.ndarray, cost: np.ndarray,
          lambdas: np.ndarray = LAMBDAS) -> list[tuple[float, float, float]]:
    """(lambda, mean real cost, accuracy) of the dial on prompts."""
    from routerops.models.fleet_dial import choose

    rows = np.arange(len(q_pred))
    out = []
    for lam in lambdas:
        pick = choose(q_pred, cost_pred, float(lam))
        out.append((float(lam), float(cost[rows, pick].mean()), float(correct[rows, pick].mean())))
    return out


def per_task_plans(tasks_fit: np.ndarray, correct_fit: np.ndarray, cost_fit: np.ndarray, tasks_eval: np.ndarray,
                   correct_eval: np.ndarray, cost_eval: np.ndarray) -> list[tuple[float, float]]:
    """One model per task chosen on the fit split for each price of quality; judged on the eval split."""
    names = sorted(set(tasks_fit))
    points = []
    for mu in np.concatenate([[0.0], np.logspace(-1, 4, 300)]):
        pick = {}
        for t in names:
            m = tasks_fit == t
            pick[t] = int(np.argmax(correct_fit[m].mean(0) - mu * cost_fit[m].mean(0) - 1e-12 * cost_fit[m].mean(0)))
        idx = np.array([pick.get(t, 0) for t in tasks_eval])
        rows = np.arange(len(tasks_eval))
        points.append((float(cost_eval[rows, idx].mean()), float(correct_eval[rows, idx].mean())))
    return hull(points)  # plans mix: two plans at random reach the chord


def knn_quality(train_emb: np.ndarray, correct: np.ndarray, test_emb: np.ndarray, k: int) -> np.ndarray:
    a = train_emb / np.linalg.norm(train_emb, axis=1, keepdims=True).clip(1e-9)
    b = test_emb / np.linalg.norm(test_emb, axis=1, keepdims=True).clip(1e-9)
    sims = b @ a.T
    nn = np.argpartition(-sims, k, axis=1)[:, :k]
    return correct[nn].mean(axis=1)


def cost_model(lengths: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """(K, 2) per-model least squares cost = a + b x prompt chars (train)."""
    A = np.stack([np.ones_like(lengths), lengths], axis=1)
    return np.stack([np.linalg.lstsq(A, cost[:, j], rcond=None)[0] for j in range(cost.shape[1])])


def predict_cost(coef: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    return np.clip(coef[:, 0][None, :] + lengths[:, None] * coef[:, 1][None, :], 1e-9, None)


def fit_irt(X: np.ndarray, correct: np.ndarray, rank: int, seed: int = 0) -> dict[str, np.ndarray]:
    from routerops.models import irt_mf

    n, k = correct.shape
    q, m = np.repeat(np.arange(n), k), np.tile(np.arange(k), n)
    empty = np.zeros(0)
    data = irt_mf.FitData(X=X.astype(np.float32), num_models=k, out_q=q, out_m=m, out_y=correct.reshape(-1),
                          out_w=np.ones(n * k), pair_q=empty.astype(int), pair_a=empty.astype(int),
                          pair_b=empty.astype(int), pair_t=empty, pair_w=empty)
    params, _ = irt_mf.fit(data, irt_mf.IRTMFConfig(rank=rank, max_iter=200, seed=seed, l2_prompt=1e-3, l2_model=1e-3))
    return params


def fit_fleet(X: np.ndarray, correct: np.ndarray, categories: np.ndarray, rank: int, embed_dim: int, seed: int = 0,
              heads: bool = True):  # noqa: ANN201 - (X) -> (n, K) P(good)
    """The fleet router as `routerops train router` fits it: the IRT-MF prior and, from the
    categories the rows carry (here RouterBench's task), the category heads (classifier + heads)."""
    from routerops.models import category_heads, irt_mf

    params = fit_irt(X, correct, rank, seed)
    fitted = None
    if heads:
        n, k = correct.shape
        fitted = category_heads.fit_category_heads(X, list(categories), np.repeat(np.arange(n), k),
                                                   np.tile(np.arange(k), n), correct.reshape(-1), k,
                                                   irt_mf.p_correct(params, X).reshape(-1), embed_dim=embed_dim)

    def predict(Xq: np.ndarray) -> np.ndarray:
        prior = irt_mf.p_correct(params, Xq)
        if fitted is None:
            return prior
        return category_heads.quality(fitted.weights, Xq, np.arange(correct.shape[1]), prior)

    return predict


def bootstrap_ratios(q: np.ndarray, cost_pred: np.ndarray, correct: np.ndarray, cost: np.ndarray, ref: int,
                     draws: int = 200, seed: int = 1) -> dict[str, list[float]]:
    """10/50/90th percentiles of the front's cost ratios over test prompts redrawn with replacement
    (a target never reached counts as 1.0: always the reference): how much of a figure is the split."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        i = rng.integers(0, len(q), len(q))
        y, c = correct[i], cost[i]
        front = pareto([(cc, a) for _, cc, a in sweep(q[i], cost_pred[i], y, c)])
        ra, rc = y[:, ref].mean(), c[:, ref].mean()
        out.append([cost_at(front, share * ra) / rc for share in (1.0, 0.95)])
    pct = np.percentile(np.nan_to_num(np.array(out), nan=1.0), [10, 50, 90], axis=0)
    return {"at_ref": [round(float(v), 4) for v in pct[:, 0]], "at_95pct": [round(float(v), 4) for v in pct[:, 1]]}


def plot(path: Path, title: str, singles: dict, fronts: dict[str, list[tuple[float, float]]], gpt4: tuple[float, float],
         chosen: list[tuple[str, float, float]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.4))
    for m, (c, q) in singles.items():
        ax.scatter(c, q, s=20, color="grey")
        ax.annotate(m.rsplit("/", 1)[-1][:16], (c, q), fontsize=6, alpha=0.8)
    styles = {"fleet router (IRT-MF + category heads)": ("C0", "o-"), "IRT-MF prior alone": ("C4", "s:"), "kNN": ("C2", ".-"), "per-task plan (train)": ("C1", "^-"),
              "per-task plan (chosen on test)": ("C1", "^:"), "random mixes (zero router)": ("grey", "--"),
              "oracle": ("C3", ":")}
    for name, pts in fronts.items():
        color, style = styles.get(name, ("k", "-"))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=color, label=name, ms=3)
    ax.scatter(gpt4[0], gpt4[1], s=90, marker="*", color="C3", label="always the reference model", zorder=5)
    for label, c, q in chosen:
        ax.scatter(c, q, s=60, marker="D", color="C0", edgecolor="k", zorder=6)
        ax.annotate(label, (c, q), fontsize=7, xytext=(4, -10), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("mean cost per query, USD (test)")
    ax.set_ylabel("accuracy (test)")
    ax.set_title(f"{title} test: the fleet router")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


# scores/ sources: model name in the source -> its name in ../shared/data/prices/model_prices.json (list
# prices). Hand-made: the sources spell models their own way; a model not here stays unpriced (left out).
SCORES_PRICE_NAMES = {
    "zeroeval": {"gpt-4o-2024-05-13": "gpt-4o", "gpt-4o-2024-08-06": "gpt-4o", "chatgpt-4o-latest-24-09-07": "gpt-4o",
                 "gpt-4o-mini-2024-07-18": "gpt-4o-mini", "gpt-4-turbo-2024-04-09": "gpt-4-turbo", "gpt-4-0314": "gpt-4",
                 "gpt-3.5-turbo-0125": "gpt-3.5-turbo", "claude-3-haiku-20240307": "claude-3-haiku-20240307",
                 "claude-3-5-sonnet-20240620": "anthropic/claude-3.5-sonnet",
                 "Meta-Llama-3-70B-Instruct": "meta-llama/Llama-3-70b-chat-hf",
                 "Meta-Llama-3-8B-Instruct": "meta-llama/llama-3-8b-instruct",
                 "Meta-Llama-3.1-70B-Instruct": "meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo",
                 "Meta-Llama-3.1-8B-Instruct": "llama-3-1-8b-instruct", "Llama-3.1-405B-Inst-fp8": "llama-3-1-405b-instruct",
                 "Mistral-Large-2": "mistral-large-latest", "Mixtral-8x7B-Instruct-v0.1": "mistralai/mixtral-8x7b-instruct",
                 "deepseek-v2-coder-0724": "deepseek-coder"},
    "mmlu_pro": {"gpt4o": "gpt-4o", "Meta-Llama-3-8B-Instruct": "meta-llama/llama-3-8b-instruct",
                 "Meta-Llama-3_1-8B-Instruct": "llama-3-1-8b-instruct",
                 "Meta-Llama-3_1-70B-Instruct": "meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo",
                 "Mixtral-8x7B-Instruct-v0.1": "mistralai/mixtral-8x7b-instruct",
                 "Mistral-7B-Instruct-v0.2": "mistralai/mistral-7b-instruct", "DeepSeek-Coder-V2": "deepseek-coder"},
}


def load_scores(folder: Path, source: str, prices_file: Path, completion_tokens: int, test_share: float = 0.3):
    """(models, train arrays, test arrays, unpriced): prompts every priced model answered, split by a
    hash of the prompt id; cost = prompt chars / 4 x input price + completion_tokens x output price."""
    import gzip
    import hashlib

    prices = json.loads(prices_file.read_text())
    names = SCORES_PRICE_NAMES[source]
    rows: dict[str, dict] = {}
    seen: set[str] = set()
    with gzip.open(folder / f"{source}.jsonl.gz", "rt") as fh:
        for line in fh:
            r = json.loads(line)
            seen.add(r["model"])
            if r["model"] in names:
                d = rows.setdefault(r["prompt_id"], {"prompt": r["prompt"], "category": r["category"], "s": {}})
                d["s"][r["model"]] = float(r["score"])
    models = sorted(m for m in names if m in seen)
    full = [(pid, d) for pid, d in sorted(rows.items()) if all(m in d["s"] for m in models)]
    pr = np.array([[prices[names[m]]["input_token_price_per_million"], prices[names[m]]["output_token_price_per_million"]]
                   for m in models], np.float64)

    def arrays(items):  # noqa: ANN001, ANN202
        prompts = [d["prompt"] for _, d in items]
        y = np.array([[d["s"][m] for m in models] for _, d in items], np.float64)
        tok = np.array([len(p) / 4 for p in prompts])
        cost = (tok[:, None] * pr[None, :, 0] + completion_tokens * pr[None, :, 1]) / 1e6
        return prompts, np.array([d["category"] for _, d in items]), y, cost

    is_test = [int(hashlib.sha256(pid.encode()).hexdigest()[:8], 16) / 16**8 < test_share for pid, _ in full]
    train = arrays([x for x, t in zip(full, is_test, strict=True) if not t])
    test = arrays([x for x, t in zip(full, is_test, strict=True) if t])
    return models, train, test, sorted(seen - set(models))


def evaluate(title: str, models: list[str], ref: int, train: tuple, test: tuple, e_tr: np.ndarray, e_te: np.ndarray,
             args: argparse.Namespace) -> tuple[dict, dict]:
    """Print the comparison on one data set; (summary, what the plot needs). `ref` is the reference
    model (GPT-4 on RouterBench): cost ratios are against always-`ref`, at its test accuracy."""
    from routerops.models.fleet_dial import choose
    from routerops.models.irt_mf import p_correct
    from routerops.models.prompt_features import features, fit_standardizer, raw_features

    p_tr, t_tr, y_tr, c_tr = train
    p_te, t_te, y_te, c_te = test
    std = fit_standardizer(raw_features(p_tr))
    X_tr, X_te = np.hstack([e_tr, features(p_tr, std)]), np.hstack([e_te, features(p_te, std)])
    len_tr = np.array([len(p) for p in p_tr], np.float64)
    len_te = np.array([len(p) for p in p_te], np.float64)
    coef = cost_model(len_tr, c_tr)
    cp_tr, cp_te = predict_cost(coef, len_tr), predict_cost(coef, len_te)
    ref_acc, ref_cost = float(y_te[:, ref].mean()), float(c_te[:, ref].mean())
    singles = {m: (float(c_te[:, j].mean()), float(y_te[:, j].mean())) for j, m in enumerate(models)}

    t1 = time.perf_counter()
    q_te = fit_fleet(X_tr, y_tr, t_tr, args.rank, e_tr.shape[1])(X_te)
    fit_s = time.perf_counter() - t1
    q_prior = p_correct(fit_irt(X_tr, y_tr, args.rank), X_te)  # the IRT-MF prior alone (before the heads)
    fleet_front = pareto([(c, a) for _, c, a in sweep(q_te, cp_te, y_te, c_te)])
    prior_front = pareto([(c, a) for _, c, a in sweep(q_prior, cp_te, y_te, c_te)])

    # the dial chosen on train: out-of-fold predictions, lambda for the reference's train accuracy (and 95%)
    fold = np.random.default_rng(0).integers(0, args.folds, len(p_tr))
    q_oof = np.zeros_like(y_tr)
    for f in range(args.folds):
        fit_rows, out_rows = fold != f, fold == f
        q_oof[out_rows] = fit_fleet(X_tr[fit_rows], y_tr[fit_rows], t_tr[fit_rows], args.rank,
                                   e_tr.shape[1], seed=f)(X_tr[out_rows])
    oof = sweep(q_oof, cp_tr, y_tr, c_tr)
    ref_train_acc = float(y_tr[:, ref].mean())
    chosen = {}
    rows = np.arange(len(p_te))
    for label, share in (("ref", 1.0), ("95pct", 0.95)):
        ok = [lam for lam, _, acc in oof if acc >= share * ref_train_acc]
        lam = max(ok) if ok else 0.0
        pick = choose(q_te, cp_te, lam)
        chosen[label] = {"lambda": lam, "train_target_met": bool(ok), "test_accuracy": float(y_te[rows, pick].mean()),
                         "test_cost_ratio": float(c_te[rows, pick].mean()) / ref_cost,
                         "test_accuracy_vs_ref": float(y_te[rows, pick].mean()) / ref_acc}

    knn_front = pareto([(c, a) for _, c, a in sweep(knn_quality(e_tr, y_tr, e_te, args.k), cp_te, y_te, c_te)])
    plan_train = per_task_plans(t_tr, y_tr, c_tr, t_te, y_te, c_te)
    plan_test = per_task_plans(t_te, y_te, c_te, t_te, y_te, c_te)
    zero = hull(list(singles.values()))
    oracle = pareto([(c, a) for _, c, a in sweep(y_te, c_te, y_te, c_te)])
    fronts = {"fleet router (IRT-MF + category heads)": fleet_front, "IRT-MF prior alone": prior_front, "kNN": knn_front, "per-task plan (train)": plan_train,
              "per-task plan (chosen on test)": plan_test, "random mixes (zero router)": zero, "oracle": oracle}

    def ratio(front: list[tuple[float, float]], share: float) -> float | None:
        c = cost_at(front, share * ref_acc)
        return None if not np.isfinite(c) else round(c / ref_cost, 4)

    tasks = ", ".join(f"{t} {n}" for t, n in zip(*np.unique(t_te, return_counts=True), strict=True))
    print(f"\n=== {title}: test {len(p_te)} prompts ({tasks}); train {len(p_tr)}; {len(models)} models; "
          f"always {models[ref]}: accuracy {ref_acc:.4f}, ${ref_cost * 1e3:.4f} per 1k queries")
    print(f"\n{'single model':44s} {'accuracy':>9s} {'cost/ref':>9s}")
    for m, (c, a) in sorted(singles.items(), key=lambda kv: kv[1][0]):
        print(f"{m:44s} {a:9.4f} {c / ref_cost:9.4f}")
    print(f"\n{'method (cost as share of always-' + models[ref][:12] + ')':44s} {'@ref acc':>9s} {'@95% ref':>9s} {'best acc':>9s}")
    for name, front in fronts.items():
        r1, r2 = ratio(front, 1.0), ratio(front, 0.95)
        fmt = lambda r: "never" if r is None else f"{r:.4f}"  # noqa: E731
        print(f"{name:44s} {fmt(r1):>9s} {fmt(r2):>9s} {max(a for _, a in front):9.4f}")
    print("\nfleet router, dial chosen on train (out-of-fold), judged on test:")
    for label, row in chosen.items():
        print(f"  target {label:6s} lambda={row['lambda']:.4g}: test accuracy {row['test_accuracy']:.4f} "
              f"({row['test_accuracy_vs_ref']:.1%} of the reference's) at {row['test_cost_ratio']:.4f} of its cost")
    boot = bootstrap_ratios(q_te, cp_te, y_te, c_te, ref)
    oof_front = pareto([(c, a) for _, c, a in oof])
    oof_ratio = {share: cost_at(oof_front, share * ref_train_acc) / float(c_tr[:, ref].mean()) for share in (1.0, 0.95)}
    print(f"\nfleet router, test prompts redrawn 200 times: cost at the reference's accuracy 10/50/90th pct "
          f"{boot['at_ref']}, at 95% {boot['at_95pct']}")
    print(f"fleet router out-of-fold on train: cost at the reference's train accuracy {oof_ratio[1.0]:.4f}, "
          f"at 95% {oof_ratio[0.95]:.4f}")
    summary = {
        "cost_ratio_at_ref_accuracy": ratio(fleet_front, 1.0),
        "prior_alone_cost_ratio_at_ref_accuracy": ratio(prior_front, 1.0),
        "prior_alone_cost_ratio_at_95pct_ref_accuracy": ratio(prior_front, 0.95),
        "bootstrap_cost_ratio_at_ref_accuracy_p10_p50_p90": boot["at_ref"],
        "bootstrap_cost_ratio_at_95pct_ref_accuracy_p10_p50_p90": boot["at_95pct"],
        "oof_train_cost_ratio_at_ref_accuracy": None if np.isnan(oof_ratio[1.0]) else round(oof_ratio[1.0], 4),
        "oof_train_cost_ratio_at_95pct_ref_accuracy": None if np.isnan(oof_ratio[0.95]) else round(oof_ratio[0.95], 4), "cost_ratio_at_95pct_ref_accuracy": ratio(fleet_front, 0.95),
        "dial_on_train_ref": chosen["ref"], "dial_on_train_95pct": chosen["95pct"],
        **{f"{key}_cost_ratio_at_ref_accuracy": ratio(fronts[name], 1.0) for key, name in _KEYS.items()},
        **{f"{key}_cost_ratio_at_95pct_ref_accuracy": ratio(fronts[name], 0.95) for key, name in _KEYS.items()},
        "reference": models[ref], "ref_test_accuracy": round(ref_acc, 4),
        "fleet_best_accuracy": round(max(a for _, a in fleet_front), 4),
        "test_prompts": len(p_te), "train_prompts": len(p_tr), "models": len(models), "fit_seconds": round(fit_s, 1)}
    return summary, {"singles": singles, "fronts": fronts, "ref": (ref_cost, ref_acc),
                     "chosen": [(k, v["test_cost_ratio"] * ref_cost, v["test_accuracy"]) for k, v in chosen.items()]}


_KEYS = {"knn": "kNN", "per_task_train": "per-task plan (train)", "per_task_test": "per-task plan (chosen on test)",
         "zero_router": "random mixes (zero router)", "oracle": "oracle"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "routerbench"))
    parser.add_argument("--scores", default="zeroeval,mmlu_pro",
                        help="../shared/data/scores sources to run too (comma-separated; 'none' for none)")
    parser.add_argument("--scores-dir", default=str(ROOT.parent / "shared" / "data" / "scores"))
    parser.add_argument("--prices", default=str(ROOT.parent / "shared" / "data" / "prices" / "model_prices.json"))
    parser.add_argument("--completion-tokens", type=int, default=400,
                        help="scores sources: the answer length their costs assume (they record no usage)")
    parser.add_argument("--cache", default="/tmp/routerops-fleet-bench", help="embedding cache folder")
    parser.add_argument("--rank", type=int, default=16)  # chosen on out-of-fold train figures
    parser.add_argument("--k", type=int, default=20, help="kNN neighbours")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(1)

    from routerops.models.embeddings import get_embedder
    from routerops.settings import get_settings
    from routerops.training.cascade_eval import EmbeddingStore, load_routerbench

    t0 = time.perf_counter()
    settings = get_settings()
    train, test = load_routerbench(args.data, "train"), load_routerbench(args.data, "test")
    models = train.models

    def arrays(split):  # noqa: ANN001, ANN202
        f = split.frame
        return (f["prompt"].astype(str).tolist(), f["dataset"].to_numpy(), f[models].to_numpy(np.float64),
                f[[f"{m}|total_cost" for m in models]].to_numpy(np.float64))

    rb_train, rb_test = arrays(train), arrays(test)
    store = EmbeddingStore(Path(args.cache), get_embedder(settings, backend="sentence-transformers",
                                                          model="all-MiniLM-L6-v2"))
    embed = lambda prompts: store.embed(prompts, progress=False)  # noqa: E731
    summary, plot_data = evaluate("RouterBench (real costs)", models, models.index(GPT4), rb_train, rb_test,
                                  embed(rb_train[0]), embed(rb_test[0]), args)
    out = {"cost_ratio_at_gpt4_accuracy": summary["cost_ratio_at_ref_accuracy"],
           "cost_ratio_at_95pct_gpt4_accuracy": summary["cost_ratio_at_95pct_ref_accuracy"],
           "routerbench": summary, "scores": {}}
    plots = {"routerbench": plot_data}
    for source in [s for s in args.scores.split(",") if s and s != "none"]:
        s_models, s_train, s_test, unpriced = load_scores(Path(args.scores_dir), source, Path(args.prices),
                                                          args.completion_tokens)
        ref = int(np.argmax(s_train[2].mean(axis=0)))  # the best model on train is the reference
        s_summary, s_plot = evaluate(f"scores/{source} (list prices, {args.completion_tokens} completion tokens)",
                                     s_models, ref, s_train, s_test, embed(s_train[0]), embed(s_test[0]), args)
        s_summary["unpriced_models_left_out"] = len(unpriced)
        print(f"  unpriced (left out): {', '.join(unpriced)}")
        out["scores"][source] = s_summary
        plots[source] = s_plot
    out["seconds"] = round(time.perf_counter() - t0, 1)
    if not args.no_mlflow:
        import mlflow

        from routerops import registry

        registry.configure_mlflow(settings)
        with mlflow.start_run(run_name="fleet-routerbench") as run, tempfile.TemporaryDirectory() as tmp:
            mlflow.log_params({"rank": args.rank, "k": args.k, "folds": args.folds, "scores": args.scores,
                               "completion_tokens": args.completion_tokens})
            flat = {"cost_ratio_at_gpt4_accuracy": out["cost_ratio_at_gpt4_accuracy"],
                    "cost_ratio_at_95pct_gpt4_accuracy": out["cost_ratio_at_95pct_gpt4_accuracy"],
                    **{f"{src}_{k}": v for src, summ in out["scores"].items() for k, v in summ.items()}}
            mlflow.log_metrics({k: float(v) for k, v in flat.items() if isinstance(v, int | float)})
            for name, pd_ in plots.items():
                mlflow.log_artifact(str(plot(Path(tmp) / f"fleet_front_{name}.png", name, pd_["singles"], pd_["fronts"],
                                             pd_["ref"], pd_["chosen"])), "plots")
            mlflow.log_text(json.dumps(out, indent=1), "summary.json")
            out["mlflow_run_id"] = run.info.run_id
    print(json.dumps(out))


if __name__ == "__main__":
    main()
