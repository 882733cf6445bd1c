"""Serving overhead of the fleet decision (issue 27): one decision over 11 models on one core, against
the two-model decision (RouterState.decide: P(strong wins) vs alpha) on the same router, in the same
process, interleaved prompt by prompt.

    nice -n 10 python benchmarks/bench_fleet_decision.py [--n 3000] [--models 11] [--embedder-path DIR]

Both sides embed the prompt with the default static embedder (no routing cache: every prompt is new)
and score an IRT-MF router (routerops.mf-router/2, rank 8, prompt statistics) with 11 models in its
vocabulary and, unless --categories 0, category heads for 16 categories (the most a router keeps); the
fleet side also predicts each model's cost, ranks all 11 under the dial (calibrated on
the router's 2,000 reference prompts, once) and builds the metadata of every candidate. The process is
pinned to one core. Without --embedder-path a static embedder is distilled once into
/tmp/routerops-bench-static (its vocabulary cut to the 20,000 most frequent tokens: the per-prompt cost,
tokenizing and a gather, does not depend on it). Goal: p50 <= 1 ms, p99 <= 5 ms. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = ["gpt-4-1106-preview", "gpt-3.5-turbo-1106", "claude-v1", "claude-v2", "claude-instant-v1",
          "meta/llama-2-70b-chat", "mistralai/mixtral-8x7b-chat", "zero-one-ai/Yi-34B-Chat",
          "WizardLM/WizardLM-13B-V1.2", "meta/code-llama-instruct-34b-chat", "mistralai/mistral-7b-chat"]
PRICES = [(10, 30), (1, 2), (8, 24), (8, 24), (0.8, 2.4), (0.9, 0.9), (0.6, 0.6), (0.8, 0.8), (0.3, 0.3),
          (0.8, 0.8), (0.2, 0.2)]
WORDS = ("the a of model prompt route cost quality answer python function list sort integer prove explain "
         "summarize why how what when translate french story poem code bug loop derivative integral matrix "
         "history war capital city river science physics chemistry energy light speed write short long").split()


def prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 120))) for i in range(n)]


def pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000.0, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--models", type=int, default=11)
    parser.add_argument("--embedder-path", type=Path, default=None)
    parser.add_argument("--categories", type=int, default=16, help="category heads in the router (0: none)")
    parser.add_argument("--core", type=int, default=None, help="the core to pin to (default: the first allowed)")
    args = parser.parse_args()
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {args.core if args.core is not None else allowed[0]})
    import torch

    torch.set_num_threads(1)

    from routerops.fleet import Fleet, FleetModel
    from routerops.models.embedders.static import StaticBuildConfig, StaticEmbedder, build_static
    from routerops.models.prompt_features import fit_standardizer, raw_features
    from routerops.models.router import FORMAT_V2, MFRouter
    from routerops.serving.fleet import FleetRouter
    from routerops.serving.routing import RouterState, Snapshot
    from routerops.settings import Settings

    path = args.embedder_path
    if path is None:
        path = Path("/tmp/routerops-bench-static")
        if not (path / "manifest.json").is_file():
            print("distilling a static embedder into", path, "(once)")
            build_static(path, StaticBuildConfig(vocab_limit=20_000))
    embedder = StaticEmbedder(path)
    names = MODELS[: args.models]
    ref = prompts(2000, seed=1)
    std = fit_standardizer(raw_features(ref))
    dim = embedder.encode(["x"]).shape[1] + len(std["mean"])
    rng = np.random.default_rng(0)
    rank = 8
    weights = {"theta": rng.normal(0, 1, len(names)), "w": rng.normal(0, 0.05, dim), "V": rng.normal(0, 0.05, (rank, dim)),
               "U": rng.normal(0, 0.3, (len(names), rank)), "bias": np.zeros(1)}
    metadata = {"format": FORMAT_V2, "vocabulary": names, "embedding": {"backend": "static"}, "prompt_features": std,
                "default_strong": names[0], "default_weak": names[-1]}
    if args.categories:  # category heads at the most a router keeps (routerops.models.category_heads)
        c, emb_dim = args.categories, dim - len(std["mean"])
        weights.update(cat_W=rng.normal(0, 1, (c, emb_dim)), cat_b=np.zeros(c),
                       head_W=rng.normal(0, 0.3, (c, len(names), emb_dim)), head_b=np.zeros((c, len(names))),
                       head_ok=np.ones((c, len(names))))
        metadata["category_heads"] = {"categories": [f"c{i}" for i in range(c)]}
    router = MFRouter(weights, metadata, version="bench")
    router._embedder = embedder
    router.weights["reference_X"] = router.prompt_vectors(embedder.encode(ref), ref).astype(np.float32)

    settings = Settings(data_dir=Path("/tmp/routerops-bench-fleet"), routing_cache_size=0,
                        weak_model=names[-1], strong_model=names[0])
    state = RouterState(settings)
    state.snapshot = Snapshot(router, "bench", 0.5, "settings")
    fleet = Fleet(tuple(FleetModel(n, "replay", p_in, p_out) for n, (p_in, p_out) in
                        zip(names, PRICES[: len(names)], strict=True)), weak=names[-1], strong=names[0], source="bench")
    fleet_router = FleetRouter(settings, fleet, state)
    dial = fleet_router.dial()
    warm = prompts(300, seed=2)
    for p in warm:
        state.decide(p)
        fleet_router.decide(p, None, 128)
    fleet_s, pair_s = [], []
    timer = time.perf_counter
    for i, p in enumerate(prompts(args.n, seed=3)):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for side in order:
            t0 = timer()
            if side == 0:
                d = fleet_router.decide(p, None, 128)
                fleet_s.append(timer() - t0)
            else:
                state.decide(p)
                pair_s.append(timer() - t0)
    assert len(d.candidates) == len(names)
    out = {"models": len(names), "n": args.n, "dial_lambda": round(dial.lam, 6), "dial_source": dial.source,
           "fleet_p50_ms": round(pct(fleet_s, 50), 4), "fleet_p99_ms": round(pct(fleet_s, 99), 4),
           "pair_p50_ms": round(pct(pair_s, 50), 4), "pair_p99_ms": round(pct(pair_s, 99), 4)}
    out["p50_ratio_vs_pair"] = round(out["fleet_p50_ms"] / out["pair_p50_ms"], 3)
    out["p99_ratio_vs_pair"] = round(out["fleet_p99_ms"] / out["pair_p99_ms"], 3)
    out["goal_met"] = out["fleet_p50_ms"] <= 1.0 and out["fleet_p99_ms"] <= 5.0
    print(f"decision over {len(names)} models, one core, {args.n} new prompts each, interleaved:")
    print(f"  fleet (11-way, dial, metadata)   p50 {out['fleet_p50_ms']:.3f} ms  p99 {out['fleet_p99_ms']:.3f} ms")
    print(f"  pair  (P(strong wins) vs alpha)  p50 {out['pair_p50_ms']:.3f} ms  p99 {out['pair_p99_ms']:.3f} ms")
    print(f"  ratio fleet/pair                 p50 {out['p50_ratio_vs_pair']:.2f}x    p99 {out['p99_ratio_vs_pair']:.2f}x")
    print(f"  goal p50 <= 1 ms, p99 <= 5 ms: {'met' if out['goal_met'] else 'NOT met'}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
