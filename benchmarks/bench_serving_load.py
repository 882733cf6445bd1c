"""Load test of the API: N concurrent clients against the `router` strategy over the replay pair,
with a baseline in the same run that calls the weak model directly (`model=<weak name>`), so the
ratio router/direct shows what routing adds.

    python benchmarks/bench_serving_load.py [--clients 16] [--requests 400]

The server runs as a real `routerops serve` subprocess (its own process, as in production) over a
temporary data dir: migrated SQLite, a tiny MF router trained on tests/fixtures/router and approved
as champion. Prompts and recorded answers: AlpacaEval's Mixtral (weak) and GPT-4 Turbo (strong)
outputs from ../shared/data when present, else the test fixture pair.

The router phases draw prompts without replacement, so the routing cache never answers them: they
measure the embedder path (the replay pair only knows recorded prompts, so prompts cannot be made
unique by editing them). A last phase replays prompts already routed, the case the routing cache
(`ROUTEROPS_ROUTING_CACHE_SIZE`) serves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ROUTEROPS_SHARED_DATA", ROOT.parent / "shared" / "data"))
KEY = "bench-key-" + os.urandom(8).hex()


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


def prepare(data_dir: Path) -> dict[str, str]:
    """Data dir with a trained, approved router; returns the server's environment."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from routerops import registry
    from routerops.db import migrate, session_scope
    from routerops.db.models import PreferenceLog
    from routerops.settings import Settings
    from routerops.text import prompt_hash
    from training.train_router import train_router

    outputs = SHARED / "alpaca_eval" / "model_outputs"
    if (outputs / "gpt4_1106_preview.json.gz").is_file():
        weak_file, strong_file = outputs / "Mixtral-8x7B-Instruct-v0.1.json.gz", outputs / "gpt4_1106_preview.json.gz"
    else:
        weak_file = strong_file = ROOT / "tests" / "fixtures" / "serving" / "recorded_pair.jsonl"
    env = {"ROUTEROPS_DATA_DIR": str(data_dir), "ROUTEROPS_WEAK_BACKEND": "replay",
           "ROUTEROPS_STRONG_BACKEND": "replay", "ROUTEROPS_WEAK_MODEL": "mixtral-8x7b-instruct-v0.1",
           "ROUTEROPS_STRONG_MODEL": "gpt-4-1106-preview", "ROUTEROPS_WEAK_REPLAY_FILE": str(weak_file),
           "ROUTEROPS_STRONG_REPLAY_FILE": str(strong_file), "ROUTEROPS_API_KEYS": KEY,
           "ROUTEROPS_RELOAD_INTERVAL_S": "5"}
    settings = Settings(data_dir=data_dir)
    settings.ensure_data_dir()
    migrate.upgrade("head", settings=settings)
    with session_scope(settings) as session:
        for line in (ROOT / "tests" / "fixtures" / "router" / "prefs.jsonl").read_text().splitlines():
            r = json.loads(line)
            session.add(PreferenceLog(prompt=r["prompt"], prompt_hash=prompt_hash(r["prompt"]), model_a=r["model_a"],
                                      model_b=r["model_b"], winner=r["winner"], soft_label=r.get("soft_label"),
                                      source="fixture"))
    print("training a tiny router for the champion alias...", flush=True)
    result = train_router(settings, max_iter=60, progress=False)
    registry.approve(settings.router_model_name, result.model_version, approved_by="bench", settings=settings)
    env["_PROMPTS_FILE"] = str(weak_file)
    return env


def load_prompts(path: Path) -> list[str]:
    from routerops.backends.replay import read_records

    return list(dict.fromkeys(str(r["prompt"]) for r in read_records(path)))


class FreshPrompts:
    """Hands out each prompt once (shuffled), so no routed request repeats an earlier one."""

    def __init__(self, prompts: list[str]):
        self._left = list(prompts)
        random.Random(0).shuffle(self._left)

    def take(self, n: int) -> list[str]:
        if n > len(self._left):
            raise SystemExit(f"only {len(self._left)} unseen prompts left for a phase of {n} routed requests: "
                             "lower --requests or pass fewer --clients values")
        taken, self._left = self._left[:n], self._left[n:]
        return taken


def sample(prompts: list[str], n: int) -> list[str]:
    rng = random.Random(0)
    return [rng.choice(prompts) for _ in range(n)]


