"""Regenerates docs/screenshots/evidently-per-model.png (docs/monitoring.md "Per-model panels").

A fleet of four models replayed from AlpacaEval recordings (Mixtral-8x7B-Instruct-v0.1 the weak,
gpt4_1106_preview the strong, gpt-3.5-turbo-1106 and claude-2.1 besides; list prices per 1M tokens), a
golden set of 40 AlpacaEval prompts labelled by the GPT-4 Turbo judge (Mixtral vs GPT-4 Turbo), the
Evidently UI started as `routerops up` starts it, and four rounds, each: 40 requests through the real
API naming fleet models in a round's mix (the request log: share, USD, latency), the judge's real
AlpacaEval verdicts on Mixtral vs GPT-4 Turbo for 15 other prompts stored as judged exploration pairs
(what `routerops judge-exploration` stores), then `routerops monitor run --judge-annotations` (the
other models' golden answers judged by the same judge's recorded verdicts against GPT-4 Turbo). In
round 3 gpt-3.5-turbo-1106's provider drifts to its "concise" answers (same fleet name, upstream
gpt-3.5-turbo-1106_concise, judged on its own verdicts); in round 4 the operator moves most of its
traffic to claude-2.1. The window of the live figures is one minute, so each round reads its own traffic.

    PYTHONPATH=. .venv/bin/python docs/screenshots/capture_per_model.py   # shared data + Debian's chromium
"""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("ROUTEROPS_SHARED_DATA", REPO.parent / "shared" / "data"))
if not DATA.is_dir():
    DATA = Path("/work/shared/data")
AE = DATA / "alpaca_eval"
OUT = REPO / "docs" / "screenshots"
WORK = Path(tempfile.mkdtemp(prefix="routerops-per-model."))
WEAK, STRONG, MID, DEAR = "Mixtral-8x7B-Instruct-v0.1", "gpt4_1106_preview", "gpt-3.5-turbo-1106", "claude-2.1"
PRICES = {WEAK: (0.6, 0.6), MID: (1.0, 2.0), DEAR: (8.0, 24.0), STRONG: (10.0, 30.0)}
ANNOTATIONS = [AE / "annotations/alpaca_eval_gpt4_turbo_fn.jsonl.gz",
               AE / "annotations/weighted_alpaca_eval_gpt4_turbo.jsonl.gz"]
MIXES = [{WEAK: 0.5, MID: 0.3, DEAR: 0.1, STRONG: 0.1}, {WEAK: 0.5, MID: 0.3, DEAR: 0.1, STRONG: 0.1},
         {WEAK: 0.5, MID: 0.3, DEAR: 0.1, STRONG: 0.1}, {WEAK: 0.5, MID: 0.05, DEAR: 0.35, STRONG: 0.1}]
os.environ.update({"ROUTEROPS_DATA_DIR": str(WORK / "data"), "DO_NOT_TRACK": "1", "ROUTEROPS_ALLOW_ANONYMOUS": "true",
                   "ROUTEROPS_FLEET_FILE": str(WORK / "fleet.yaml"), "ROUTEROPS_EXPLORE_SHARE": "0",
                   "ROUTEROPS_MONITOR_MODEL_WINDOW_HOURS": str(1 / 60), "MLFLOW_TRACKING_URI":
                   f"sqlite:///{WORK / 'data' / 'mlflow.db'}"})
sys.path.insert(0, str(REPO / "tests"))


def write_fleet(mid_upstream: str) -> None:
    lines = ["models:"]
    for name in (WEAK, MID, DEAR, STRONG):
        upstream = mid_upstream if name == MID else name
        p_in, p_out = PRICES[name]
        lines.append(f"  - {{name: {name}, backend: replay, model: {upstream}, replay_file: "
                     f"{AE / 'model_outputs' / (upstream + '.json.gz')}, price_in: {p_in}, price_out: {p_out}}}")
    lines += [f"weak: {WEAK}", f"strong: {STRONG}"]
    (WORK / "fleet.yaml").write_text("\n".join(lines) + "\n")


