"""RouterBench cascade figures (issue 14): the cost-accuracy Pareto curve of cascades scored by the
agreement / cross-encoder rung scorers, next to every single model, the all-GPT-4 point and the
oracle cascade (a perfect scorer on the same ladders); one plot logged to MLflow.

    nice -n 10 python benchmarks/cascade_routerbench.py [--data ../shared/data/routerbench] [--no-mlflow]
        [--no-cross-encoder] [--ce-models m1,m2] [--ce-examples 480] [--ce-max-length 128] [--threads 1]
        [--answer-scorer [--answer-scorer-only] [--embedder-path DIR]] [--second-opinions A+B,C+D | none]

Protocol: RouterBench train is cut in two (seeded): part A fine-tunes the cross-encoder, part B fits
the per-rung combiners and picks the ladder and thresholds; test is only replayed. Cost ratios are
test mean cost over GPT-4's test mean cost, for the plan chosen on train for "train accuracy >=
GPT-4's train accuracy" (and 98% of it). The last line is one JSON object.

--answer-scorer adds the static-embedding answer scorer (routerops.models.cascade_scorer.answer_scorer),
cross-fitted on all of train, as one more combiner input ("signals+as", and "signals+as+ce" on the
cross-encoder's ladders); --answer-scorer-only drops the plans without it, for a clean comparison.

--second-opinions adds first rungs "A+B": model A's answer, paid for with B's as well and scored with
their agreement (routerops.models.cascade_scorer.features.rung_parts); "none" turns them off.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
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
from _fronts import pareto as pareto_front  # noqa: E402

DEFAULT_CE_MODELS = "mistralai/mixtral-8x7b-chat,zero-one-ai/Yi-34B-Chat,gpt-3.5-turbo-1106"
# cheap pairs: each costs 5-12% of GPT-4 per query, and the two answers disagree where one is wrong
DEFAULT_SECOND_OPINIONS = ("mistralai/mixtral-8x7b-chat+zero-one-ai/Yi-34B-Chat,"
                           "zero-one-ai/Yi-34B-Chat+mistralai/mixtral-8x7b-chat,"
                           "mistralai/mistral-7b-chat+mistralai/mixtral-8x7b-chat,"
                           "mistralai/mixtral-8x7b-chat+mistralai/mistral-7b-chat")


def short(m: str) -> str:
    from routerops.models.cascade_scorer.features import short_rung

    return short_rung(m)


def plot(path: Path, singles: dict, cascade: list, oracle: list, gpt4: tuple[float, float],
         task_aware: list | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    for m, (q, c) in singles.items():
        ax.scatter(c, q, s=22, color="grey")
        ax.annotate(short(m)[:18], (c, q), fontsize=6, alpha=0.8)
    ax.scatter(gpt4[1], gpt4[0], s=90, marker="*", color="C3", label="all GPT-4", zorder=5)
    if cascade:
        ax.plot([p[0] for p in cascade], [p[1] for p in cascade], "o-", color="C0", label="cascade, learned scorer (test)")
    if task_aware:
        ax.plot([p[0] for p in task_aware], [p[1] for p in task_aware], "^-", color="C1",
                label="task-aware plans, one per task (test)")
    if oracle:
        ax.plot([p[0] for p in oracle], [p[1] for p in oracle], "s--", color="C2", alpha=0.7,
                label="oracle cascade: perfect scorer (test)")
    ax.axhline(gpt4[0], color="C3", lw=0.8, ls=":")
    ax.axhline(0.98 * gpt4[0], color="C3", lw=0.8, ls="-.", alpha=0.6, label="98% of GPT-4 accuracy")
    ax.set_xscale("log")
    ax.set_xlabel("mean cost per query (USD, log)")
    ax.set_ylabel("accuracy (RouterBench test, pooled)")
    ax.set_title("RouterBench: cascades vs single models (thresholds fit on train)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:  # noqa: PLR0915 - one linear report
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = Path(os.environ.get("ROUTEROPS_SHARED_DATA", ROOT.parent / "shared" / "data"))
    parser.add_argument("--data", type=Path, default=shared / "routerbench")
    parser.add_argument("--datasets", default="arc_challenge,mbpp,winograde")
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--no-cross-encoder", action="store_true")
    parser.add_argument("--ce-models", default=DEFAULT_CE_MODELS,
                        help="models whose answers the cross-encoder scores (CPU time grows with each)")
    parser.add_argument("--ce-examples", type=int, default=480)
    parser.add_argument("--ce-max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--max-length", type=int, default=4, help="longest ladder")
    parser.add_argument("--grid-size", type=int, default=21)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--answer-scorer", action="store_true", help="add the static-embedding answer scorer")
    parser.add_argument("--answer-scorer-only", action="store_true",
                        help="with --answer-scorer: only plans whose combiners read it")
    parser.add_argument("--embedder-path", type=Path, default=None,
                        help="built static embedder folder (default: embedding_static_path / data_dir)")
    parser.add_argument("--second-opinions", default=DEFAULT_SECOND_OPINIONS,
                        help='first rungs "A+B" (A checked against B\'s answer), comma separated; "none" for none')
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from routerops.models.cascade_scorer.features import rung_parts
    from routerops.models.embedders.files import EmbedderFilesError
    from routerops.models.embeddings import ensure_built_embedder, get_embedder
    from routerops.settings import get_settings
    from routerops.training.cascade_eval import GPT4
    from routerops.training.cascade_plans import choose, choose_per_task, predict_tasks, task_fronts
    from routerops.training.cascade_scorer.routerbench import (
        DEFAULT_MODELS,
        SignalCache,
        alias_rungs,
        answer_scorer_logits,
        candidate_ladders,
        cross_encoder_logits,
        fit_ladder,
        load_data,
        rung_report,
    )

    settings = get_settings()
    # the embedder the task plans (and the answer scorer) need, before minutes of work: the default one
    # is built here once, as `train router` does; a named folder that is not built fails now
    try:
        if args.embedder_path is None:
            ensure_built_embedder(settings)
        task_embedder = get_embedder(settings, backend="static",
                                     model=str(args.embedder_path) if args.embedder_path else None)
        task_embedder.encode(["preflight"])
    except EmbedderFilesError as exc:
        raise SystemExit(f"cascade_routerbench: {exc}") from None
    t0 = time.perf_counter()
    opinions = [] if args.second_opinions.strip().lower() == "none" else \
        [r.strip() for r in args.second_opinions.split(",") if r.strip()]
    data = load_data(args.data, args.datasets.split(","), models=list(DEFAULT_MODELS) + opinions, seed=args.seed)
    plain = [m for m in data.models if rung_parts(m)[1] is None]  # the models themselves
    fit_c, test_c = SignalCache(data.fit), SignalCache(data.test)
    mean_cost = {m: float(data.fit.cost[m].mean()) for m in data.models}
    ladders = candidate_ladders(data.models, mean_cost, args.max_length)
    print(f"RouterBench: CE part A {data.ce_train.n}, fit part B {data.fit.n}, test {data.test.n} queries; "
          f"{len(plain)} models, {len(opinions)} second-opinion rungs, {len(ladders)} ladders")
    fits = [fit_ladder(lad, fit_c, test_c, grid_size=args.grid_size) for lad in ladders]
    plain_fits = list(fits)  # agreement only: the "before" of every other scorer on the same ladder
    as_stats = as_fit = as_test = None
    if args.answer_scorer:
        embedder = task_embedder
        _, as_fit, as_test, as_stats = answer_scorer_logits(data, plain, embedder, seed=args.seed)
        as_fit, as_test = alias_rungs(as_fit, data.models), alias_rungs(as_test, data.models)
        print(f"answer scorer ({embedder.name}): {as_stats['train_rows']} (query, answer) rows of all of train, "
              f"{as_stats['folds']}-fold cross-fit, {as_stats['seconds']:.0f}s (embedding {as_stats['embed_seconds']:.0f}s)")
        from routerops.models.cascade_scorer.model import rung_metrics

        tasks = data.test.tasks
        for m in plain[:-1]:
            p = 1 / (1 + np.exp(-as_test[m]))
            r = rung_metrics(data.test.correct[m], p)
            per_task = ", ".join(f"{t} {rung_metrics(data.test.correct[m][tasks == t], p[tasks == t]).auroc:.3f}"
                                 for t in sorted(set(tasks)))
            print(f"  alone on test: {short(m):<24} AUROC {r.auroc:.3f}  ECE {r.ece:.3f}  | {per_task}")
        as_fits = [fit_ladder(lad, fit_c, test_c, scorer="signals+as", as_fit=as_fit, as_test=as_test,
                              grid_size=args.grid_size) for lad in ladders]
        fits = as_fits if args.answer_scorer_only else fits + as_fits
    oracle_fits = [fit_ladder(lad, fit_c, test_c, scorer="oracle") for lad in ladders]
    ce_stats = None
    if not args.no_cross_encoder:
        ce_models = [m.strip() for m in args.ce_models.split(",") if m.strip()]
        ce_fit, ce_test, ce_stats = cross_encoder_logits(
            data, ce_models, examples=args.ce_examples, max_length=args.ce_max_length, threads=args.threads,
            cache_dir=settings.data_dir / "cascade_eval" / "cross_encoder", seed=args.seed)
        print(f"cross-encoder: {ce_stats['train_examples']} pairs, 1 epoch, max_length {ce_stats['max_length']}, "
              f"{ce_stats['threads']} thread(s): trained in {ce_stats['train_seconds']:.0f}s, scored "
              f"{ce_stats.get('scored_pairs', '?')} pairs in {ce_stats.get('score_seconds', float('nan')):.0f}s"
              + (" (cached logits)" if ce_stats.get("cached") else ""))
        ce_fit, ce_test = alias_rungs(ce_fit, data.models), alias_rungs(ce_test, data.models)
        ce_ladders = [lad for lad in ladders if {rung_parts(r)[0] for r in lad[:-1]} <= set(ce_models)]
        if not args.answer_scorer_only:
            fits += [fit_ladder(lad, fit_c, test_c, scorer="signals+ce", ce_fit=ce_fit, ce_test=ce_test,
                                grid_size=args.grid_size) for lad in ce_ladders]
        if args.answer_scorer:
            fits += [fit_ladder(lad, fit_c, test_c, scorer="signals+as+ce", ce_fit=ce_fit, ce_test=ce_test,
                                as_fit=as_fit, as_test=as_test, grid_size=args.grid_size) for lad in ce_ladders]
    by_key = {(f.ladder, f.scorer): f for f in plain_fits + fits + oracle_fits}

    if opinions:  # what a second opinion does for a first rung's scorer: the same answer, scored with and without
        print("\nsecond opinions: test AUROC of the first rung's scorer in (rung -> gpt-4), per scorer; per task")
        for r in opinions:
            primary = rung_parts(r)[0]
            for scorer in ("signals", "signals+as"):
                pair = [(by_key.get(((m, GPT4), scorer)), m) for m in (primary, r)]
                if any(f is None for f, _ in pair):
                    continue
                for f, m in pair:
                    rep = rung_report(f, data.test.tasks)[m]
                    per_task = ", ".join(f"{t} {v['auroc']:.3f}" for t, v in rep["per_task"].items())
                    print(f"  {scorer:<11} {short(m):<40} AUROC {rep['auroc']:.3f}  ECE {rep['ece']:.3f}  "
                          f"cost {data.test.cost[m].mean() / data.test.cost[GPT4].mean():5.1%} | {per_task}")

    singles = {m: (float(data.test.correct[m].mean()), float(data.test.cost[m].mean())) for m in plain}
    g_acc, g_cost = singles[GPT4]
    g_train = float(data.fit.correct[GPT4].mean())
    print(f"\nall GPT-4: test accuracy {g_acc:.4f} at ${g_cost:.6f}/query (train part B accuracy {g_train:.4f})")
    for m, (q, c) in sorted(singles.items(), key=lambda kv: kv[1][1]):
        print(f"  single {short(m):<28} acc {q:.4f}  cost {c / g_cost:6.1%} of GPT-4")

    results: dict[str, dict] = {}
    for name, frac in (("gpt4", 1.0), ("98pct", 0.98)):
        target = frac * g_train
        ch = choose(fits, quality_target=target)
        och = choose(oracle_fits, quality_target=target)
        same_ladder_oracle = choose([by_key[(ch.ladder, "oracle")]], quality_target=target) if ch else None
        results[name] = {"choice": ch, "oracle": och, "same_ladder_oracle": same_ladder_oracle}
        print(f"\n== target: train accuracy >= {target:.4f} ({frac:.0%} of GPT-4's) ==")
        if ch is None:
            print("  no cascade reaches it on train")
            continue
        print(f"  learned scorer ({ch.scorer}): {ch.describe()}")
        print(f"    train acc {ch.train_quality:.4f} at {ch.train_cost / data.fit.cost[GPT4].mean():.1%}; "
              f"TEST acc {ch.test_quality:.4f} (GPT-4 {g_acc:.4f}) at {ch.test_cost / g_cost:.1%} of GPT-4's cost")
        print(f"  oracle cascade: {och.describe()}: test acc {och.test_quality:.4f} at {och.test_cost / g_cost:.1%}")
        if same_ladder_oracle:
            print(f"  same ladder, perfect scorer: test acc {same_ladder_oracle.test_quality:.4f} at "
                  f"{same_ladder_oracle.test_cost / g_cost:.1%}")
        fit = by_key[(ch.ladder, ch.scorer)]
        rep = rung_report(fit, data.test.tasks)
        results[name]["rungs"] = rep
        print("  per rung (all test queries): AUROC / ECE, and per task AUROC")
        for m, r in rep.items():
            per_task = ", ".join(f"{t} {v['auroc']:.3f} (acc {v['correct_rate']:.2f})" for t, v in r["per_task"].items())
            print(f"    {short(m):<24} AUROC {r['auroc']:.3f}  ECE {r['ece']:.3f}  | {per_task}")
        if ch.scorer != "signals":
            base = rung_report(by_key[(ch.ladder, "signals")], data.test.tasks)
            print("  same ladder, agreement only: " + ", ".join(f"{short(m)} AUROC {r['auroc']:.3f}"
                                                              for m, r in base.items()))
        # where the money goes, per task: the cascade's test accuracy and cost against GPT-4's
        print("  per task (test): cascade acc vs GPT-4, cost share, share answered by each rung")
        for t in sorted(set(data.test.tasks)):
            sel = data.test.tasks == t
            idx = np.flatnonzero(sel)
            sub = fit.test_table.subset(idx)
            q, c = _replay(sub, ch.ladder, ch.thresholds)
            shares = _answered_shares(sub, ch.ladder, ch.thresholds)
            print(f"    {t:<14} acc {q:.3f} vs {data.test.correct[GPT4][sel].mean():.3f}  cost "
                  f"{c / data.test.cost[GPT4][sel].mean():6.1%}  answered by: "
                  + ", ".join(f"{short(m)} {s:.0%}" for m, s in zip(ch.ladder, shares, strict=True)))

    # what a cascade that knows the query's task would do: one plan per task, chosen together on train
    # (each test query gets the plan of the task a classifier on its prompt predicts, as serving would)
    predicted = predict_tasks(task_embedder, data.ce_train.prompts + data.fit.prompts,
                              np.concatenate([data.ce_train.tasks, data.fit.tasks]), data.test.prompts, seed=args.seed)
    task_accuracy = float((predicted == data.test.tasks).mean())
    print(f"\n== task-aware plans (one ladder and thresholds per task, chosen jointly on train; test queries "
          f"get the plan of their predicted task: classifier accuracy {task_accuracy:.3f}) ==")
    fronts = task_fronts(fits, data.fit.tasks)
    for name, frac in (("gpt4", 1.0), ("98pct", 0.98)):
        tp = choose_per_task(fits, data.fit.tasks, predicted, quality_target=frac * g_train, fronts=fronts)
        results[name]["per_task"] = tp
        if tp is None:
            print(f"  {frac:.0%} of GPT-4: no combination reaches it on train")
            continue
        print(f"  {frac:.0%} of GPT-4's train accuracy: TEST acc {tp.test_quality:.4f} (GPT-4 {g_acc:.4f}) at "
              f"{tp.test_cost / g_cost:.1%} of GPT-4's cost (train {tp.train_quality:.4f} at "
              f"{tp.train_cost / data.fit.cost[GPT4].mean():.1%})")
        for t, ch in tp.plans.items():
            sel = predicted == t
            print(f"    {t:<14} ({ch.scorer}) {ch.describe()}: test acc {ch.test_quality:.3f} vs GPT-4 "
                  f"{data.test.correct[GPT4][sel].mean():.3f}, cost {ch.test_cost / data.test.cost[GPT4][sel].mean():.1%}")

    budgets = np.geomspace(min(c for _, c in singles.values()), g_cost * 1.05, 24)
    curve, ocurve = [], []
    for b in budgets:
        ch = choose(fits, budget=float(b))
        if ch:
            curve.append((ch.test_cost, ch.test_quality, ch.describe()))
        och = choose(oracle_fits, budget=float(b))
        if och:
            ocurve.append((och.test_cost, och.test_quality, och.describe()))
    print("\nPareto curve (plans chosen on train at budgets; test cost as share of GPT-4 -> test accuracy):")
    seen = set()
    for c, q, desc in sorted(curve):
        if desc in seen:
            continue
        seen.add(desc)
        print(f"  {c / g_cost:6.1%} -> {q:.4f}   {desc}")
    task_curve = []  # task-aware plans at a sweep of train quality targets, replayed on test
    for target in np.linspace(float(fronts.pooled_q.min()), float(fronts.pooled_q.max()), 24):
        tp = choose_per_task(fits, data.fit.tasks, predicted, quality_target=float(target), fronts=fronts)
        if tp is not None:
            task_curve.append((tp.test_cost, tp.test_quality))
    print("task-aware plans at a sweep of train targets (test cost as share of GPT-4 -> test accuracy): "
          + ", ".join(f"{c / g_cost:.1%} -> {q:.4f}" for c, q in pareto_front(task_curve)))
    front = pareto_front([(c, q) for c, q, _ in curve])
    ofront = pareto_front([(c, q) for c, q, _ in ocurve])
    reach = [c for c, q in front if q >= g_acc - 1e-12]
    reach98 = [c for c, q in front if q >= 0.98 * g_acc - 1e-12]
    print(f"test-curve reading (not a train-fit choice): cheapest point with test acc >= GPT-4's: "
          f"{(min(reach) / g_cost if reach else float('nan')):.1%}; >= 98%: "
          f"{(min(reach98) / g_cost if reach98 else float('nan')):.1%}")

    auroc_by_rung = {}
    gp = results["gpt4"].get("rungs") or {}
    for i, (m, r) in enumerate(gp.items()):
        auroc_by_rung[f"{i}:{short(m)}"] = round(r["auroc"], 4)

    def ratio(key: str, which: str = "choice") -> float | None:
        ch = results[key].get(which)
        return None if ch is None else round(ch.test_cost / g_cost, 4)

    def task_ratio(key: str) -> float | None:
        tp = results[key].get("per_task")
        return None if tp is None else round(tp.test_cost / g_cost, 4)

    def task_quality(key: str) -> float | None:
        tp = results[key].get("per_task")
        return None if tp is None else round(tp.test_quality, 4)

    summary = {
        "cost_ratio_at_gpt4_accuracy": ratio("gpt4"),
        "cost_ratio_at_98pct_gpt4_accuracy": ratio("98pct"),
        "auroc_by_rung": auroc_by_rung,
        "test_accuracy_at_gpt4_target": round(results["gpt4"]["choice"].test_quality, 4) if results["gpt4"]["choice"] else None,
        "test_accuracy_at_98pct_target": round(results["98pct"]["choice"].test_quality, 4) if results["98pct"]["choice"] else None,
        "gpt4_test_accuracy": round(g_acc, 4),
        "oracle_cost_ratio_at_gpt4_accuracy": ratio("gpt4", "oracle"),
        "ladder_at_gpt4_accuracy": results["gpt4"]["choice"].describe() if results["gpt4"]["choice"] else None,
        "cross_encoder_train_seconds": round(ce_stats["train_seconds"], 1) if ce_stats else None,
        "scorer_at_gpt4_accuracy": results["gpt4"]["choice"].scorer if results["gpt4"]["choice"] else None,
        "scorer_at_98pct_gpt4_accuracy": results["98pct"]["choice"].scorer if results["98pct"]["choice"] else None,
        "auroc_by_rung_98pct": {f"{i}:{short(m)}": round(r["auroc"], 4)
                                for i, (m, r) in enumerate((results["98pct"].get("rungs") or {}).items())},
        "answer_scorer_seconds": round(as_stats["seconds"], 1) if as_stats else None,
        "task_aware_cost_ratio_at_gpt4_accuracy": task_ratio("gpt4"),
        "task_aware_cost_ratio_at_98pct_gpt4_accuracy": task_ratio("98pct"),
        "task_aware_test_accuracy_at_gpt4_target": task_quality("gpt4"),
        "task_aware_test_accuracy_at_98pct_target": task_quality("98pct"),
        "task_classifier_test_accuracy": round(task_accuracy, 4),
    }
    if not args.no_mlflow:
        import mlflow

        from routerops import registry

        registry.configure_mlflow(settings)
        with mlflow.start_run(run_name="cascade-routerbench-scorers") as run, tempfile.TemporaryDirectory() as tmp:
            mlflow.log_params({"ce_models": args.ce_models if not args.no_cross_encoder else "none",
                               "second_opinions": ",".join(short(r) for r in opinions) or "none",
                               "answer_scorer": as_stats["embedder"] if as_stats else "none",
                               "ce_examples": args.ce_examples, "ce_max_length": args.ce_max_length,
                               "max_length": args.max_length, "seed": args.seed})
            mlflow.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, int | float) and v is not None
                                and math.isfinite(float(v))}
                               | {f"auroc_rung{k.split(':')[0]}": v for k, v in auroc_by_rung.items()})
            mlflow.log_artifact(str(plot(Path(tmp) / "cascade_pareto.png", singles, front, ofront, (g_acc, g_cost),
                                            pareto_front(task_curve))),
                                "plots")
            mlflow.log_text(json.dumps(summary, indent=1), "summary.json")
            print(f"MLflow run {run.info.run_id} (plots/cascade_pareto.png)")
    print(f"total {time.perf_counter() - t0:.0f}s")
    print(json.dumps(summary))


def _replay(table, ladder, thresholds) -> tuple[float, float]:  # noqa: ANN001
    from routerops.training.cascade_eval import simulate

    return simulate(table, ladder, thresholds)


def _answered_shares(table, ladder, thresholds) -> list[float]:  # noqa: ANN001
    undecided = np.ones(table.n, dtype=bool)
    shares = []
    for i, m in enumerate(ladder):
        accept = undecided if i == len(ladder) - 1 else undecided & (table.score[m] >= thresholds[i])
        shares.append(float(accept.mean()))
        undecided &= ~accept
    return shares


if __name__ == "__main__":
    main()