async def phase(base_url: str, model: str, prompts: list[str], clients: int) -> dict:
    """One request per item of `prompts`, `clients` at a time."""
    requests = len(prompts)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for prompt in prompts:
        queue.put_nowait(prompt)
    latencies: list[float] = []
    routing: list[float] = []
    errors: list[str] = []
    strong = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal strong
        while True:
            try:
                prompt = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/chat/completions", json={
                    "model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 64})
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
                    continue
                info = r.json()["routerops"]
                if info.get("routing_latency_ms") is not None:
                    routing.append(info["routing_latency_ms"] / 1000)
                strong += info["model"] == "gpt-4-1106-preview"
            except httpx.HTTPError as exc:
                errors.append(repr(exc))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120,
                                 limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"model": model, "requests": requests, "wall_s": wall, "throughput": requests / wall,
            "p50_ms": pct(latencies, 50) * 1000, "p99_ms": pct(latencies, 99) * 1000,
            "mean_ms": statistics.fmean(latencies) * 1000 if latencies else float("nan"),
            "routing_p50_ms": pct(routing, 50) * 1000 if routing else None,
            "routing_p99_ms": pct(routing, 99) * 1000 if routing else None,
            "strong_share": strong / max(1, requests - len(errors)), "errors": errors}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--requests", type=int, default=300)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="routerops-bench-") as tmp:
        os.chdir(tmp)
        env = prepare(Path(tmp) / "data")
        prompts = load_prompts(Path(env.pop("_PROMPTS_FILE")))
        # the ceiling for routing: the query embedder alone, batched, in this process, right now
        from routerops.embeddings import get_embedder
        from routerops.settings import Settings

        embedder = get_embedder(Settings())
        embedder.encode(prompts[:8])
        t0 = time.perf_counter()
        embedder.encode(prompts[:128])
        print(f"embedder alone (batched, this machine now): {128 / (time.perf_counter() - t0):.1f} prompts/s",
              flush=True)
        port = 18000 + os.getpid() % 1000
        server_env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEROPS_")} | env
        log = open(Path(tmp) / "server.log", "w")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "orchestration.cli", "serve", "--port", str(port),
                                 "--log-level", "warning"], env=server_env, stdout=log, stderr=log)
        base_url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    health = httpx.get(f"{base_url}/healthz", timeout=2).json()
                    break
                except httpx.HTTPError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        print((Path(tmp) / "server.log").read_text()[-3000:])
                        return 1
                    time.sleep(0.5)
            print(f"server up: router v{health['router_version']}, alpha {health['alpha']}, "
                  f"{len(prompts)} prompts", flush=True)
            weak = env["ROUTEROPS_WEAK_MODEL"]
            fresh = FreshPrompts(prompts)
            asyncio.run(phase(base_url, "router", fresh.take(40), 4))  # warm-up: embedder, connections
            asyncio.run(phase(base_url, weak, sample(prompts, 40), 4))
            total_errors = 0
            for clients in args.clients:
                direct = asyncio.run(phase(base_url, weak, sample(prompts, args.requests), clients))
                routed = asyncio.run(phase(base_url, "router", fresh.take(args.requests), clients))
                total_errors += len(direct["errors"]) + len(routed["errors"])
                print(f"\n== {clients} concurrent clients, {args.requests} requests each phase ==")
                for r in (direct, routed):
                    print(f"{r['model']:>28}: {r['throughput']:7.1f} req/s  p50 {r['p50_ms']:7.1f} ms  "
                          f"p99 {r['p99_ms']:7.1f} ms  errors {len(r['errors'])}  strong share "
                          f"{r['strong_share']:.2f}")
                print(f"  routing decision (server-side): p50 {routed['routing_p50_ms']:.1f} ms  "
                      f"p99 {routed['routing_p99_ms']:.1f} ms")
                print(f"  ratio router/direct: p50 {routed['p50_ms'] / direct['p50_ms']:.2f}x  "
                      f"p99 {routed['p99_ms'] / direct['p99_ms']:.2f}x  "
                      f"throughput {routed['throughput'] / direct['throughput']:.2f}x")
                print(f"  latency added by routing: p50 +{routed['p50_ms'] - direct['p50_ms']:.1f} ms  "
                      f"p99 +{routed['p99_ms'] - direct['p99_ms']:.1f} ms")
                for e in (direct["errors"] + routed["errors"])[:3]:
                    print("  error:", e)
            # exact repeats: 40 prompts routed once (cache misses), then asked again and again
            seen = fresh.take(40)
            asyncio.run(phase(base_url, "router", seen, 4))
            clients = args.clients[0]
            repeat = asyncio.run(phase(base_url, "router", sample(seen, args.requests), clients))
            total_errors += len(repeat["errors"])
            print(f"\n== repeated prompts, {clients} clients (routing cache hits) ==")
            print(f"{'router, repeats':>28}: {repeat['throughput']:7.1f} req/s  p50 {repeat['p50_ms']:7.1f} ms  "
                  f"p99 {repeat['p99_ms']:7.1f} ms  errors {len(repeat['errors'])}")
            print(f"  routing decision (server-side): p50 {repeat['routing_p50_ms']:.2f} ms  "
                  f"p99 {repeat['routing_p99_ms']:.2f} ms")
            metrics = httpx.get(f"{base_url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
            print("  " + "  ".join(ln for ln in metrics.splitlines() if ln.startswith("routerops_routing_cache_total")))
            print(f"\ntotal errors: {total_errors}")
            return 0 if total_errors == 0 else 2
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


if __name__ == "__main__":
    sys.exit(main())
