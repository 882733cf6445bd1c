"""Load test of the API with locust (headless): N concurrent clients against the `router` strategy over
the replay pair, with a baseline in the same run that calls the weak model directly
(`model=<weak name>`), so the ratio router/direct shows what routing adds.

    python benchmarks/bench_serving_load.py [--clients 50] [--requests 300] [--embedder static|onnx|minilm]
    python benchmarks/bench_serving_load.py --clients 30 --mixed 60   # every available strategy, 60 s

Goals (issue 12), at 50 clients on unseen prompts: router throughput >= 80% of weak direct, p99
latency added by routing <= 20 ms, 0 errors.

The server runs as a real `routerops serve` subprocess (its own process, as in production, uvicorn on
127.0.0.1) over a temporary data dir: migrated SQLite, a tiny MF router trained on tests/fixtures/router
with the chosen embedder and approved as champion (a static/ONNX embedder travels inside the router:
the server is not told where the built folder is). Prompts and recorded answers: AlpacaEval's Mixtral
(weak) and GPT-4 Turbo (strong) outputs from ../shared/data when present, else the test fixture pair.
The load generator is locust (benchmarks/locust_chat.py) in its own process; latencies are measured
client-side per request, routing latency server-side (the `routerops` field).

The router phases hand out each prompt once, so the routing cache never answers them: they measure
the embedder path (the replay pair only knows recorded prompts, so prompts cannot be made unique by
editing them).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ROUTEROPS_SHARED_DATA", ROOT.parent / "shared" / "data"))
KEY = "bench-key-" + os.urandom(8).hex()
ADMIN_KEY = "bench-admin-" + os.urandom(8).hex()


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


def prepare(data_dir: Path, embedder: str = "static", static_path: str | None = None,
            onnx_path: str | None = None) -> dict[str, str]:
    """Data dir with a router trained on `embedder` and approved; returns the server's environment."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from routerops import registry
    from routerops.db import migrate, session_scope
    from routerops.db.models import PreferenceLog
    from routerops.settings import Settings
    from routerops.text import prompt_hash
    from routerops.training.train_router import train_router

    outputs = SHARED / "alpaca_eval" / "model_outputs"
    if (outputs / "gpt4_1106_preview.json.gz").is_file():
        weak_file, strong_file = outputs / "Mixtral-8x7B-Instruct-v0.1.json.gz", outputs / "gpt4_1106_preview.json.gz"
    else:
        weak_file = strong_file = ROOT / "tests" / "fixtures" / "serving" / "recorded_pair.jsonl"
    env = {"ROUTEROPS_DATA_DIR": str(data_dir), "ROUTEROPS_WEAK_BACKEND": "replay",
           "ROUTEROPS_STRONG_BACKEND": "replay", "ROUTEROPS_WEAK_MODEL": "mixtral-8x7b-instruct-v0.1",
           "ROUTEROPS_STRONG_MODEL": "gpt-4-1106-preview", "ROUTEROPS_WEAK_REPLAY_FILE": str(weak_file),
           "ROUTEROPS_STRONG_REPLAY_FILE": str(strong_file), "ROUTEROPS_API_KEYS": KEY, "ROUTEROPS_ADMIN_API_KEYS": ADMIN_KEY,
           "ROUTEROPS_RELOAD_INTERVAL_S": "5"}
    backend = {"minilm": "sentence-transformers"}.get(embedder, embedder)
    settings = Settings(data_dir=data_dir, embedding_backend=backend,
                        embedding_static_path=static_path or Settings().resolved_static_embedder_path,
                        embedding_onnx_path=onnx_path or Settings().resolved_onnx_embedder_path)
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


def locust_phase(base_url: str, model: str, prompts: list[str], clients: int, tmp: Path,
                 run_time_s: int | None = None) -> dict:
    """One request per item of `prompts`, from `clients` locust users at once (headless, own process);
    with run_time_s, the prompts cycle for that long instead. `model` may list several, comma-separated."""
    tag = f"{model.replace('/', '_').replace(',', '+')[:60]}-{clients}-{time.monotonic_ns()}"
    prompts_file, out_file = tmp / f"prompts-{tag}.json", tmp / f"out-{tag}.json"
    prompts_file.write_text(json.dumps(prompts))
    env = os.environ | {"BENCH_MODEL": model, "BENCH_KEY": KEY, "BENCH_PROMPTS": str(prompts_file),
                        "BENCH_OUT": str(out_file), **({"BENCH_CYCLE": "1"} if run_time_s else {})}
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "benchmarks" / "locust_chat.py"), "--headless",
           "-u", str(clients), "-r", str(clients), "--host", base_url, "--run-time", f"{run_time_s or 600}s",
           "--only-summary", "--skip-log", "--loglevel", "ERROR"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=(run_time_s or 600) + 60)
    if not out_file.is_file():
        raise RuntimeError(f"locust wrote no results ({proc.returncode}): {proc.stderr[-2000:]}")
    res = json.loads(out_file.read_text())
    lat = [v / 1000 for v in res["latency_ms"]]
    routing = [v / 1000 for v in res["routing_ms"]]
    wall = (res["t1"] - res["t0"]) if res["t0"] else float("nan")
    return {"model": model, "requests": len(lat), "wall_s": wall, "throughput": len(lat) / wall,
            "p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000,
            "mean_ms": statistics.fmean(lat) * 1000 if lat else float("nan"),
            "routing_p50_ms": pct(routing, 50) * 1000 if routing else None,
            "routing_p99_ms": pct(routing, 99) * 1000 if routing else None,
            "strong_share": sum(m == "gpt-4-1106-preview" for m in res["models"]) / max(1, len(res["models"])),
            "models_chosen": dict(Counter(res["models"])),
            "errors": res["errors"] + ([f"{len(prompts) - len(lat)} requests never completed"]
                                       if len(lat) < len(prompts) and not run_time_s else [])}