def rops(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "routerops.orchestration.cli", *args], cwd=WORK, text=True,
                         capture_output=True, env=dict(os.environ))
    if out.returncode:
        raise SystemExit(f"routerops {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def judged_pairs(prompts: list[str]) -> list[tuple[str, str, str, str]]:
    """(prompt, weak answer, strong answer, winner) from the judge's verdicts on Mixtral vs GPT-4 Turbo."""
    from routerops.monitoring.golden import read_model_outputs, winner_of
    from routerops.monitoring.quality import read_judge_labels
    from routerops.text import prompt_hash

    _, weak = read_model_outputs(AE / f"model_outputs/{WEAK}.json.gz")
    _, strong = read_model_outputs(AE / f"model_outputs/{STRONG}.json.gz")
    labels = read_judge_labels(ANNOTATIONS[:1], WEAK, STRONG)
    return [(p, weak[h], strong[h], winner_of(labels[h][0])) for p in prompts
            if (h := prompt_hash(p)) in labels and h in weak]


def one_round(i: int, settings, prompts: list[str], pairs: list, rng: random.Random) -> None:  # noqa: ANN001
    from serving_helpers import running_server

    from routerops.db import session_scope
    from routerops.db.models import ExplorationPair
    from routerops.serving.app import create_app
    from routerops.text import prompt_hash

    write_fleet(f"{MID}_concise" if i >= 2 else MID)
    mix = MIXES[i]
    with running_server(create_app(settings)) as base:
        for p in rng.sample(prompts, 40):
            model = rng.choices(list(mix), weights=list(mix.values()))[0]
            r = httpx.post(f"{base}/v1/chat/completions", timeout=60,
                           json={"model": model, "messages": [{"role": "user", "content": p}]})
            r.raise_for_status()
    with session_scope(settings) as s:
        for j, (p, w, st, winner) in enumerate(pairs[i * 15:(i + 1) * 15]):
            s.add(ExplorationPair(request_id=f"round{i}-{j}", prompt=p, prompt_hash=prompt_hash(p), served_role="weak",
                                  weak_model=WEAK, strong_model=STRONG, weak_answer=w, strong_answer=st,
                                  explore_propensity=1.0, status="judged", winner=winner,
                                  judge="gpt4_turbo (AlpacaEval)", judged_at=datetime.now(UTC)))
    out = rops("monitor", "run", "--golden", str(WORK / "golden.jsonl"), "--no-recalibrate", "--judge-annotations",
               str(ANNOTATIONS[0]), "--judge-annotations", str(ANNOTATIONS[1]))
    print(f"--- round {i + 1}\n{out}", flush=True)
    (OUT / "monitor-per-model.txt").write_text(out)


def main() -> None:
    from routerops.monitoring.golden import record_from_alpaca_eval, write_golden
    from routerops.settings import get_settings

    write_fleet(MID)
    rops("init")
    traces = record_from_alpaca_eval(AE / f"model_outputs/{WEAK}.json.gz", AE / f"model_outputs/{STRONG}.json.gz",
                                     ANNOTATIONS[:1], limit=40)
    write_golden(WORK / "golden.jsonl", traces)
    with gzip.open(AE / f"model_outputs/{STRONG}.json.gz", "rt") as fh:
        prompts = [r["instruction"] for r in json.load(fh)][40:400]
    rng = random.Random(0)
    pairs = judged_pairs(prompts[200:])
    port = 8765
    ui = subprocess.Popen([sys.executable, "-m", "routerops.orchestration.cli", "monitor", "ui", "--port", str(port)],
                          cwd=WORK, stdout=(WORK / "ui.log").open("w"), stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                httpx.get(url, timeout=5).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(1)
        os.environ["ROUTEROPS_EVIDENTLY_URL"] = url
        settings = get_settings()
        for i in range(len(MIXES)):
            if i:
                time.sleep(65)  # the next round's window holds its own traffic only
            one_round(i, settings, prompts[:200], pairs, rng)
        project = httpx.get(f"{url}/api/projects", timeout=30).json()[0]["id"]
        shot = WORK / "full.png"
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--window-size=1600,7000", "--virtual-time-budget=20000", f"--screenshot={shot}",
                        f"{url}/projects/{project}"], check=True, capture_output=True)
        print(f"wrote {shot}")
    finally:
        ui.terminate()


if __name__ == "__main__":
    main()
