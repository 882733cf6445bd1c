"""Router quality on RouterBench test splits: APGR and CPT(50%) of the MF router trained on the public
preference data (AlpacaEval annotations + Arena-Hard battles), beside the same router trained without
the Arena-Hard battles, and the random router.

    python benchmarks/router_quality.py [--shared-data ../shared/data] [--data-dir DIR] [--plot out.png]

Uses its own data dir (default: a fresh temporary one; re-running with the same --data-dir reuses the
imports and the embedding cache). Prints one table; with --plot writes the PGR curves.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _store import fresh_store, import_shared_preferences

ROOT = Path(__file__).resolve().parent.parent
SPLITS = ["arc_challenge", "mbpp", "winograde"]
STRONG, WEAK = "gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared-data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, default=None, help="write the PGR curves here (PNG)")
    parser.add_argument("--with-routerbench-train", action="store_true",
                        help="add a router also trained on the RouterBench TRAIN splits (in-domain labels)")
    args = parser.parse_args()

    settings, data_dir = fresh_store(args.data_dir, "routerops-quality-")

    from routerops import metrics
    from routerops.db import session_scope
    from routerops.embeddings import embed_cached, get_embedder
    from training.eval_sets import load_routerbench
    from training.importers.core import import_file
    from training.router_model import load_router
    from training.train_router import train_router

    shared = args.shared_data
    t0 = time.perf_counter()
    import_shared_preferences(settings, shared)
    configs: list[tuple[str, list[str] | None]] = [("MF (alpaca+arena)", ["routerbench"]),
                                                   ("MF (alpaca only)", ["arena_hard", "routerbench"])]
    if args.with_routerbench_train:
        for split in SPLITS:  # TRAIN splits only: the table scores the TEST splits
            import_file(settings, "routerbench", shared / "routerbench" / f"{split}_train.csv.gz", progress=False)
        configs.append(("MF (+routerbench train)", None))
    print(f"imported in {time.perf_counter() - t0:.1f}s (data dir {data_dir})")

    runs = {}
    for label, exclude in configs:
        result = train_router(settings, exclude_sources=exclude, seed=args.seed, register=False, progress=False)
        runs[label] = result
        print(f"{label}: run {result.run_id}, val AUC {result.metrics['val_auc']:.3f}, "
              f"embed {result.metrics['embed_seconds']:.1f}s, train {result.metrics['train_seconds']:.1f}s")

    evals = [load_routerbench(shared / "routerbench" / f"{s}_test.csv.gz", STRONG, WEAK) for s in SPLITS]
    embedder = get_embedder(settings)
    with session_scope(settings) as session:
        vectors = [embed_cached(session, embedder, ev.prompts, progress=False) for ev in evals]

    rows = []
    curves = {}
    for ev, vec in zip(evals, vectors, strict=True):
        gap = ev.strong_q.mean() - ev.weak_q.mean()
        line = {"split": ev.name, "n": len(ev.prompts), "q_weak": ev.weak_q.mean(), "q_strong": ev.strong_q.mean(),
                "gap": gap, "random": (0.5, 0.5)}
        oracle = metrics.oracle_curve(ev.weak_q, ev.strong_q)
        line["oracle"] = (oracle.apgr(), oracle.cpt(0.5))
        for label, result in runs.items():
            router = load_router(result.model_uri, settings)
            scores = router.score_embeddings(vec, STRONG, WEAK)
            curve = metrics.pgr_curve(scores, ev.weak_q, ev.strong_q)
            line[label] = (curve.apgr(), curve.cpt(0.5))
            curves[(ev.name, label)] = curve
        rows.append(line)

    labels = ["random", *runs, "oracle"]
    head = f"{'split':<22}{'n':>5}{'q_weak':>8}{'q_strong':>9} " + "".join(f"{lab:>26}" for lab in labels)
    print(f"\nstrong={STRONG}  weak={WEAK}   cells: APGR / CPT(50%)")
    print(head)
    print("-" * len(head))
    for line in rows:
        cells = "".join(f"{line[lab][0]:>17.3f} / {line[lab][1]:>5.3f}" for lab in labels)
        print(f"{line['split']:<22}{line['n']:>5}{line['q_weak']:>8.3f}{line['q_strong']:>9.3f} {cells}")
    mean = {lab: np.mean([line[lab][0] for line in rows]) for lab in labels}
    print(f"{'mean APGR':<44} " + "".join(f"{mean[lab]:>17.3f}{'':>8}" for lab in labels))

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 4.5))
        for ax, line in zip(np.atleast_1d(axes), rows, strict=True):
            ax.plot([0, 1], [0, 1], "--", color="grey", label="random (0.500)")
            for label in runs:
                c = curves[(line["split"], label)]
                ax.plot(c.strong_share, c.pgr, label=f"{label} ({c.apgr():.3f})")
            ax.set_title(f"{line['split']} (n={line['n']})")
            ax.set_xlabel("strong-call share")
            ax.set_ylabel("PGR")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
