"""Routing-decision speed per embedder, each against plain sentence-transformers MiniLM measured in
the same run (issue 12 goals: one unseen decision p50 <= 1 ms, p99 <= 5 ms; >= 5,000 decisions/s
batched; training-time embedding of all ../shared/data prompts reported per embedder).

    python benchmarks/bench_embedders.py [--embedders minilm static onnx] [--sample 2000] [--json out.json]

Per embedder:
- cold start: a fresh process imports routerops, loads the embedder and embeds one prompt (wall
  seconds, peak RSS);
- one decision: the serving path (routerops.serving.routing.ScoreBatcher.score with the routing cache off) on
  prompts never seen before, embedding included, one at a time: p50/p99;
- batched decisions/s: MFRouter.score on one list of unseen prompts;
- embed all: every distinct prompt in ../shared/data (scores/, alpaca_eval, arena_hard, routerbench,
  pairwise, headlines); `--sample N` times N of them and extrapolates (0 = all).
The router is an MF router with random weights over the embedder's width: its cost is one dot
product whatever the weights. Prompts are a seeded shuffle of the shared prompts, mixed lengths.
The static and ONNX embedders must be built first (`routerops embedder build static|onnx`); MiniLM
(torch) and ONNX use one thread (`--threads`): on a shared CPU more threads collapse.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def shared_prompts(shared: Path) -> list[str]:
    """Every distinct prompt text in the shared data (what training would embed)."""
    import pandas as pd

    seen: dict[str, None] = {}

    def add(text: object) -> None:
        if isinstance(text, str) and text.strip():
            seen.setdefault(text, None)

    for path in sorted((shared / "scores").glob("*.jsonl.gz")) + sorted((shared / "pairwise").glob("*.jsonl.gz")):
        with gzip.open(path, "rt") as fh:
            for line in fh:
                add(json.loads(line).get("prompt"))
    for path in sorted((shared / "alpaca_eval" / "model_outputs").glob("*.json.gz"))[:1]:
        with gzip.open(path, "rt") as fh:
            for row in json.load(fh):
                add(row.get("instruction"))
    for path in sorted((shared / "arena_hard").glob("*_question.jsonl")):
        for line in path.read_text().splitlines():
            q = json.loads(line)
            turns = q.get("turns") or []
            add(turns[0].get("content") if turns and isinstance(turns[0], dict) else q.get("prompt"))
    for path in sorted((shared / "routerbench").glob("*.csv.gz")):
        for p in pd.read_csv(path, usecols=["prompt"])["prompt"]:
            add(p)
    for path in sorted((shared / "headlines").glob("*.csv")):
        for p in pd.read_csv(path, header=None).iloc[:, 0]:  # no header row: query,label,id
            add(p)
    return list(seen)


COLD = """
import json, sys, time
t0 = time.perf_counter()
from routerops.models.embeddings import SentenceTransformerEmbedder, load_built_embedder
kind, path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "minilm":
    import torch; torch.set_num_threads(threads)
    emb = SentenceTransformerEmbedder("all-MiniLM-L6-v2")
else:
    emb = load_built_embedder(kind, path, threads=threads)
