"""Per-category cascade plans on RouterBench, measured as serving runs them (issue 27, part 4).

    nice -n 10 python benchmarks/cascade_fleet_routerbench.py [--data ../shared/data/routerbench]
        [--answer-scorer | --irt-signal] [--checked] [--second-opinions A+B,... | none] [--subclusters K] [--models default|all]

Protocol: RouterBench train is cut as in benchmarks/cascade_routerbench.py (part A / part B, seeded);
the rung scorers (agreement signals, optionally the static-embedding answer scorer cross-fitted on all
of train) and, per category (RouterBench's datasets, or K prompt clusters within each with
--subclusters), one ladder and thresholds are chosen jointly on part B (routerops.training.cascade_plans,
the code `routerops cascade calibrate --per-category` runs). The category classifier is trained on all
train prompts, and the CascadeConfig with plans + classifier is built as calibrate stores it and sent
through its JSON form. Each test query is then replayed through serving's own plan selection
(routerops.models.cascade_config.select_plan: the classifier on the prompt's embedding picks the
category and its plan) and the stored thresholds, on the rung scores of that plan's ladder. Cost
ratios are test mean cost over always-GPT-4's; the plan is chosen for "pooled train accuracy >= x% of
GPT-4's train accuracy" (x = 100, 98, 95). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGETS = (("gpt4", 1.0), ("98pct", 0.98), ("95pct", 0.95))


def replay_as_served(config, vectors: np.ndarray, fit_of: dict, split) -> dict:  # noqa: ANN001
    """Each test query through select_plan (the function serving calls) and the stored thresholds."""
    from routerops.models.cascade_config import select_plan

    n = split.n
    quality, cost, cats, probs = np.zeros(n), np.zeros(n), [], np.zeros(n)
    for i in range(n):
        choice = select_plan(config, None, embed=lambda i=i: vectors[i])
        cats.append(choice.category)
        probs[i] = choice.probability if choice.probability is not None else np.nan
        table = fit_of[choice.category if choice.source != "fallback" else None].test_table
        for k, m in enumerate(choice.models):
            cost[i] += split.cost[m][i]
            if k == len(choice.models) - 1 or table.score[m][i] >= choice.thresholds[k]:
                quality[i] = split.correct[m][i]
                break
    return {"quality": quality, "cost": cost, "category": np.asarray(cats, dtype=object), "probability": probs}


def subcluster(vectors_train: np.ndarray, tasks_train: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Finer categories: K k-means clusters of the prompts' embeddings within each task."""
    from sklearn.cluster import KMeans

    out = np.array([str(t) for t in tasks_train], dtype=object)
    for t in sorted(set(tasks_train.tolist())):
        idx = np.flatnonzero(tasks_train == t)
        labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(vectors_train[idx])
        out[idx] = [f"{t}/{c}" for c in labels]
    return out


def irt_logits(data, plain: list[str], embedder, seed: int, folds: int = 5, rank: int = 16  # noqa: ANN001
               ) -> tuple[dict, dict]:
    """The fleet router's prompt-only P(good) per model (IRT-MF on the prompt's embedding and prompt
    statistics, as `routerops train` fits it), as logits: cross-fitted on all of train (part B gets
    out-of-fold predictions), the fit on all of train for test."""
    from benchmarks.fleet_routerbench import fit_irt
    from routerops.models.irt_mf import p_correct
    from routerops.models.prompt_features import features, fit_standardizer, raw_features

    prompts = data.ce_train.prompts + data.fit.prompts
    y = np.column_stack([np.concatenate([data.ce_train.correct[m], data.fit.correct[m]]) for m in plain])
    std = fit_standardizer(raw_features(prompts))
    x = np.hstack([np.asarray(embedder.encode(prompts), np.float32), features(prompts, std)])
    x_te = np.hstack([np.asarray(embedder.encode(data.test.prompts), np.float32), features(data.test.prompts, std)])
    fold = np.random.default_rng(seed).integers(0, folds, len(prompts))
    oof = np.zeros_like(y, dtype=np.float64)
    for f in range(folds):
        oof[fold == f] = p_correct(fit_irt(x[fold != f], y[fold != f], rank, seed=f), x[fold == f])
    full = p_correct(fit_irt(x, y, rank, seed=seed), x_te)

    def logit(p: np.ndarray) -> np.ndarray:
        p = np.clip(p, 1e-4, 1 - 1e-4)
        return np.log(p / (1 - p))

    part_b = slice(data.ce_train.n, None)
    return ({m: logit(oof[part_b, j]) for j, m in enumerate(plain)}, {m: logit(full[:, j]) for j, m in enumerate(plain)})


