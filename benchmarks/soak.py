"""Soak test of the API (not a CI test): N concurrent clients for a long run against the `router`
strategy over the replay pair, while the champion moves between two router versions every
--swap-every seconds and the MLflow server is restarted once in the middle.

    python benchmarks/soak.py [--duration 300] [--clients 50] [--window 30] [--swap-every 30]
                              [--mlflow-down 10] [--json out.json]

Reports requests served, errors (goal 0), p50/p99 latency and the router versions served per window,
and the API process's RSS after warm-up and at the end (goal: growth < 50 MB).

Set-up (a temporary folder): migrated SQLite store; two tiny MF routers trained on tests/fixtures/router
with a small static embedder distilled here (seconds; it travels inside each router); a real
`mlflow server` subprocess on that store; a real `routerops serve` subprocess that reads the registry
through the MLflow server and reloads every 5 s. Prompts and recorded answers: AlpacaEval's Mixtral
(weak) and GPT-4 Turbo (strong) outputs from ../shared/data when present, else the test fixture pair.
Clients: httpx (async), each sending its next request as soon as the previous one is answered.
Champion swaps go to the registry's store directly (as `routerops approve` does), so a swap during
the MLflow restart lands when MLflow is back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ROUTEROPS_SHARED_DATA", ROOT.parent / "shared" / "data"))
KEY = "soak-key-" + os.urandom(8).hex()
ADMIN_KEY = "soak-admin-" + os.urandom(8).hex()
WEAK, STRONG = "mixtral-8x7b-instruct-v0.1", "gpt-4-1106-preview"


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(tmp: Path) -> tuple[dict[str, str], Path, list[str]]:
    """Store with two approved-able router versions; returns (server env, sqlite MLflow uri's db, prompts)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from routerops.backends.replay import read_records
    from routerops.db import migrate
    from routerops.importers.core import import_file
    from routerops.models.embedders.static import StaticBuildConfig, build_static
    from routerops.settings import Settings
    from routerops.training.train_router import train_router

    data_dir = tmp / "data"
    outputs = SHARED / "alpaca_eval" / "model_outputs"
    if (outputs / "gpt4_1106_preview.json.gz").is_file():
        weak_file, strong_file = outputs / "Mixtral-8x7B-Instruct-v0.1.json.gz", outputs / "gpt4_1106_preview.json.gz"
    else:
        weak_file = strong_file = ROOT / "tests" / "fixtures" / "serving" / "recorded_pair.jsonl"
    embedder = tmp / "static-small"
    print("distilling a small static embedder...", flush=True)
    build_static(embedder, StaticBuildConfig(dim=32, vocab_limit=3000))
    settings = Settings(data_dir=data_dir, embedding_backend="static", embedding_static_path=embedder)
    settings.ensure_data_dir()
    migrate.upgrade("head", settings=settings)
    import_file(settings, "native", ROOT / "tests" / "fixtures" / "router" / "prefs.jsonl", progress=False)
    for seed in (0, 1):
        print(f"training router version {seed + 1}...", flush=True)
        train_router(settings, seed=seed, max_iter=60, progress=False)
    env = {"ROUTEROPS_DATA_DIR": str(data_dir), "ROUTEROPS_WEAK_BACKEND": "replay",
           "ROUTEROPS_STRONG_BACKEND": "replay", "ROUTEROPS_WEAK_MODEL": WEAK, "ROUTEROPS_STRONG_MODEL": STRONG,
           "ROUTEROPS_WEAK_REPLAY_FILE": str(weak_file), "ROUTEROPS_STRONG_REPLAY_FILE": str(strong_file),
           "ROUTEROPS_API_KEYS": KEY, "ROUTEROPS_ADMIN_API_KEYS": ADMIN_KEY,
           "ROUTEROPS_RELOAD_INTERVAL_S": "5"}
    prompts = list(dict.fromkeys(str(r["prompt"]) for r in read_records(weak_file)))
    return env, data_dir / "mlflow.db", prompts


@dataclass
class Window:
    start: float
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    rss_mb: float | None = None


class Soak:
    def __init__(self, base_url: str, prompts: list[str], clients: int, duration: float, window: float):
        self.base_url, self.prompts, self.clients = base_url, prompts, clients
        self.duration, self.window = duration, window
        self.t0 = 0.0
        self.windows: list[Window] = []

    def current(self) -> Window:
        # a request answered after the end counts in the last window
        last = max(0, int(-(-self.duration // self.window)) - 1)
        i = min(last, int((time.monotonic() - self.t0) // self.window))
        while len(self.windows) <= i:
            self.windows.append(Window(start=len(self.windows) * self.window))
        return self.windows[i]

    async def client(self, n: int) -> None:
        rng = random.Random(n)
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(base_url=self.base_url, timeout=60, headers=headers) as http:
            while time.monotonic() - self.t0 < self.duration:
                body = {"model": "router", "messages": [{"role": "user", "content": rng.choice(self.prompts)}]}
                t = time.perf_counter()
                try:
                    r = await http.post("/v1/chat/completions", json=body)
                    seconds = time.perf_counter() - t
                    w = self.current()
                    if r.status_code != 200:
                        w.errors.append(f"{r.status_code}: {r.text[:200]}")
                        continue
                    w.latencies.append(seconds)
                    version = r.json()["routerops"]["router_version"] or "none"
                    w.versions[version] = w.versions.get(version, 0) + 1
                except httpx.HTTPError as exc:
                    self.current().errors.append(f"{type(exc).__name__}: {exc}")

    def event(self, text: str) -> None:
        line = f"{text} at {time.monotonic() - self.t0:.1f}s"
        self.current().events.append(line)
        print("  " + line, flush=True)

    async def run(self, chaos) -> None:  # noqa: ANN001 - async callable(soak)
        self.t0 = time.monotonic()
        await asyncio.gather(chaos(self), *(self.client(i) for i in range(self.clients)))


def start_mlflow(db: Path, port: int, log: Path) -> subprocess.Popen:
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    return subprocess.Popen([mlflow_bin, "server", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], stdout=subprocess.DEVNULL,
                            stderr=log.open("a"), start_new_session=True)


def status(base: str) -> dict:
    """The API's detailed status (/healthz only says ok/degraded)."""
    return httpx.get(f"{base}/admin/status", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10).json()


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen, log: Path) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == 200:
                return r.json() if "json" in r.headers.get("content-type", "") else {}
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not up within {timeout_s}s: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen, grace_s: float = 30) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> int:  # noqa: C901
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=300, help="seconds of load")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--window", type=float, default=30, help="report window, seconds")
    ap.add_argument("--swap-every", type=float, default=30, help="seconds between champion swaps")
    ap.add_argument("--mlflow-down", type=float, default=10, help="seconds MLflow stays down in the middle")
    ap.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = ap.parse_args()
    out_json = args.json.resolve() if args.json else None

    with tempfile.TemporaryDirectory(prefix="routerops-soak-") as tmp_name:
        tmp = Path(tmp_name)
        os.chdir(tmp)
        env, mlflow_db, prompts = prepare(tmp)
        settings_env = {"ROUTEROPS_DATA_DIR": env["ROUTEROPS_DATA_DIR"]}
        os.environ.update(settings_env)
        from routerops import registry
        from routerops.settings import Settings

        store = Settings(data_dir=Path(env["ROUTEROPS_DATA_DIR"]))  # the sqlite registry, as approve uses it
        registry.approve(store.router_model_name, "1", approved_by="soak", settings=store)

        mlflow_port, api_port = free_port(), free_port()
        mlflow_log, api_log = tmp / "mlflow.log", tmp / "server.log"
        mlflow_proc = start_mlflow(mlflow_db, mlflow_port, mlflow_log)
        wait_http(f"http://127.0.0.1:{mlflow_port}/health", 180, mlflow_proc, mlflow_log)
        server_env = {k: v for k, v in os.environ.items() if not k.startswith(("ROUTEROPS_", "MLFLOW_"))} | env | {
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}", "MLFLOW_DISABLE_TELEMETRY": "true"}
        api = subprocess.Popen([sys.executable, "-m", "routerops.orchestration.cli", "serve", "--port", str(api_port),
                                "--log-level", "warning"], env=server_env, cwd=ROOT, stdout=api_log.open("w"),
                               stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{api_port}"
        try:
            deadline = time.monotonic() + 180
            wait_http(f"{base}/healthz", 180, api, api_log)
            while status(base).get("router_version") != "1":
                if time.monotonic() > deadline:
                    raise RuntimeError("the API never served router version 1")
                time.sleep(0.5)
            # warm-up (embedder, connections), then the baseline RSS
            warm = Soak(base, prompts, min(args.clients, 8), 5.0, 5.0)

            async def idle(_soak) -> None:  # noqa: ANN001
                return None

            asyncio.run(warm.run(idle))
            rss_start = rss_mb(api.pid)
            print(f"API pid {api.pid} up (router v1); RSS after warm-up {rss_start:.1f} MB; {len(prompts)} prompts; "
                  f"{args.clients} clients for {args.duration:.0f}s; load average {os.getloadavg()[0]:.1f} on "
                  f"{os.cpu_count()} cores", flush=True)

            state = {"mlflow": mlflow_proc, "live": "1", "swaps": 0}

            async def chaos(soak: Soak) -> None:
                next_swap, restarted = args.swap_every, False
                next_rss = 0.0
                while (elapsed := time.monotonic() - soak.t0) < args.duration:
                    if elapsed >= next_rss:
                        soak.current().rss_mb = rss_mb(api.pid)
                        next_rss += args.window
                    if elapsed >= next_swap:
                        state["live"] = "2" if state["live"] == "1" else "1"
                        await asyncio.to_thread(registry.approve, store.router_model_name, state["live"],
                                                approved_by="soak", settings=store)
                        state["swaps"] += 1
                        soak.event(f"champion -> v{state['live']}")
                        next_swap += args.swap_every
                    if not restarted and elapsed >= args.duration / 2:
                        restarted = True
                        soak.event("MLflow stopping")
                        await asyncio.to_thread(stop, state["mlflow"], 3)  # graceful, else killed after 3 s
                        soak.event("MLflow stopped")
                        await asyncio.sleep(args.mlflow_down)
                        state["mlflow"] = start_mlflow(mlflow_db, mlflow_port, mlflow_log)
                        soak.event("MLflow starting")
                    await asyncio.sleep(0.25)

            soak = Soak(base, prompts, args.clients, args.duration, args.window)
            asyncio.run(soak.run(chaos))
            rss_end = rss_mb(api.pid)
            health = status(base)

            total = sum(len(w.latencies) for w in soak.windows)
            errors = [e for w in soak.windows for e in w.errors]
            print(f"\n{'window':>9} {'served':>7} {'req/s':>6} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} "
                  f"{'RSS MB':>7}  versions / events")
            rows = []
            for w in soak.windows:
                p50, p99 = pct(w.latencies, 50), pct(w.latencies, 99)
                span = min(args.window, args.duration - w.start)
                row = {"start_s": w.start, "served": len(w.latencies), "errors": len(w.errors),
                       "p50_ms": p50 and p50 * 1000, "p99_ms": p99 and p99 * 1000, "rss_mb": w.rss_mb,
                       "versions": w.versions, "events": w.events}
                rows.append(row)
                print(f"{w.start:>5.0f}-{w.start + span:<3.0f} {len(w.latencies):>7} {len(w.latencies) / span:>6.1f} "
                      f"{len(w.errors):>6} {row['p50_ms'] or float('nan'):>8.1f} {row['p99_ms'] or float('nan'):>8.1f} "
                      f"{w.rss_mb or float('nan'):>7.1f}  {w.versions} {'; '.join(w.events)}")
            growth = rss_end - rss_start
            print(f"\nrequests served: {total}, errors: {len(errors)} (goal 0), champion swaps: {state['swaps']}, "
                  f"MLflow restarts: 1")
            print(f"API RSS: {rss_start:.1f} MB after warm-up -> {rss_end:.1f} MB at the end "
                  f"({growth:+.1f} MB, goal < 50)")
            print(f"final /healthz: status {health['status']}, router v{health['router_version']} "
                  f"(live champion v{state['live']}), last reload error {health['last_reload_error']}")
            for e in errors[:5]:
                print("  error:", e)
            if out_json:
                out_json.write_text(json.dumps({"clients": args.clients, "duration_s": args.duration,
                                                "served": total, "errors": len(errors), "error_examples": errors[:20],
                                                "rss_start_mb": rss_start, "rss_end_mb": rss_end, "windows": rows,
                                                "swaps": state["swaps"], "final_health": health,
                                                "load_average": os.getloadavg()}, indent=2))
            ok = not errors and growth < 50 and health["router_version"] == state["live"]
            return 0 if ok else 2
        finally:
            stop(api)
            stop(state["mlflow"] if "state" in locals() else mlflow_proc)


if __name__ == "__main__":
    sys.exit(main())