emb.encode(["What is the capital of France?"])
seconds = time.perf_counter() - t0
# VmHWM, not ru_maxrss: the latter keeps the parent's high-water mark across fork + exec
hwm = next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "rss_mb": int(hwm.split()[1]) / 1024}))
"""


def cold_start(kind: str, path: str, threads: int) -> dict:
    env = os.environ | {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", COLD, kind, path, str(threads)], capture_output=True, text=True,
                          env=env, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"cold start of {kind} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def random_router(embedder, seed: int = 0):  # noqa: ANN001, ANN201
    from routerops.models.embeddings import embedding_ref
    from routerops.models.router import MFRouter

    rng = np.random.default_rng(seed)
    dim = 16
    weights = {"P": rng.normal(size=(2, dim)), "text_proj": rng.normal(size=(dim, embedder.dim)) / np.sqrt(embedder.dim),
               "classifier": rng.normal(size=dim)}
    meta = {"vocabulary": ["strong", "weak"], "embedding": embedding_ref(embedder).to_dict(),
            "default_strong": "strong", "default_weak": "weak"}
    router = MFRouter(weights, meta)
    router._embedder = embedder  # measured as served: the embedder already loaded
    return router


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def measure(kind: str, embedder, prompts: list[str], args: argparse.Namespace, total: int) -> dict:  # noqa: ANN001
    from routerops.serving.routing import ScoreBatcher

    router = random_router(embedder)
    batcher = ScoreBatcher("strong", "weak", cache_size=0)
    pool = iter(prompts)
    for _ in range(20):  # warm-up
        batcher.score(router, next(pool))
    single = []
    for _ in range(args.n_single):
        p = next(pool)
        t0 = time.perf_counter()
        batcher.score(router, p)
        single.append(time.perf_counter() - t0)
    batch = [next(pool) for _ in range(args.n_batch if kind == "static" else min(args.n_batch, args.n_batch_slow))]
    t0 = time.perf_counter()
    router.score(batch)
    batched = len(batch) / (time.perf_counter() - t0)
    batcher.close()
    sample = [next(pool) for _ in range(args.sample)] if args.sample else prompts
    t0 = time.perf_counter()
    for i in range(0, len(sample), 256):
        embedder.encode(sample[i : i + 256])
    embed_s = time.perf_counter() - t0
    return {"single_p50_ms": pct(single, 50), "single_p99_ms": pct(single, 99), "batched_per_s": batched,
            "embed_prompts": len(sample), "embed_s": embed_s, "embed_per_s": len(sample) / embed_s,
            "embed_all_est_s": total * embed_s / len(sample), "name": embedder.name}


def main() -> int:
    from routerops.settings import get_settings

    settings = get_settings()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--embedders", nargs="+", default=["minilm", "static", "onnx"],
                    choices=["minilm", "static", "onnx"])
    ap.add_argument("--shared-data", type=Path,
                    default=Path(os.environ.get("ROUTEROPS_SHARED_DATA", ROOT.parent / "shared" / "data")))
    ap.add_argument("--static-path", default=str(settings.resolved_static_embedder_path))
    ap.add_argument("--onnx-path", default=str(settings.resolved_onnx_embedder_path))
    ap.add_argument("--threads", type=int, default=1, help="torch / ONNX Runtime intra-op threads")
    ap.add_argument("--n-single", type=int, default=300, help="decisions timed one at a time")
    ap.add_argument("--n-batch", type=int, default=5000, help="prompts in the batched measurement")
    ap.add_argument("--n-batch-slow", type=int, default=256, help="the same, for the transformer embedders")
    ap.add_argument("--sample", type=int, default=2000, help="prompts for the embed-all timing (0 = all)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    t0 = time.perf_counter()
    prompts = shared_prompts(args.shared_data)
    total = len(prompts)
    if total < args.n_single + args.n_batch + args.sample + 20:
        raise SystemExit(f"{total} prompts under {args.shared_data}: point --shared-data at the shared data "
                         "or lower --n-single/--n-batch/--sample")
    random.Random(0).shuffle(prompts)
    print(f"{total} distinct prompts in {args.shared_data} (read in {time.perf_counter() - t0:.1f}s); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    import torch

    from routerops.models.embeddings import SentenceTransformerEmbedder, load_built_embedder

    torch.set_num_threads(args.threads)
    results: dict[str, dict] = {}
    for kind in args.embedders:
        path = {"static": args.static_path, "onnx": args.onnx_path}.get(kind, "")
        cold = cold_start(kind, path, args.threads)
        emb = (SentenceTransformerEmbedder("all-MiniLM-L6-v2") if kind == "minilm"
               else load_built_embedder(kind, Path(path), threads=args.threads))
        # each embedder gets its own never-seen prompts (disjoint slices of the shuffle)
        offset = 20_000 * len(results) % max(1, total)
        res = measure(kind, emb, prompts[offset:] + prompts[:offset], args, total)
        res |= {"cold_start_s": cold["seconds"], "cold_rss_mb": cold["rss_mb"]}
        results[kind] = res
        print(f"{kind:>7} ({res['name']}): one decision p50 {res['single_p50_ms']:.3f} ms, "
              f"p99 {res['single_p99_ms']:.3f} ms; batched {res['batched_per_s']:,.0f}/s; cold start "
              f"{res['cold_start_s']:.2f} s, {res['cold_rss_mb']:.0f} MB; embed all {total} prompts "
              f"~{res['embed_all_est_s']:.0f} s ({res['embed_per_s']:,.0f}/s on {res['embed_prompts']})", flush=True)
        del emb
    base = results.get("minilm")
    if base:
        print("\nratios against sentence-transformers MiniLM (torch) in this run:")
        for kind, r in results.items():
            if kind == "minilm":
                continue
            print(f"{kind:>7}: p50 {r['single_p50_ms'] / base['single_p50_ms']:.3f}x  p99 "
                  f"{r['single_p99_ms'] / base['single_p99_ms']:.3f}x  batched "
                  f"{r['batched_per_s'] / base['batched_per_s']:.1f}x  cold start "
                  f"{r['cold_start_s'] / base['cold_start_s']:.2f}x  RSS {r['cold_rss_mb'] / base['cold_rss_mb']:.2f}x  "
                  f"embed all {r['embed_all_est_s'] / base['embed_all_est_s']:.3f}x")
    print("\ngoals: one decision p50 <= 1 ms, p99 <= 5 ms; batched >= 5,000/s")
    for kind, r in results.items():
        ok = r["single_p50_ms"] <= 1 and r["single_p99_ms"] <= 5 and r["batched_per_s"] >= 5000
        print(f"{kind:>7}: {'meets' if ok else 'misses'} them")
    if args.json:
        args.json.write_text(json.dumps({"prompts": total, "load_average": os.getloadavg(), "results": results},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