def mixed_run(base_url: str, prompts: list[str], clients: int, seconds: int, tmp: Path, out: Path | None) -> int:
    """Every model that serves here, mixed: a listed strategy that answers a designed 503 to a first request
    (e.g. cascade without a calibrated config) is left out and named, not counted as errors."""
    auth = {"Authorization": f"Bearer {KEY}"}
    models = httpx.get(f"{base_url}/v1/models", headers=auth, timeout=10).json()
    available = []
    for m in models["data"]:
        r = httpx.post(f"{base_url}/v1/chat/completions", headers=auth, timeout=120,
                       json={"model": m["id"], "messages": [{"role": "user", "content": prompts[0]}], "max_tokens": 16})
        if r.status_code == 200:
            available.append(m["id"])
        else:
            print(f"left out {m['id']}: {r.status_code} {r.json()['error']['message'][:120]}")
    r = locust_phase(base_url, ",".join(available), prompts, clients, tmp, run_time_s=seconds)
    print(f"\n== mixed: {clients} clients, {seconds} s, models {available} ==")
    print(f"requests {r['requests']}  {r['throughput']:.1f} req/s  p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms")
    print(f"answered by: {r['models_chosen']}")
    for e in r["errors"][:5]:
        print("  error:", e)
    print(f"unexpected errors: {len(r['errors'])} (goal 0)")
    if out:
        out.write_text(json.dumps(r, indent=2))
    return 0 if not r["errors"] else 2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[50])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--embedder", choices=["static", "onnx", "minilm"], default="static",
                    help="what the champion router is trained on (static/onnx: built folders, see README)")
    ap.add_argument("--static-path", default=None, help="default: the configured static embedder folder")
    ap.add_argument("--onnx-path", default=None, help="default: the configured ONNX embedder folder")
    ap.add_argument("--json", type=Path, default=None, help="write the results here too")
    ap.add_argument("--mixed", type=int, default=None, metavar="SECONDS",
                    help="instead: one run of SECONDS with every available strategy and model mixed "
                         "(each request picks one), the first --clients value; reports the error count")
    args = ap.parse_args()
    if args.json:
        args.json = args.json.resolve()
    static_path = str(Path(args.static_path).resolve()) if args.static_path else None
    onnx_path = str(Path(args.onnx_path).resolve()) if args.onnx_path else None

    with tempfile.TemporaryDirectory(prefix="routerops-bench-") as tmp:
        os.chdir(tmp)
        env = prepare(Path(tmp) / "data", args.embedder, static_path, onnx_path)
        prompts = load_prompts(Path(env.pop("_PROMPTS_FILE")))
        port = 18000 + os.getpid() % 1000
        server_env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEROPS_")} | env
        log = open(Path(tmp) / "server.log", "w")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "routerops.orchestration.cli", "serve", "--port", str(port),
                                 "--log-level", "warning"], env=server_env, stdout=log, stderr=log)
        base_url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    health = httpx.get(f"{base_url}/admin/status", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                                       timeout=2).json()
                    if health.get("router_version"):
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    print((Path(tmp) / "server.log").read_text()[-3000:])
                    return 1
                time.sleep(0.5)
            print(f"server up: router v{health['router_version']} ({args.embedder} embedder), alpha "
                  f"{health['alpha']}, {len(prompts)} prompts; load average {os.getloadavg()[0]:.1f} on "
                  f"{os.cpu_count()} cores", flush=True)
            weak = env["ROUTEROPS_WEAK_MODEL"]
            if args.mixed:
                return mixed_run(base_url, prompts, args.clients[0], args.mixed, Path(tmp), args.json)
            fresh = FreshPrompts(prompts)
            locust_phase(base_url, "router", fresh.take(40), 4, Path(tmp))  # warm-up: embedder, connections
            locust_phase(base_url, weak, sample(prompts, 40), 4, Path(tmp))
            total_errors = 0
            report = []
            for clients in args.clients:
                direct = locust_phase(base_url, weak, sample(prompts, args.requests), clients, Path(tmp))
                routed = locust_phase(base_url, "router", fresh.take(args.requests), clients, Path(tmp))
                total_errors += len(direct["errors"]) + len(routed["errors"])
                ratio = routed["throughput"] / direct["throughput"]
                added = routed["p99_ms"] - direct["p99_ms"]
                report.append({"clients": clients, "direct": direct, "router": routed, "throughput_ratio": ratio,
                               "p99_added_ms": added})
                print(f"\n== {clients} concurrent clients (locust), {args.requests} requests each phase ==")
                for r in (direct, routed):
                    print(f"{r['model']:>28}: {r['throughput']:7.1f} req/s  p50 {r['p50_ms']:7.1f} ms  "
                          f"p99 {r['p99_ms']:7.1f} ms  errors {len(r['errors'])}  strong share "
                          f"{r['strong_share']:.2f}")
                print(f"  routing decision (server-side): p50 {routed['routing_p50_ms']:.2f} ms  "
                      f"p99 {routed['routing_p99_ms']:.2f} ms")
                print(f"  router/direct throughput {ratio:.2f}x (goal >= 0.80)  p99 added by routing "
                      f"{added:+.1f} ms (goal <= 20)  p50 added {routed['p50_ms'] - direct['p50_ms']:+.1f} ms")
                for e in (direct["errors"] + routed["errors"])[:3]:
                    print("  error:", e)
            print(f"\ntotal errors: {total_errors} (goal 0)")
            if args.json:
                args.json.write_text(json.dumps({"embedder": args.embedder, "load_average": os.getloadavg(),
                                                 "runs": report}, indent=2))
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