def main() -> None:  # noqa: PLR0915 - one linear report
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = Path(os.environ.get("ROUTEROPS_SHARED_DATA", ROOT.parent / "shared" / "data"))
    parser.add_argument("--data", type=Path, default=shared / "routerbench")
    parser.add_argument("--datasets", default="arc_challenge,mbpp,winograde")
    parser.add_argument("--answer-scorer", action="store_true", help="add the static-embedding answer scorer")
    parser.add_argument("--second-opinions", default=None,
                        help='first rungs "A+B", comma separated; default: the four of cascade_routerbench; "none"')
    parser.add_argument("--irt-signal", action="store_true",
                        help="add the fleet router's prompt-only P(good) (IRT-MF) as a rung scorer input")
    parser.add_argument("--checked", action="store_true",
                        help="raise each train target by the margin that held-out halves of train need "
                             "(routerops.training.cascade_plans.checked_margin)")
    parser.add_argument("--subclusters", type=int, default=0, help="K prompt clusters per task as categories")
    parser.add_argument("--models", default="default", help="default (9 models at most 10%% of GPT-4's cost, and "
                        "GPT-4) | all (RouterBench's 11)")
    parser.add_argument("--part-a", type=float, default=0.4,
                        help="share of train held out of the plan fit (cascade_routerbench's cross-encoder part); "
                             "0: combiners, ladders and thresholds fit on all of train")
    parser.add_argument("--max-length", type=int, default=4)
    parser.add_argument("--grid-size", type=int, default=21)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    torch.set_num_threads(args.threads)
    from benchmarks.cascade_routerbench import DEFAULT_SECOND_OPINIONS
    from routerops.models.cascade_config import CascadeConfig
    from routerops.models.cascade_scorer.features import rung_parts
    from routerops.models.embedders.files import EmbedderFilesError
    from routerops.models.embeddings import ensure_built_embedder, get_embedder
    from routerops.settings import get_settings
    from routerops.training.cascade_eval import GPT4
    from routerops.training.cascade_plans import (
        build_per_category_config,
        checked_margin,
        choose,
        choose_per_task,
        fit_category_classifier,
        task_fronts,
    )
    from routerops.training.cascade_scorer.routerbench import (
        DEFAULT_MODELS,
        SignalCache,
        alias_rungs,
        answer_scorer_logits,
        candidate_ladders,
        fit_ladder,
        load_data,
    )

    settings = get_settings()
    try:  # the embedder serving's classifier reads (the configured one), before any long work
        ensure_built_embedder(settings)
        embedder = get_embedder(settings)
        embedder.encode(["preflight"])
    except EmbedderFilesError as exc:
        raise SystemExit(f"cascade_fleet_routerbench: {exc}") from None
    t0 = time.perf_counter()
    spec = DEFAULT_SECOND_OPINIONS if args.second_opinions is None else args.second_opinions
    opinions = [] if spec.strip().lower() == "none" else [r.strip() for r in spec.split(",") if r.strip()]
    base = list(DEFAULT_MODELS)
    if args.models == "all":
        base += ["claude-v1", "claude-v2"]
    data = load_data(args.data, args.datasets.split(","), models=base + opinions, ce_fraction=args.part_a,
                     seed=args.seed)
    plain = [m for m in data.models if rung_parts(m)[1] is None]
    fit_c, test_c = SignalCache(data.fit), SignalCache(data.test)
    mean_cost = {m: float(data.fit.cost[m].mean()) for m in data.models}
    ladders = candidate_ladders(data.models, mean_cost, args.max_length)
    fits = [fit_ladder(lad, fit_c, test_c, grid_size=args.grid_size) for lad in ladders]
    if args.answer_scorer and args.irt_signal:
        raise SystemExit("--answer-scorer and --irt-signal share the combiner's extra input: give one")
    if args.answer_scorer:
        _, as_fit, as_test, as_stats = answer_scorer_logits(data, plain, embedder, seed=args.seed)
        as_fit, as_test = alias_rungs(as_fit, data.models), alias_rungs(as_test, data.models)
        fits += [fit_ladder(lad, fit_c, test_c, scorer="signals+as", as_fit=as_fit, as_test=as_test,
                            grid_size=args.grid_size) for lad in ladders]
        print(f"answer scorer: {as_stats['seconds']:.0f}s")
    if args.irt_signal:
        t1 = time.perf_counter()
        irt_fit, irt_test = irt_logits(data, plain, embedder, args.seed)
        irt_fit, irt_test = alias_rungs(irt_fit, data.models), alias_rungs(irt_test, data.models)
        irt_fits = [fit_ladder(lad, fit_c, test_c, scorer="signals+as", as_fit=irt_fit, as_test=irt_test,
                               grid_size=args.grid_size) for lad in ladders]
        for f in irt_fits:  # the answer scorer's input slot, holding the router's prompt-only logit
            f.scorer = "signals+irt"
        fits += irt_fits
        print(f"IRT-MF prompt-only P(good): cross-fitted in {time.perf_counter() - t1:.0f}s")
    print(f"RouterBench: part A {data.ce_train.n}, part B {data.fit.n}, test {data.test.n}; {len(plain)} models, "
          f"{len(opinions)} second-opinion rungs, {len(ladders)} ladders, {len(fits)} fits ({time.perf_counter() - t0:.0f}s)")

    # categories: the tasks, or K prompt clusters within each (the classifier learns them from all of train)
    train_prompts = data.ce_train.prompts + data.fit.prompts
    train_tasks = np.concatenate([data.ce_train.tasks, data.fit.tasks])
    v_test = np.asarray(embedder.encode(data.test.prompts), np.float64)
    if args.subclusters > 1:
        v_train = np.asarray(embedder.encode(train_prompts), np.float32)
        train_cats = subcluster(v_train, train_tasks, args.subclusters, args.seed)
    else:
        train_cats = np.array([str(t) for t in train_tasks], dtype=object)
    fit_cats = train_cats[data.ce_train.n:]
    classifier = fit_category_classifier(embedder, train_prompts, train_cats, seed=args.seed)
    probs = classifier.proba(v_test)
    test_pred = np.asarray(classifier.classes, dtype=object)[probs.argmax(axis=1)]
    print(f"category classifier on {embedder.name} ({embedder.dim}-d): {len(classifier.classes)} classes, "
          f"train accuracy {classifier.train_accuracy}; test task accuracy "
          f"{np.mean([c.split('/')[0] == t for c, t in zip(test_pred, data.test.tasks, strict=True)]):.3f}")

    g_test = data.test.correct[GPT4]
    g_acc, g_cost, g_train = float(g_test.mean()), float(data.test.cost[GPT4].mean()), float(data.fit.correct[GPT4].mean())
    print(f"all GPT-4: test accuracy {g_acc:.4f} at ${g_cost:.6f}/query (train part B {g_train:.4f})")
    fronts = task_fronts(fits, fit_cats)
    summary: dict = {"gpt4_test_accuracy": round(g_acc, 4), "categories": len(classifier.classes),
                     "subclusters": args.subclusters, "part_a": args.part_a, "seed": args.seed, "answer_scorer": args.answer_scorer, "irt_signal": args.irt_signal, "checked": args.checked, "models": args.models}
    for key, frac in TARGETS:
        target = frac * g_train
        if args.checked:
            margin = checked_margin(fits, fit_cats, quality_target=target, seed=args.seed)
            summary[f"margin_{key}"] = round(margin, 4)
            print(f"\n{frac:.0%} of GPT-4: held-out halves of train need a margin of {margin:.4f}")
            target += margin
        tp = choose_per_task(fits, fit_cats, test_pred, quality_target=target, fronts=fronts)
        if tp is None:
            print(f"\n== {frac:.0%} of GPT-4: no combination of plans reaches it on train ==")
            continue
        fallback = choose(fits, quality_target=target)
        config = build_per_category_config(tp, fallback, classifier=classifier, source="routerbench",
                                           quality_target=target, objective="min_cost_at_quality")
        stored = CascadeConfig.from_dict(json.loads(json.dumps(config.to_dict())))  # as serving reads it
        fit_of = {t: next(f for f in fits if f.ladder == ch.ladder and f.scorer == ch.scorer)
                  for t, ch in tp.plans.items()}
        fb = fallback or max(tp.plans.values(), key=lambda ch: ch.train_cost)
        fit_of[None] = next(f for f in fits if f.ladder == fb.ladder and f.scorer == fb.scorer)
        r = replay_as_served(stored, v_test, fit_of, data.test)
        q, c = float(r["quality"].mean()), float(r["cost"].mean())
        summary[f"cost_ratio_at_{key}"] = round(c / g_cost, 4)
        summary[f"test_accuracy_at_{key}"] = round(q, 4)
        summary[f"stored_config_bytes_{key}"] = len(json.dumps(stored.to_dict()))
        print(f"\n== target: pooled train accuracy >= {target:.4f} ({frac:.0%} of GPT-4's) ==")
        print(f"  as served: TEST acc {q:.4f} (GPT-4 {g_acc:.4f}) at {c / g_cost:.1%} of GPT-4's cost "
              f"(train {tp.train_quality:.4f} at {tp.train_cost / data.fit.cost[GPT4].mean():.1%}; "
              f"choose_per_task's own replay {tp.test_quality:.4f} at {tp.test_cost / g_cost:.1%}); "
              f"stored config {summary[f'stored_config_bytes_{key}']} bytes")
        print("  per true task (test): share of queries, accuracy vs GPT-4, cost share of GPT-4's on that task, "
              "share of all-GPT-4 cost")
        for t in sorted(set(data.test.tasks.tolist())):
            sel = data.test.tasks == t
            print(f"    {t:<14} {sel.mean():5.1%}  acc {r['quality'][sel].mean():.3f} vs {g_test[sel].mean():.3f}  "
                  f"cost {r['cost'][sel].mean() / data.test.cost[GPT4][sel].mean():6.1%}  "
                  f"(of the pooled GPT-4 bill: {r['cost'][sel].sum() / data.test.cost[GPT4].sum():5.1%} "
                  f"vs {data.test.cost[GPT4][sel].sum() / data.test.cost[GPT4].sum():5.1%})")
        print("  plans (category: plan, scorer; test queries routed to it, their acc vs GPT-4, cost share):")
        per_cat = {}
        for t, ch in tp.plans.items():
            sel = r["category"] == t
            share = r["cost"][sel].mean() / data.test.cost[GPT4][sel].mean() if sel.any() else float("nan")
            acc = float(r["quality"][sel].mean()) if sel.any() else float("nan")
            per_cat[t] = {"plan": ch.describe(), "queries": int(sel.sum()), "acc": round(acc, 4),
                          "gpt4_acc": round(float(g_test[sel].mean()), 4) if sel.any() else None,
                          "cost_share": round(float(share), 4)}
            print(f"    {t:<16} {ch.describe()} [{ch.scorer}]: {int(sel.sum())} queries, acc {acc:.3f} vs "
                  f"{g_test[sel].mean() if sel.any() else float('nan'):.3f}, cost {share:.1%}")
        summary[f"per_category_{key}"] = per_cat
    # reading the test curve (not a train-fit choice): the cheapest served point with test acc >= GPT-4's
    curve = []
    for target in np.linspace(float(fronts.pooled_q.min()), float(fronts.pooled_q.max()), 30):
        tp = choose_per_task(fits, fit_cats, test_pred, quality_target=float(target), fronts=fronts)
        if tp is not None:
            curve.append((tp.test_cost / g_cost, tp.test_quality))
    reach = [c for c, q in curve if q >= g_acc - 1e-12]
    summary["test_curve_cheapest_at_gpt4_accuracy"] = round(min(reach), 4) if reach else None
    print("\ntrain-target sweep (test cost share -> test acc): "
          + ", ".join(f"{c:.1%} -> {q:.4f}" for c, q in sorted(set(curve))))
    print(f"total {time.perf_counter() - t0:.0f}s")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
