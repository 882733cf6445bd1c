"""Router quality on traffic the router was not trained on: leave-one-source-out APGR over every
source in ../shared/data, and APGR on the RouterBench TEST splits (their prompts never train), for one
or more router configurations, beside random (0.5) and the oracle.

    python benchmarks/router_quality.py [--data-dir DIR] [--config NAME=JSON ...] [--ablate SOURCE ...]
                                        [--json out.json]

--config NAME=JSON: keyword arguments of routerops.training.train_router.train_router (default: the shipped
defaults, and RouteLLM's MF term alone, "mf"). --ablate S: also train without source S and print the
LOSO table of the other sources, so one sees what S buys or costs. The store (imports and the
embedding cache) lives in --data-dir and is reused on a rerun. Every training run is an MLflow run
in that store, with its LOSO table and plot.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _store import fresh_store, import_all_shared

ROOT = Path(__file__).resolve().parent.parent
SPLITS = ["arc_challenge", "mbpp", "winograde"]
STRONG, WEAK = "gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat"
DEFAULT_CONFIGS = {"irt-mf (default)": {}, "mf (RouteLLM term only)": {"formulation": "mf"}}


def _train(settings, shared: Path, **kwargs):  # noqa: ANN001, ANN202
    from routerops.training.train_router import train_router

    evals = [shared / "routerbench" / f"{s}_test.csv.gz" for s in SPLITS]
    return train_router(settings, eval_sets=evals, eval_strong=STRONG, eval_weak=WEAK, loso=True,
                        register=False, progress=False, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared-data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--config", action="append", default=[], metavar="NAME=JSON")
    parser.add_argument("--ablate", action="append", default=[], metavar="SOURCE")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args()

    settings, data_dir = fresh_store(args.data_dir, "routerops-quality-")
    from routerops.db import session_scope
    from routerops.db.models import ImportBatch

    with session_scope(settings) as s:
        imported = s.query(ImportBatch).count()
    if not imported:
        t0 = time.perf_counter()
        timings = import_all_shared(settings, args.shared_data)
        print(f"imported everything in {time.perf_counter() - t0:.0f}s: "
              + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    configs = dict(DEFAULT_CONFIGS)
    if args.config:
        configs = {}
        for item in args.config:
            name, _, raw = item.partition("=")
            configs[name] = json.loads(raw or "{}")

    out: dict[str, dict] = {}
    for name, kwargs in configs.items():
        t0 = time.perf_counter()
        result = _train(settings, args.shared_data, **kwargs)
        m = result.metrics
        rb = {s: m.get(f"apgr_{s}_test", float("nan")) for s in SPLITS}
        print(f"\n== {name}  ({kwargs or 'defaults'}; run {result.run_id}; {time.perf_counter() - t0:.0f}s, "
              f"of which LOSO {m.get('loso_seconds', 0):.0f}s)")
        print(result.loso.table())
        print("RouterBench test splits (strong gpt-4-1106-preview, weak mixtral-8x7b): "
              + ", ".join(f"{s} {v:.3f}" for s, v in rb.items()) + f"; mean {np.mean(list(rb.values())):.3f}")
        out[name] = {"config": kwargs, "loso": result.loso.frame().to_dict("records"),
                     "loso_mean": result.loso.mean_apgr, "loso_min": result.loso.min_apgr,
                     "loso_mean_by_difficulty": result.loso.mean_apgr_difficulty,
                     "loso_mean_with_memory": result.loso.mean_apgr_memory,
                     "routerbench_test": rb, "routerbench_test_mean": float(np.mean(list(rb.values()))),
                     "train_seconds_without_loso": m["total_seconds"] - m.get("loso_seconds", 0.0),
                     "embed_seconds": m["embed_seconds"]}

    base_name = next(iter(configs))
    for source in args.ablate:
        result = _train(settings, args.shared_data, exclude_sources=[source], **configs[base_name])
        base = {r["source"]: r["apgr"] for r in out[base_name]["loso"]}
        print(f"\n== {base_name} without {source}: LOSO APGR of the other sources (with -> without)")
        for row in result.loso.rows:
            print(f"  {row.source:<16} {base.get(row.source, float('nan')):.3f} -> {row.apgr:.3f}")
        out[f"{base_name} without {source}"] = {"loso": result.loso.frame().to_dict("records"),
                                                 "loso_mean": result.loso.mean_apgr}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=float))
    print(json.dumps({k: {"loso_mean": v["loso_mean"], "routerbench_test_mean": v.get("routerbench_test_mean")}
                      for k, v in out.items()}, default=float))


if __name__ == "__main__":
    main()
