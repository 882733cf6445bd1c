"""RouterBench fleet figures (issue 27): the cost-accuracy front of the fleet router over RouterBench's 11
models with their real costs, beside every single model, the best one-model-per-task plans, random
mixes of single models (RouterBench's "zero router"), the plain kNN rule and the oracle.

    nice -n 10 python benchmarks/fleet_routerbench.py [--data ../shared/data/routerbench] [--no-mlflow]
        [--cache /tmp/routerops-fleet-bench] [--rank 16] [--k 20] [--folds 5]

Protocol: train splits fit, test splits judge. The fleet router is the IRT-MF router
(routerops.models.irt_mf, as `routerops train` fits it) on MiniLM embeddings + prompt statistics of
the train prompts, fit on RouterBench train outcomes (0/1 per model); the expected cost per model is a
linear fit of its real cost on the prompt's length (train). The decision is routerops.models.fleet_dial:
max P(good) - lambda x relative cost, swept over lambda on test for the front. "dial chosen on train"
picks lambda on out-of-fold train predictions (--folds fits) for GPT-4's train accuracy (and 95% of
it) and reports the test point: no test data is used to choose it. Cost ratios are test mean cost
over always-GPT-4's test mean cost; on a front, points between two routers are their random mix.
The last line is one JSON object.
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

GPT4 = "gpt-4-1106-preview"
LAMBDAS = np.concatenate([[0.0], np.logspace(-4, 2, 200)])


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(cost, accuracy) points not beaten by a cheaper one, by cost."""
    out, best = [], -1.0
    for c, q in sorted(points):
        if q > best + 1e-12:
            out.append((c, q))
            best = q
    return out


def hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The upper-left convex hull: what random mixes of the points reach."""
    pts = pareto(points)
    out: list[tuple[float, float]] = []
    for p in pts:
        while len(out) >= 2:
            (x1, y1), (x2, y2) = out[-2], out[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:  # out[-1] under the chord
                out.pop()
            else:
                break
        out.append(p)
    return out


def cost_at(front: list[tuple[float, float]], target: float) -> float:
    """Least cost reaching `target` accuracy on a front, mixing the two points around it; NaN if never."""
    pts = pareto(front)
    for i, (c, q) in enumerate(pts):
        if q >= target - 1e-12:
            if i == 0:
                return c
            c0, q0 = pts[i - 1]
            return c0 + (c - c0) * (target - q0) / (q - q0)
    return float("nan")


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


def plot(path: Path, singles: dict, fronts: dict[str, list[tuple[float, float]]], gpt4: tuple[float, float],
         chosen: list[tuple[str, float, float]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.4))
    for m, (c, q) in singles.items():
        ax.scatter(c, q, s=20, color="grey")
        ax.annotate(m.rsplit("/", 1)[-1][:16], (c, q), fontsize=6, alpha=0.8)
    styles = {"fleet router (IRT-MF)": ("C0", "o-"), "kNN": ("C2", ".-"), "per-task plan (train)": ("C1", "^-"),
              "per-task plan (chosen on test)": ("C1", "^:"), "random mixes (zero router)": ("grey", "--"),
              "oracle": ("C3", ":")}
    for name, pts in fronts.items():
        color, style = styles.get(name, ("k", "-"))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=color, label=name, ms=3)
    ax.scatter(gpt4[0], gpt4[1], s=90, marker="*", color="C3", label="always GPT-4", zorder=5)
    for label, c, q in chosen:
        ax.scatter(c, q, s=60, marker="D", color="C0", edgecolor="k", zorder=6)
        ax.annotate(label, (c, q), fontsize=7, xytext=(4, -10), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("mean cost per query, USD (test)")
    ax.set_ylabel("accuracy (test)")
    ax.set_title("RouterBench test: fleet router over 11 models")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "routerbench"))
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
    from routerops.models.fleet_dial import choose
    from routerops.models.irt_mf import p_correct
    from routerops.models.prompt_features import features, fit_standardizer, raw_features
    from routerops.settings import get_settings
    from routerops.training.cascade_eval import EmbeddingStore, load_routerbench

    t0 = time.perf_counter()
    settings = get_settings()
    train, test = load_routerbench(args.data, "train"), load_routerbench(args.data, "test")
    models = train.models
    g = models.index(GPT4)

    def arrays(split):  # noqa: ANN001, ANN202
        f = split.frame
        return (f["prompt"].astype(str).tolist(), f["dataset"].to_numpy(), f[models].to_numpy(np.float64),
                f[[f"{m}|total_cost" for m in models]].to_numpy(np.float64))

    p_tr, t_tr, y_tr, c_tr = arrays(train)
    p_te, t_te, y_te, c_te = arrays(test)
    embedder = get_embedder(settings, backend="sentence-transformers", model="all-MiniLM-L6-v2")
    store = EmbeddingStore(Path(args.cache), embedder)
    e_tr, e_te = store.embed(p_tr, progress=False), store.embed(p_te, progress=False)
    std = fit_standardizer(raw_features(p_tr))
    X_tr = np.hstack([e_tr, features(p_tr, std)])
    X_te = np.hstack([e_te, features(p_te, std)])
    len_tr = np.array([len(p) for p in p_tr], np.float64)
    len_te = np.array([len(p) for p in p_te], np.float64)
    coef = cost_model(len_tr, c_tr)
    cp_tr, cp_te = predict_cost(coef, len_tr), predict_cost(coef, len_te)
    embed_s = time.perf_counter() - t0

    gpt4_acc, gpt4_cost = float(y_te[:, g].mean()), float(c_te[:, g].mean())
    singles = {m: (float(c_te[:, j].mean()), float(y_te[:, j].mean())) for j, m in enumerate(models)}

    t1 = time.perf_counter()
    params = fit_irt(X_tr, y_tr, args.rank)
    fit_s = time.perf_counter() - t1
    q_te = p_correct(params, X_te)
    fleet = sweep(q_te, cp_te, y_te, c_te)
    fleet_front = pareto([(c, a) for _, c, a in fleet])

    # the dial chosen on train: out-of-fold predictions, lambda for GPT-4's train accuracy (and 95%)
    rng = np.random.default_rng(0)
    fold = rng.integers(0, args.folds, len(p_tr))
    q_oof = np.zeros_like(y_tr)
    for f in range(args.folds):
        fit_rows, out_rows = fold != f, fold == f
        q_oof[out_rows] = p_correct(fit_irt(X_tr[fit_rows], y_tr[fit_rows], args.rank, seed=f), X_tr[out_rows])
    oof = sweep(q_oof, cp_tr, y_tr, c_tr)
    gpt4_train_acc = float(y_tr[:, g].mean())
    chosen = {}
    for label, share in (("gpt4", 1.0), ("95pct", 0.95)):
        ok = [lam for lam, _, acc in oof if acc >= share * gpt4_train_acc]
        lam = max(ok) if ok else 0.0
        rows = np.arange(len(p_te))
        pick = choose(q_te, cp_te, lam)
        chosen[label] = {"lambda": lam, "train_target_met": bool(ok),
                         "test_accuracy": float(y_te[rows, pick].mean()),
                         "test_cost_ratio": float(c_te[rows, pick].mean()) / gpt4_cost,
                         "test_accuracy_vs_gpt4": float(y_te[rows, pick].mean()) / gpt4_acc}

    knn = sweep(knn_quality(e_tr, y_tr, e_te, args.k), cp_te, y_te, c_te)
    knn_front = pareto([(c, a) for _, c, a in knn])
    plan_train = per_task_plans(t_tr, y_tr, c_tr, t_te, y_te, c_te)
    plan_test = per_task_plans(t_te, y_te, c_te, t_te, y_te, c_te)
    zero = hull(list(singles.values()))
    oracle = pareto([(c, a) for _, c, a in sweep(y_te, c_te, y_te, c_te)])
    fronts = {"fleet router (IRT-MF)": fleet_front, "kNN": knn_front, "per-task plan (train)": plan_train,
              "per-task plan (chosen on test)": plan_test, "random mixes (zero router)": zero, "oracle": oracle}

    def ratio(front: list[tuple[float, float]], share: float) -> float | None:
        c = cost_at(front, share * gpt4_acc)
        return None if not np.isfinite(c) else round(c / gpt4_cost, 4)

    print(f"RouterBench test: {len(p_te)} prompts ({', '.join(f'{t} {n}' for t, n in zip(*np.unique(t_te, return_counts=True), strict=True))}); "
          f"train {len(p_tr)}; 11 models; always GPT-4: accuracy {gpt4_acc:.4f}, ${gpt4_cost * 1e3:.4f} per 1k queries")
    print(f"\n{'single model':40s} {'accuracy':>9s} {'cost/GPT-4':>11s}")
    for m, (c, a) in sorted(singles.items(), key=lambda kv: kv[1][0]):
        print(f"{m:40s} {a:9.4f} {c / gpt4_cost:11.4f}")
    print(f"\n{'method (cost as share of always-GPT-4)':40s} {'@GPT-4 acc':>11s} {'@95% GPT-4':>11s} {'best acc':>9s}")
    for name, front in fronts.items():
        r1, r2 = ratio(front, 1.0), ratio(front, 0.95)
        fmt = lambda r: "never" if r is None else f"{r:.4f}"  # noqa: E731
        print(f"{name:40s} {fmt(r1):>11s} {fmt(r2):>11s} {max(a for _, a in front):9.4f}")
    print("\nfleet router, dial chosen on train (out-of-fold), judged on test:")
    for label, row in chosen.items():
        print(f"  target {label:6s} lambda={row['lambda']:.4g}: test accuracy {row['test_accuracy']:.4f} "
              f"({row['test_accuracy_vs_gpt4']:.1%} of GPT-4's) at {row['test_cost_ratio']:.4f} of its cost")
    print("\nfront of the fleet router (test): cost ratio, accuracy")
    for c, a in fleet_front[:: max(1, len(fleet_front) // 12)]:
        print(f"  {c / gpt4_cost:.4f}  {a:.4f}")

    summary = {
        "cost_ratio_at_gpt4_accuracy": ratio(fleet_front, 1.0),
        "cost_ratio_at_95pct_gpt4_accuracy": ratio(fleet_front, 0.95),
        "dial_on_train_gpt4": chosen["gpt4"], "dial_on_train_95pct": chosen["95pct"],
        "knn_cost_ratio_at_gpt4_accuracy": ratio(knn_front, 1.0),
        "knn_cost_ratio_at_95pct_gpt4_accuracy": ratio(knn_front, 0.95),
        "per_task_train_cost_ratio_at_gpt4_accuracy": ratio(plan_train, 1.0),
        "per_task_train_cost_ratio_at_95pct_gpt4_accuracy": ratio(plan_train, 0.95),
        "per_task_test_cost_ratio_at_gpt4_accuracy": ratio(plan_test, 1.0),
        "per_task_test_cost_ratio_at_95pct_gpt4_accuracy": ratio(plan_test, 0.95),
        "zero_router_cost_ratio_at_gpt4_accuracy": ratio(zero, 1.0),
        "zero_router_cost_ratio_at_95pct_gpt4_accuracy": ratio(zero, 0.95),
        "oracle_cost_ratio_at_gpt4_accuracy": ratio(oracle, 1.0),
        "gpt4_test_accuracy": round(gpt4_acc, 4), "fleet_best_accuracy": round(max(a for _, a in fleet_front), 4),
        "test_prompts": len(p_te), "train_prompts": len(p_tr), "models": len(models), "rank": args.rank,
        "embed_seconds": round(embed_s, 1), "fit_seconds": round(fit_s, 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if not args.no_mlflow:
        import mlflow

        from routerops import registry

        registry.configure_mlflow(settings)
        with mlflow.start_run(run_name="fleet-routerbench") as run, tempfile.TemporaryDirectory() as tmp:
            mlflow.log_params({"rank": args.rank, "k": args.k, "folds": args.folds, "models": len(models)})
            mlflow.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, int | float)})
            mlflow.log_artifact(str(plot(Path(tmp) / "fleet_front.png", singles, fronts, (gpt4_cost, gpt4_acc),
                                         [(k, v["test_cost_ratio"] * gpt4_cost, v["test_accuracy"])
                                          for k, v in chosen.items()])), "plots")
            mlflow.log_text(json.dumps(summary, indent=1), "summary.json")
            summary["mlflow_run_id"] = run.info.run_id
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
