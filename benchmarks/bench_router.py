"""MF router speed: training wall time on all shared preferences (embedding vs fitting, cold vs warm
embedding cache), routing-decision latency (one prompt at a time) and batch throughput of
MFRouter.score, each against plain sentence-transformers encoding the same prompts in this process.

    python benchmarks/bench_router.py [--shared-data ../shared/data] [--data-dir DIR] [--n-single 200]

The baseline is SentenceTransformer(minilm_path()).encode: the router embeds with the same model, so
the ratios show what routing adds on top of embedding (ideally ~1.0x).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from _store import fresh_store, import_all_shared

ROOT = Path(__file__).resolve().parent.parent


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000.0, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared-data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a fresh temporary folder (cold cache)")
    parser.add_argument("--n-single", type=int, default=200, help="prompts timed one at a time")
    parser.add_argument("--n-batch", type=int, default=1000, help="prompts in the throughput test")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both sides (default: torch's)")
    parser.add_argument("--skip-train", action="store_true", help="time only scoring (needs a trained --data-dir)")
    args = parser.parse_args()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    settings, data_dir = fresh_store(args.data_dir, "routerops-bench-")

    from sentence_transformers import SentenceTransformer

    from routerops.local_models import minilm_path
    from routerops.models.router import load_router
    from routerops.training.eval_sets import load_routerbench
    from routerops.training.train_router import train_router

    shared = args.shared_data
    from routerops.db import session_scope
    from routerops.db.models import ImportBatch

    with session_scope(settings) as s:
        if not s.query(ImportBatch).count():
            import_all_shared(settings, shared)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print("training on everything in ../shared/data (outcomes + preferences; RouterBench test splits aside)")
    results = []
    for label in () if args.skip_train else ("first run (cache as found)", "second run (warm cache)"):
        t0 = time.perf_counter()
        res = train_router(settings, progress=False)
        wall = time.perf_counter() - t0
        results.append((label, res, wall))
        m = res.metrics
        print(f"  {label}: wall {wall:.1f}s = embed {m['embed_seconds']:.1f}s + prompt statistics "
              f"{m['features_seconds']:.1f}s + fit {m['train_seconds']:.1f}s ({m['lbfgs_evaluations']:.0f} L-BFGS "
              f"evaluations) + loading/MLflow/IO; {len(res.vocabulary)} models, val AUC {m.get('val_auc', float('nan')):.3f}")

    # prompts nobody embedded yet in this process: RouterBench test prompts (realistic lengths)
    prompts: list[str] = []
    for split in ("arc_challenge", "mbpp", "winograde"):
        prompts += load_routerbench(shared / "routerbench" / f"{split}_test.csv.gz", "gpt-4-1106-preview",
                                    "mixtral-8x7b-chat").prompts
    rng = np.random.default_rng(0)
    single = [prompts[i] for i in rng.choice(len(prompts), size=min(args.n_single, len(prompts)), replace=False)]
    batch = (prompts * (args.n_batch // len(prompts) + 1))[: args.n_batch]

    t0 = time.perf_counter()
    router = load_router(f"models:/{settings.router_model_name}@challenger", settings)
    router.score(["warm up"], "gpt-4-1106-preview", "mixtral-8x7b-chat")
    first_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    load_router(f"models:/{settings.router_model_name}@challenger", settings)
    again_load = time.perf_counter() - t0

    st = SentenceTransformer(str(minilm_path()), device="cpu")
    st.encode(["warm up"])

    def time_each(fn) -> list[float]:  # noqa: ANN001
        out = []
        for p in single:
            t = time.perf_counter()
            fn(p)
            out.append(time.perf_counter() - t)
        return out

    # interleave baseline and router in two rounds so machine load hits both alike
    base_lat, router_lat = [], []
    for _ in range(2):
        base_lat += time_each(lambda p: st.encode([p]))
        router_lat += time_each(lambda p: router.score([p], "gpt-4-1106-preview", "mixtral-8x7b-chat"))

    t = time.perf_counter()
    st.encode(batch, batch_size=64)
    base_tp = len(batch) / (time.perf_counter() - t)
    t = time.perf_counter()
    router.score(batch, "gpt-4-1106-preview", "mixtral-8x7b-chat")
    router_tp = len(batch) / (time.perf_counter() - t)

    emb = router.embedder.encode(single[:50])
    t = time.perf_counter()
    for _ in range(200):
        router.score_embeddings(emb[:1], "gpt-4-1106-preview", "mixtral-8x7b-chat", prompts=single[:1])
    decision_us = (time.perf_counter() - t) / 200 * 1e6

    # the label memory's cost per decision, against the prior alone, on the same embeddings, same process
    pair = ("gpt-4-1106-preview", "mixtral-8x7b-chat")
    vecs = router.embedder.encode(single)
    router.score_embeddings(vecs[:1], *pair, prompts=single[:1])  # builds the pair's memory once
    mem_lat, prior_lat = [], []
    for _ in range(2):
        for i in range(len(single)):
            t = time.perf_counter()
            router.prior_scores(vecs[i:i + 1], *pair, prompts=single[i:i + 1])
            prior_lat.append(time.perf_counter() - t)
            t = time.perf_counter()
            router.score_embeddings(vecs[i:i + 1], *pair, prompts=single[i:i + 1])
            mem_lat.append(time.perf_counter() - t)
    bvecs = router.embedder.encode(batch)
    t = time.perf_counter()
    router.prior_scores(bvecs, *pair, prompts=batch)
    prior_bt = len(batch) / (time.perf_counter() - t)
    t = time.perf_counter()
    router.score_embeddings(bvecs, *pair, prompts=batch)
    mem_bt = len(batch) / (time.perf_counter() - t)
    print(f"\nper decision on an embedding (prompt statistics included), {router.labelled_prompts(*pair)} labelled "
          f"prompts of the pair in the memory:")
    print(f"{'metric':<34}{'prior alone':>22}{'with label memory':>18}{'ratio':>8}")
    for name, q in (("decision p50 (ms)", 50), ("decision p99 (ms)", 99)):
        b, r = percentile_ms(prior_lat, q), percentile_ms(mem_lat, q)
        print(f"{name:<34}{b:>22.3f}{r:>18.3f}{r / b:>7.2f}x")
    print(f"{'batched decisions/s':<34}{prior_bt:>22.0f}{mem_bt:>18.0f}{mem_bt / prior_bt:>7.2f}x")

    print(f"\nrouter load: first {first_load:.2f}s (download + embedder), again {again_load * 1000:.1f} ms (cached)")
    print(f"routing on top of an embedding: {decision_us:.1f} us per decision (one dot product)\n")
    print(f"{'metric':<34}{'sentence-transformers':>22}{'MFRouter.score':>16}{'ratio':>8}")
    for name, q in (("single-prompt latency p50 (ms)", 50), ("single-prompt latency p99 (ms)", 99)):
        b, r = percentile_ms(base_lat, q), percentile_ms(router_lat, q)
        print(f"{name:<34}{b:>22.2f}{r:>16.2f}{r / b:>7.2f}x")
    print(f"{'batch throughput (prompts/s)':<34}{base_tp:>22.1f}{router_tp:>16.1f}{router_tp / base_tp:>7.2f}x")
    print(f"(n={len(single)} x2 single prompts, {len(batch)} batch prompts; torch threads "
          f"{__import__('torch').get_num_threads()}; data dir {data_dir})")


if __name__ == "__main__":
    main()
