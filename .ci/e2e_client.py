"""The user's side of .ci/compose-e2e: talks to the running compose stack over its published ports.

--stage serving:    the API has loaded the approved champion, a chat completion through the openai
                    client with the `router` strategy is routed by it, MLflow's UI and registry show it,
                    /metrics counts the request.
--stage monitoring: after `routerops monitor run`, the Evidently UI lists the monitoring project with
                    its snapshots, and /metrics still answers.
Exits non-zero, naming what was wrong, on the first failed check."""

from __future__ import annotations

import argparse
import json
import sys
import time

import httpx
from openai import OpenAI

ROUTER_MODEL = "mf-router"
EVIDENTLY_PROJECT = "routerops monitoring"


def check(ok: bool, what: str) -> None:
    if not ok:
        sys.exit(f"e2e: FAILED: {what}")
    print(f"e2e: ok: {what}")


def wait_for_champion(api: str, version: str, admin_key: str, timeout_s: float = 120) -> dict:
    # The API swaps in a new champion on its reload check (ROUTEROPS_RELOAD_INTERVAL_S, 15 s).
    # /healthz only says ok/degraded; the router version is on /admin/status (admin keys).
    deadline = time.monotonic() + timeout_s
    while True:
        health = httpx.get(f"{api}/admin/status", headers={"Authorization": f"Bearer {admin_key}"},
                           timeout=10).json()
        if health.get("router_version") == version or time.monotonic() > deadline:
            return health
        time.sleep(3)


def scrape_metrics(api: str, key: str) -> str:
    response = httpx.get(f"{api}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    check(response.status_code == 200, f"GET /metrics -> {response.status_code}")
    return response.text


def serving(args: argparse.Namespace) -> None:
    health = wait_for_champion(args.api, "1", args.admin_key)
    print("e2e: /admin/status", json.dumps({k: health.get(k) for k in ("status", "router_version", "routing", "alpha")}))
    check(health.get("router_version") == "1", "the API serves mf-router version 1 after `approve 1`")

    client = OpenAI(base_url=f"{args.api}/v1", api_key=args.key, timeout=600, max_retries=0)
    started = time.monotonic()
    reply = client.chat.completions.create(
        model="router", max_tokens=24, messages=[{"role": "user", "content": "What is 2+2? Answer briefly."}])
    meta = reply.model_extra["routerops"]
    print(f"e2e: chat completion in {time.monotonic() - started:.1f}s: {reply.choices[0].message.content!r}")
    print("e2e: routerops", json.dumps({k: meta.get(k) for k in
                                         ("model", "strategy", "p_strong_wins", "alpha", "router_version", "reason")}))
    check(meta["strategy"] == "router" and meta["router_version"] == "1", "routed by the router strategy, version 1")
    check(isinstance(meta["p_strong_wins"], float), "the router scored the prompt")
    check(bool(reply.choices[0].message.content), "the answer is not empty")

    ui = httpx.get(f"{args.mlflow}/", timeout=30)
    check(ui.status_code == 200 and "<html" in ui.text.lower(), f"MLflow UI answers ({ui.status_code})")
    alias = httpx.get(f"{args.mlflow}/api/2.0/mlflow/registered-models/alias",
                      params={"name": ROUTER_MODEL, "alias": "champion"}, timeout=30)
    check(alias.status_code == 200, f"MLflow registry has {ROUTER_MODEL}@champion ({alias.status_code})")
    version = alias.json()["model_version"]
    print("e2e: mlflow", json.dumps({"name": version["name"], "version": version["version"],
                                     "aliases": version.get("aliases"), "status": version.get("status")}))
    check(version["version"] == "1" and "champion" in version.get("aliases", []), "champion is version 1")

    text = scrape_metrics(args.api, args.key)
    check('routerops_router_version_info{version="1"}' in text, "/metrics reports router version 1")
    requests = [line for line in text.splitlines() if line.startswith("routerops_") and 'strategy="router"' in line]
    print("e2e: metrics", *requests[:4], sep="\n  ")
    check(bool(requests), "/metrics counts the router request")


def monitoring(args: argparse.Namespace) -> None:
    projects = None
    for path in ("/api/projects", "/api/v2/projects"):
        response = httpx.get(f"{args.evidently}{path}", timeout=30)
        if response.status_code == 200:
            projects = response.json()
            break
    check(projects is not None, "Evidently UI lists its projects")
    names = {p["name"]: p["id"] for p in projects}
    print("e2e: evidently projects", sorted(names))
    check(EVIDENTLY_PROJECT in names, f"Evidently lists the project {EVIDENTLY_PROJECT!r}")
    snapshots = httpx.get(f"{args.evidently}{path}/{names[EVIDENTLY_PROJECT]}/snapshots", timeout=30)
    count = len(snapshots.json()) if snapshots.status_code == 200 else 0
    check(count >= 1, f"the project has the monitor run's snapshots ({count})")
    text = scrape_metrics(args.api, args.key)
    check("routerops_" in text, "/metrics scraped after the monitor run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", choices=("serving", "monitoring"), required=True)
    parser.add_argument("--api", required=True)
    parser.add_argument("--mlflow", required=True)
    parser.add_argument("--evidently", required=True)
    parser.add_argument("--key", required=True, help="a user API key")
    parser.add_argument("--admin-key", required=True, help="an admin API key (GET /admin/status)")
    args = parser.parse_args()
    serving(args) if args.stage == "serving" else monitoring(args)


if __name__ == "__main__":
    main()
