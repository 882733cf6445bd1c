"""Locust user for bench_serving_load.py: POST /v1/chat/completions with prompts handed out once each
(one shared iterator across all users: no prompt is asked twice, so the routing cache never answers).
The run ends when the prompts run out and the last user stops.

Environment: BENCH_MODEL (router | a model name | several, comma-separated: each request picks one at
random), BENCH_KEY, BENCH_PROMPTS (JSON list file), BENCH_OUT (JSON written at the end: client
latencies, wall time, server-side routing latencies, models chosen, errors). BENCH_CYCLE=1 cycles
through the prompts instead (a run of fixed duration, `--run-time`).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from pathlib import Path

import gevent
from locust import FastHttpUser, events, task
from locust.exception import StopUser

_prompts = json.loads(Path(os.environ["BENCH_PROMPTS"]).read_text())
PROMPTS = itertools.cycle(_prompts) if os.environ.get("BENCH_CYCLE") else iter(_prompts)
MODELS = os.environ["BENCH_MODEL"].split(",")
HEADERS = {"Authorization": f"Bearer {os.environ['BENCH_KEY']}"}
RESULTS: dict = {"latency_ms": [], "routing_ms": [], "models": [], "errors": [], "t0": None, "t1": None}
ACTIVE = {"users": 0}


class ChatUser(FastHttpUser):
    # no think time: each client sends its next request as soon as the last is answered

    def on_start(self) -> None:
        ACTIVE["users"] += 1

    def on_stop(self) -> None:
        ACTIVE["users"] -= 1
        if ACTIVE["users"] == 0:  # the last one out ends the run
            gevent.spawn_later(0.1, self.environment.runner.quit)

    @task
    def chat(self) -> None:
        prompt = next(PROMPTS, None)
        if prompt is None:
            raise StopUser()
        model = random.choice(MODELS)
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 64}
        t0 = time.perf_counter()
        RESULTS["t0"] = RESULTS["t0"] or t0
        with self.client.post("/v1/chat/completions", json=body, name=model, headers=HEADERS,
                              catch_response=True) as resp:
            RESULTS["t1"] = time.perf_counter()
            RESULTS["latency_ms"].append((RESULTS["t1"] - t0) * 1000)
            if resp.status_code != 200:
                RESULTS["errors"].append(f"{resp.status_code}: {(resp.text or '')[:200]}")
                resp.failure(f"HTTP {resp.status_code}")
                return
            info = resp.json()["routerops"]
            if info.get("routing_latency_ms") is not None:
                RESULTS["routing_ms"].append(info["routing_latency_ms"])
            RESULTS["models"].append(info["model"])


@events.quitting.add_listener
def _write(environment, **_kw) -> None:  # noqa: ANN001
    Path(os.environ["BENCH_OUT"]).write_text(json.dumps(RESULTS))
