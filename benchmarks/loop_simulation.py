"""The whole loop, simulated (issue 24, item 7; docs/exploration-and-ope.md).

A held-out shared source (default: MMLU-Pro from ../shared/data/scores, which the prior router never
saw) arrives as traffic through the real API (uvicorn, `model: router`), answered by replay backends
of that source's recorded outcomes for the served pair. Exploration runs at the default share
(ROUTEROPS_EXPLORE_SHARE = 0.02); a judge that is an honest local HTTP server answering from the
recorded outcomes labels the pairs (the scheduler's judge job); every simulated day ends with the
scheduled retrain (`retrain_router_job`: judge, retrain, compare with OPE), and the challenger is
approved when its doubly robust OPE PGR is at least the champion's (the person's decision, by rule).
Day by day it records the live router's PGR (true, on all held-out outcomes; and estimated on the
exploration pairs) and, per challenger, the OPE estimate against the PGR measured on all held-out
outcomes (the OPE goal: inside its CI in >= 90% of seeded runs). A plot and the figures are logged
to MLflow (experiment `loop-simulation` in the first seed's store) and written to --out.

    PYTHONPATH=. nice -n 10 python benchmarks/loop_simulation.py --seeds 3 --days 4 --requests-per-day 2500

Each seed: its own store, traffic sample and exploration draws. Replay answers are neutral texts
("[<model> recorded answer <n>]"); only the judge knows their recorded scores.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import sys
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _store import fresh_store  # noqa: E402

from routerops.backends.outcome_judge_server import OutcomeJudge  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ADMIN_KEY = "sim-admin-key-0123456789"
USER_KEY = "sim-user-key-0123456789"


def load_source(path: Path, weak: str, strong: str) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """(prompts, categories, weak scores, strong scores) for prompts both models were scored on."""
    by: dict[str, dict] = defaultdict(dict)
    meta: dict[str, tuple[str, str]] = {}
    with gzip.open(path, "rt") as fh:
        for line in fh:
            r = json.loads(line)
            if r["model"] in (weak, strong):
                by[r["prompt_id"]][r["model"]] = float(r["score"])
                meta[r["prompt_id"]] = (r["prompt"], r.get("category") or "none")
    ids = sorted(k for k, v in by.items() if len(v) == 2)
    seen, keep = set(), []
    for k in ids:  # one row per distinct prompt text (the replay backend answers by text)
        if meta[k][0] not in seen:
            seen.add(meta[k][0])
            keep.append(k)
    return ([meta[k][0] for k in keep], [meta[k][1] for k in keep],
            np.asarray([by[k][weak] for k in keep]), np.asarray([by[k][strong] for k in keep]))


def true_pgr(scores: np.ndarray, alpha: float, wq: np.ndarray, sq: np.ndarray) -> tuple[float, float]:
    """(PGR, strong share) of routing by scores >= alpha on every held-out prompt."""
    s = scores >= alpha
    gain = float((s * (sq - wq)).sum())
    return gain / float((sq - wq).sum()), float(s.mean())


class Server:
    """The real API in a thread (uvicorn on a free port)."""

    def __init__(self, app) -> None:  # noqa: ANN001
        import socket

        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("API did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def run_seed(seed: int, args: argparse.Namespace, out: Path) -> dict:
    data_dir = out / f"store-seed{seed}"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    os.environ.update({
        "ROUTEROPS_WEAK_BACKEND": "replay", "ROUTEROPS_STRONG_BACKEND": "replay",
        "ROUTEROPS_WEAK_MODEL": args.weak, "ROUTEROPS_STRONG_MODEL": args.strong,
        "ROUTEROPS_ROUTER_WEAK_NAME": args.router_weak or args.weak,
        "ROUTEROPS_ROUTER_STRONG_NAME": args.router_strong or args.strong,
        "ROUTEROPS_REPLAY_FILE": str(out / "replay.jsonl"),
        "ROUTEROPS_API_KEYS": USER_KEY, "ROUTEROPS_ADMIN_API_KEYS": ADMIN_KEY,
        # the scheduled retrain's rule: retrain once this many new label rows arrived (exploration pairs)
        "ROUTEROPS_RETRAIN_MIN_NEW_ROWS": str(args.retrain_min_new_rows), "ROUTEROPS_RETRAIN_LOSO": "false",
        "ROUTEROPS_OPE_WINDOW_HOURS": "10000", "ROUTEROPS_RELOAD_INTERVAL_S": "3600",
        "ROUTEROPS_EMBEDDING_STATIC_PATH": str(out / "static-embedder"),
        "ROUTEROPS_GOLDEN_SET": str(out / "no-golden.jsonl"),
        # list prices (shared/data/prices): gpt-4o 2.5/10, llama-3-8b-instruct 0.1/0.1 USD per 1M tokens
        "ROUTEROPS_WEAK_PRICE_IN": "0.1", "ROUTEROPS_WEAK_PRICE_OUT": "0.1",
        "ROUTEROPS_STRONG_PRICE_IN": "2.5", "ROUTEROPS_STRONG_PRICE_OUT": "10",
    })
    if args.explore_share is not None:
        os.environ["ROUTEROPS_EXPLORE_SHARE"] = str(args.explore_share)
    settings, _ = fresh_store(data_dir, "loop-sim")
    from routerops import registry
    from routerops.importers.core import import_file
    from routerops.models.router import load_router
    from routerops.monitoring.exploration import load_traffic
    from routerops.monitoring.golden import score_prompts
    from routerops.monitoring.promotion import Comparison
    from routerops.ope import pgr_on_pairs
    from routerops.orchestration.scheduler import retrain_router_job
    from routerops.serving.app import create_app
    from routerops.training.train_router import train_router

    prompts, cats, wq, sq = args.source_data
    rng = np.random.default_rng(seed)
    random.seed(seed)
    t0 = time.perf_counter()
    for prior in args.prior:
        import_file(settings, "scores", SHARED / "scores" / f"{prior}.jsonl.gz", progress=False)
    first = train_router(settings, register=True, progress=False, seed=seed)
    registry.approve(settings.router_model_name, first.model_version, approved_by="loop-simulation", settings=settings)
    print(f"[seed {seed}] prior router v{first.model_version} in {time.perf_counter() - t0:.0f}s", flush=True)

    def router_of(version: str):  # noqa: ANN202
        return load_router(f"models:/{settings.router_model_name}/{version}", settings)

    def live_alpha_of(router) -> float:  # noqa: ANN001
        from routerops.alpha import live_alpha
        from routerops.db import session_scope

        with session_scope(settings) as s:
            return live_alpha(s, settings, router).alpha

    champion_v = first.model_version
    champion = router_of(champion_v)
    champ_alpha = live_alpha_of(champion)
    champ_scores = score_prompts(champion, prompts, settings)
    days, challengers = [], []
    judge_scores = {f"[{args.weak} recorded answer {i}]": float(w) for i, w in enumerate(wq)}
    judge_scores.update({f"[{args.strong} recorded answer {i}]": float(s) for i, s in enumerate(sq)})
    import httpx

    with OutcomeJudge(judge_scores) as judge:
        os.environ["ROUTEROPS_JUDGE_BASE_URL"] = judge.base_url
        os.environ["ROUTEROPS_JUDGE_MODEL"] = "outcome-judge"
        from routerops.settings import get_settings

        settings = get_settings()
        app = create_app(settings)
        with Server(app) as api, httpx.Client(base_url=api.url, timeout=60,
                                              headers={"Authorization": f"Bearer {USER_KEY}"}) as http:
            for day in range(1, args.days + 1):
                since = datetime.now(UTC)
                latencies = []
                picks = rng.integers(0, len(prompts), args.requests_per_day)
                for i in picks:
                    t = time.perf_counter()
                    r = http.post("/v1/chat/completions", json={
                        "model": "router", "messages": [{"role": "user", "content": prompts[i]}],
                        "metadata": {"category": cats[i]}})
                    r.raise_for_status()
                    latencies.append((time.perf_counter() - t) * 1000)
                app.state.serving.explorer.wait_idle(120)
                # the day's end: the scheduled retrain (judges the pairs first, then trains and compares)
                job = retrain_router_job(settings)
                traffic = load_traffic(settings, since)
                live_true, share_true = true_pgr(champ_scores, champ_alpha, wq, sq)
                pairs = traffic.observed
                est = pgr_on_pairs(traffic.served_strong[pairs], traffic.d[pairs], 1.0 / traffic.q[pairs],
                                   n_boot=settings.ope_bootstrap, seed=seed)
                lat = np.asarray(latencies)
                from sqlalchemy import select

                from routerops.db import session_scope
                from routerops.db.models import ExplorationPair, RequestLog

                with session_scope(settings) as s:
                    logged = s.execute(select(RequestLog.latency_ms, RequestLog.extra)
                                       .where(RequestLog.created_at >= since, RequestLog.strategy == "router")).all()
                    cost = s.execute(select(ExplorationPair.cost_usd).where(ExplorationPair.created_at >= since)).all()
                explored = np.asarray([bool((e or {}).get("explored")) for _, e in logged])
                server_ms = np.asarray([m for m, _ in logged])
                row = {"day": day, "champion": champion_v, "alpha": champ_alpha, "requests": len(picks),
                       "explored": int(explored.sum()), "judged_pairs": int(pairs.sum()),
                       "served_share": float(traffic.served_strong.mean()), "share_true": share_true,
                       "live_pgr_true": live_true, "live_pgr_est": est.value, "live_pgr_lo": est.lo,
                       "live_pgr_hi": est.hi, "client_ms_p50": float(np.median(lat)),
                       "server_ms_p50_explored": float(np.median(server_ms[explored])) if explored.any() else None,
                       "server_ms_p50_not_explored": float(np.median(server_ms[~explored])),
                       "exploration_cost_usd": float(sum(c for (c,) in cost))}
                cmp = job.get("comparison")
                if cmp and cmp.get("ope", {}).get("challenger"):
                    ver = cmp["challenger_version"]
                    ch = router_of(ver)
                    ch_alpha = cmp["alphas"]["challenger"]
                    truth, ch_share = true_pgr(score_prompts(ch, prompts, settings), ch_alpha, wq, sq)
                    o = cmp["ope"]["challenger"]
                    oc = cmp["ope"].get("champion", {})
                    c = {"day": day, "version": ver, "alpha": ch_alpha, "pgr_true": truth, "share_true": ch_share,
                         "n_requests": o["n_requests"], "n_pairs": o["n_pairs"], "share_est": o["strong_share"],
                         "ips": o["pgr_ips"], "dr": o["pgr_dr"],
                         "covered_ips": _covers(o["pgr_ips"], truth), "covered_dr": _covers(o["pgr_dr"], truth),
                         "champion_dr": oc.get("pgr_dr"), "verdict": cmp["verdict"]}
                    approve = (o["pgr_dr"]["value"] is not None and oc.get("pgr_dr", {}).get("value") is not None
                               and o["pgr_dr"]["value"] >= oc["pgr_dr"]["value"])
                    c["approved"] = bool(approve)
                    c["redraws"] = redraw_coverage(settings, traffic_all := load_traffic(settings), prompts, wq, sq,
                                                   score_prompts(ch, traffic_prompts(traffic_all), settings) >= ch_alpha,
                                                   truth, args.redraws, seed)
                    if approve:  # the person's decision, by rule: approve on the OPE comparison
                        registry.approve(settings.router_model_name, ver, approved_by="loop-simulation",
                                         settings=settings)
                        httpx.post(f"{api.url}/admin/reload", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                                   timeout=120).raise_for_status()
                        champion_v, champion, champ_alpha = ver, ch, ch_alpha
                        champ_scores = score_prompts(champion, prompts, settings)
                    challengers.append(c)
                    md = Comparison(cmp["challenger_version"], cmp["champion_version"], cmp["alpha"],
                                    results=cmp["results"], verdict=cmp["verdict"], notes=cmp["notes"],
                                    alphas=cmp["alphas"], ope=cmp["ope"]).markdown()
                    (out / f"comparison-seed{seed}-day{day}.md").write_text(md)
                days.append(row)
                print(f"[seed {seed}] day {day}: " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                                                for k, v in row.items()}), flush=True)
                if challengers and challengers[-1]["day"] == day:
                    c = challengers[-1]
                    print(f"[seed {seed}]   challenger v{c['version']}: true PGR {c['pgr_true']:.3f}, DR "
                          f"{_fmt(c['dr'])}, IPS {_fmt(c['ips'])}, covered {c['covered_dr']}, approved "
                          f"{c['approved']}; redrawn exploration: {c['redraws']}", flush=True)
    return {"seed": seed, "days": days, "challengers": challengers, "store": str(data_dir)}


def traffic_prompts(traffic) -> list[str]:  # noqa: ANN001
    return [p or "" for p in traffic.prompts]


def redraw_coverage(settings, traffic, prompts: list[str], wq: np.ndarray, sq: np.ndarray,  # noqa: ANN001
                    target: np.ndarray, truth: float, redraws: int, seed: int) -> dict:
    """The same challenger, the same logged traffic, the exploration drawn again `redraws` times at the
    logged share (every request's pair outcome is known from the recorded outcomes): how often the
    OPE interval (routerops.ope, as the comparison computes it) covers the true PGR."""
    from routerops import ope

    index = {p: i for i, p in enumerate(prompts)}
    idx = np.asarray([index[p] for p in traffic_prompts(traffic)])
    d_all = sq[idx] - wq[idx]
    q = np.where(traffic.q > 0, traffic.q, float(settings.explore_share))
    rng = np.random.default_rng(10_000 + seed)
    hits = {"ips": 0, "dr": 0}
    n_ok = 0
    for k in range(redraws):
        obs = rng.uniform(size=len(idx)) < q
        if obs.sum() < settings.ope_min_pairs:
            continue
        n_ok += 1
        est = ope.evaluate_policy(target, obs, d_all, q, feature=traffic.p_logged, n_boot=400, seed=k)
        hits["ips"] += est.pgr_ips.covers(truth)
        hits["dr"] += est.pgr_dr.covers(truth)
    return {"redraws": n_ok, "coverage_ips": hits["ips"] / max(n_ok, 1), "coverage_dr": hits["dr"] / max(n_ok, 1)}


def _covers(est: dict, x: float) -> bool:
    return est["lo"] is not None and est["hi"] is not None and est["lo"] <= x <= est["hi"]


def _fmt(est: dict) -> str:
    if est["value"] is None:
        return "-"
    return f"{est['value']:.3f} [{est['lo']:.3f}, {est['hi']:.3f}]" if est["lo"] is not None else f"{est['value']:.3f}"


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    for k, res in enumerate(results):
        d = [r["day"] for r in res["days"]]
        ax.plot(d, [r["live_pgr_true"] for r in res["days"]], "-o", color=f"C{k}",
                label=f"seed {res['seed']}: true (all held-out outcomes)")
        est = [r["live_pgr_est"] if r["live_pgr_est"] is not None else np.nan for r in res["days"]]
        lo = [r["live_pgr_lo"] if r["live_pgr_lo"] is not None else np.nan for r in res["days"]]
        hi = [r["live_pgr_hi"] if r["live_pgr_hi"] is not None else np.nan for r in res["days"]]
        x = np.asarray(d) + 0.08 * (k + 1)
        ax.errorbar(x, est, yerr=[np.asarray(est) - np.asarray(lo), np.asarray(hi) - np.asarray(est)], fmt="s",
                    color=f"C{k}", alpha=0.5, capsize=3, label=f"seed {res['seed']}: on the day's exploration pairs")
        ax.plot(d, [r["served_share"] for r in res["days"]], ":", color=f"C{k}", alpha=0.6)
    ax.set_xlabel("day")
    ax.set_ylabel("live router PGR (dotted: served strong share = random)")
    ax.set_title("Live PGR day by day")
    ax.legend(fontsize=7)
    ax = axes[1]
    xs, k = [], 0
    for res in results:
        for c in res["challengers"]:
            k += 1
            xs.append(k)
            ax.plot([k], [c["pgr_true"]], "k_", markersize=16)
            for off, key, col in ((-0.15, "ips", "C1"), (0.15, "dr", "C2")):
                e = c[key]
                if e["value"] is None or e["lo"] is None:
                    continue
                ax.errorbar([k + off], [e["value"]], yerr=[[e["value"] - e["lo"]], [e["hi"] - e["value"]]], fmt="o",
                            color=col, capsize=3, label=key.upper() if k == 1 else None)
    ax.set_xticks(xs)
    ax.set_xlabel("challenger (seed, day in order)")
    ax.set_ylabel("challenger PGR: OPE estimate (95% CI) vs true (black)")
    ax.set_title("Off-policy evaluation of each challenger")
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="mmlu_pro", help="held-out scores source (../shared/data/scores/<S>.jsonl.gz)")
    ap.add_argument("--prior", nargs="+", default=["zeroeval"], help="scores sources the prior router trains on")
    ap.add_argument("--weak", default="Meta-Llama-3-8B-Instruct")
    ap.add_argument("--strong", default="gpt4o")
    ap.add_argument("--router-weak", default=None, help="the router's name for the weak model (default --weak)")
    # MMLU-Pro's `gpt4o` is gpt-4o-2024-05-13 (shared/data README), the spelling ZeroEval uses
    ap.add_argument("--router-strong", default="gpt-4o-2024-05-13")
    ap.add_argument("--prompts", type=int, default=0, help="held-out prompts used (0: all)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--days", type=int, default=4)
    ap.add_argument("--requests-per-day", type=int, default=2000)
    ap.add_argument("--retrain-min-new-rows", type=int, default=40)
    ap.add_argument("--redraws", type=int, default=100,
                    help="per challenger: exploration redrawn on the same logged traffic, for a tighter coverage figure")
    ap.add_argument("--explore-share", type=float, default=None, help="default: ROUTEROPS_EXPLORE_SHARE's default")
    ap.add_argument("--out", type=Path, default=Path("/tmp/routerops-loop-simulation"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    prompts, cats, wq, sq = load_source(SHARED / "scores" / f"{args.source}.jsonl.gz", args.weak, args.strong)
    if args.prompts:
        keep = np.random.default_rng(12345).permutation(len(prompts))[: args.prompts]
        prompts, cats, wq, sq = [prompts[i] for i in keep], [cats[i] for i in keep], wq[keep], sq[keep]
    args.source_data = (prompts, cats, wq, sq)
    with (args.out / "replay.jsonl").open("w") as fh:
        for i, p in enumerate(prompts):
            fh.write(json.dumps({"prompt": p, "model": args.weak, "output": f"[{args.weak} recorded answer {i}]"}) + "\n")
            fh.write(json.dumps({"prompt": p, "model": args.strong, "output": f"[{args.strong} recorded answer {i}]"}) + "\n")
    print(f"held-out {args.source}: {len(prompts)} prompts, weak {args.weak} {wq.mean():.3f}, strong {args.strong} "
          f"{sq.mean():.3f}", flush=True)
    t0 = time.perf_counter()
    results = [run_seed(seed, args, args.out) for seed in range(args.seeds)]
    ch = [c for r in results for c in r["challengers"]]
    cov_dr = float(np.mean([c["covered_dr"] for c in ch])) if ch else float("nan")
    cov_ips = float(np.mean([c["covered_ips"] for c in ch])) if ch else float("nan")
    explored_ms = [d["server_ms_p50_explored"] for r in results for d in r["days"] if d["server_ms_p50_explored"]]
    summary = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"), "source": args.source, "prior": args.prior,
        "pair": [args.weak, args.strong], "prompts": len(prompts), "seeds": args.seeds, "days": args.days,
        "requests_per_day": args.requests_per_day, "challengers": len(ch),
        "ope_coverage_dr": cov_dr, "ope_coverage_ips": cov_ips,
        "ope_goal_met": bool(ch) and cov_dr >= 0.9,
        "redraw_coverage_dr": float(np.mean([c["redraws"]["coverage_dr"] for c in ch])) if ch else None,
        "redraw_coverage_ips": float(np.mean([c["redraws"]["coverage_ips"] for c in ch])) if ch else None,
        "approved": sum(c["approved"] for c in ch),
        "mean_abs_error_dr": float(np.mean([abs(c["dr"]["value"] - c["pgr_true"]) for c in ch
                                            if c["dr"]["value"] is not None])) if ch else None,
        "mean_ci_width_dr": float(np.mean([c["dr"]["hi"] - c["dr"]["lo"] for c in ch if c["dr"]["lo"] is not None]))
        if ch else None,
        "server_ms_p50_explored": float(np.median(explored_ms)) if explored_ms else None,
        "server_ms_p50_not_explored": float(np.median([d["server_ms_p50_not_explored"] for r in results
                                                        for d in r["days"]])),
        "exploration_cost_usd": float(sum(d["exploration_cost_usd"] for r in results for d in r["days"])),
        "seconds": time.perf_counter() - t0,
    }
    (args.out / "results.json").write_text(json.dumps({"summary": summary, "runs": results}, indent=2, default=str))
    png = args.out / "loop_simulation.png"
    plot(results, png, f"routerops loop simulation {summary['date']}: held-out {args.source} ({len(prompts)} prompts), "
         f"{args.weak} vs {args.strong}, {args.seeds} seeds x {args.days} days x {args.requests_per_day} requests, "
         f"exploration share {results[0]['days'][0]['explored'] / max(1, args.requests_per_day):.3f} (day 1)")
    import mlflow

    from routerops.settings import get_settings

    os.environ["ROUTEROPS_DATA_DIR"] = results[0]["store"]
    settings = get_settings()
    mlflow.set_tracking_uri(settings.resolved_tracking_uri)
    mlflow.set_experiment("loop-simulation")
    with mlflow.start_run(run_name=f"{args.source}-{summary['date']}"):
        mlflow.log_params({k: summary[k] for k in ("source", "prompts", "seeds", "days", "requests_per_day")})
        mlflow.log_metrics({k: float(v) for k, v in summary.items()
                            if isinstance(v, int | float) and not isinstance(v, bool) and v is not None})
        for r in results:
            for d in r["days"]:
                mlflow.log_metric(f"live_pgr_true_seed{r['seed']}", d["live_pgr_true"], step=d["day"])
                if d["live_pgr_est"] is not None:
                    mlflow.log_metric(f"live_pgr_est_seed{r['seed']}", d["live_pgr_est"], step=d["day"])
        mlflow.log_artifact(str(png))
        mlflow.log_dict({"summary": summary, "runs": results}, "loop_simulation.json")
    print(json.dumps(summary, indent=2))
    print(f"plot: {png}")


if __name__ == "__main__":
    main()
