"""The adaptation measure (routerops/training/router_adaptation.py): per shared source, the router
retrained with defaults on the other sources plus N of the source's own labelled prompts, APGR on a
fixed test split of its other prompts, beside the prior alone, kNN k=10/50, random and the oracle;
per source and the mean over sources. Logs the table and a plot to an MLflow run in the store.

    python benchmarks/router_adaptation.py [--data-dir DIR] [--source S ...] [--n 0 --n 50 ...]
                                           [--json out.json]

The store (imports and the embedding cache) lives in --data-dir and is reused on a rerun.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _store import fresh_store, import_all_shared

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared-data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--source", action="append", default=None, help="only these sources")
    parser.add_argument("--n", action="append", type=int, default=None, help="label counts (default 0..3000)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    settings, data_dir = fresh_store(args.data_dir, "routerops-adapt-")
    import mlflow
    import pandas as pd

    from routerops import registry
    from routerops.db import session_scope
    from routerops.db.models import ImportBatch
    from routerops.importers.store import load_outcomes, load_preferences
    from routerops.models import irt_mf
    from routerops.models.embeddings import embed_cached, ensure_built_embedder, get_embedder
    from routerops.training.router_adaptation import NS, adaptation_measure, adaptation_plot

    with session_scope(settings) as s:
        if not s.query(ImportBatch).count():
            import_all_shared(settings, args.shared_data)
    ensure_built_embedder(settings)
    with session_scope(settings) as s:
        outcomes, prefs = load_outcomes(s), load_preferences(s)
        hashes = pd.concat([outcomes[["prompt_hash", "prompt"]], prefs[["prompt_hash", "prompt"]]]).drop_duplicates("prompt_hash")
        emb = embed_cached(s, get_embedder(settings), hashes["prompt"].tolist(), progress=False)
    embeddings = dict(zip(hashes["prompt_hash"], emb, strict=True))
    t0 = time.perf_counter()
    report = adaptation_measure(outcomes, prefs, embeddings, config=irt_mf.IRTMFConfig(),
                                ns=tuple(args.n or NS), sources=args.source, progress=True)
    print(f"\n{report.table()}\n({time.perf_counter() - t0:.0f}s; data dir {data_dir})")
    means = report.means()
    registry.configure_mlflow(settings)
    with mlflow.start_run(run_name="router-adaptation", tags={"routerops.kind": "adaptation-benchmark"}) as run, \
            tempfile.TemporaryDirectory() as tmp:
        mlflow.log_table(report.frame(), "adaptation.json")
        mlflow.log_text(report.table(), "adaptation.txt")
        adaptation_plot(report, Path(tmp) / "adaptation.png")
        mlflow.log_artifact(str(Path(tmp) / "adaptation.png"), "plots")
        mlflow.log_metrics({f"adapt_{c}_n{n}": float(v) for n, row in means.iterrows() for c, v in row.items()
                            if c != "sources" and np.isfinite(v)})
        print(f"MLflow run {run.info.run_id}")
    if args.json:
        args.json.write_text(json.dumps({"rows": report.frame().to_dict("records"),
                                         "means": means.reset_index().to_dict("records")}, indent=2, default=float))


if __name__ == "__main__":
    main()
