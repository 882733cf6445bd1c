"""A fleet of three replay models behind the API (issue 27): the dial's ends, the request's limits,
failover to the next model under the dial, the router refusing a fleet it does not know, and the
two-model settings unchanged.

The router is a real IRT-MF router trained on the router fixture (mixtral, gpt-3.5, gpt-4 preferences)
and approved as champion in a real MLflow store.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from serving_helpers import (
    FIXTURES,
    RECORDED_PAIR,
    STRONG,
    WEAK,
    free_port,
    healthz,
    running_server,
    wait_for,
)

KEY = "fleet-test-key-0123456789"
ADMIN = "fleet-admin-key-0123456789"
MID = "gpt-3.5-turbo-1106"
RECORDED_FLEET = FIXTURES / "recorded_fleet.jsonl"
ROUTER_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "router" / "prefs.jsonl"
PROMPT = "Write a Python function that returns the 26th Fibonacci number using memoization"
PRICES = {WEAK: (0.6, 0.6), MID: (1.0, 2.0), STRONG: (10.0, 30.0)}


def settings_for(data_dir: Path, **overrides):  # noqa: ANN201
    from routerops.settings import Settings

    values = dict(data_dir=data_dir, weak_backend="replay", strong_backend="replay", weak_model=WEAK,
                  strong_model=STRONG, replay_file=RECORDED_PAIR, api_keys=[KEY], admin_api_keys=[ADMIN], reload_interval_s=0.5,
                  http_max_retries=0, http_timeout_s=2.0)
    values.update(overrides)
    return Settings(**values)


def write_fleet(path: Path, down: str | None = None, **entry_overrides: dict) -> Path:
    """A YAML fleet of the three models; `down` is served by an openai backend on a closed port."""
    import yaml

    models = []
    for name, (p_in, p_out) in PRICES.items():
        entry = {"name": name, "backend": "replay", "replay_file": str(RECORDED_FLEET), "price_in": p_in,
                 "price_out": p_out, "completion_tokens": 100}
        if name == down:
            entry = {**entry, "backend": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1"}
            entry.pop("replay_file")
        entry.update(entry_overrides.get(name, {}))
        models.append(entry)
    path.write_text(yaml.safe_dump({"models": models}))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated store with the router fixture's preferences and router version 1 as champion."""
    from routerops import registry
    from routerops.db import migrate, session_scope
    from routerops.db.models import PreferenceLog
    from routerops.text import prompt_hash
    from routerops.training.train_router import train_router

    root = tmp_path_factory.mktemp("fleet")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    data_dir = root / "data"
    settings = settings_for(data_dir, fleet_file=write_fleet(root / "fleet.yaml"))  # training records its dial
    settings.ensure_data_dir()
    migrate.upgrade("head", settings=settings)
    with session_scope(settings) as session:
        for line in ROUTER_FIXTURE.read_text().splitlines():
            r = json.loads(line)
            session.add(PreferenceLog(prompt=r["prompt"], prompt_hash=prompt_hash(r["prompt"]), model_a=r["model_a"],
                                      model_b=r["model_b"], winner=r["winner"], soft_label=r.get("soft_label"),
                                      source="fixture", judge=r.get("judge")))
    assert train_router(settings, seed=0, max_iter=60, progress=False).model_version == "1"
    registry.approve(settings.router_model_name, "1", approved_by="test", settings=settings)
    yield data_dir
    mp.undo()


def predicted_quality(store: Path, prompt: str) -> dict[str, float]:
    from routerops.models.router import load_router

    settings = settings_for(store)
    router = load_router(f"models:/{settings.router_model_name}/1", settings)
    q = router.quality_embeddings(router.embedder.encode([prompt]), list(PRICES), prompts=[prompt])[0]
    return dict(zip(PRICES, q.tolist(), strict=True))


def status(base_url: str) -> dict:
    """/admin/status: the detail /healthz summarises."""
    return healthz(base_url, ADMIN)


def chat(base_url: str, model: str = "router", prompt: str = PROMPT, limits: dict | None = None) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    if limits is not None:
        body["routerops"] = limits
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=60)


def serve(store: Path, fleet_file: Path, **overrides):  # noqa: ANN201
    from routerops.serving.app import create_app

    return running_server(create_app(settings_for(store, fleet_file=fleet_file, **overrides)))


def test_dial_ends_pick_the_best_and_the_cheapest(store: Path, tmp_path: Path) -> None:
    fleet = write_fleet(tmp_path / "fleet.yaml")
    q = predicted_quality(store, PROMPT)
    best = max(q, key=q.get)
    assert best != WEAK  # the ends differ for this prompt
    for lam, expected in ((0.0, best), (1e6, WEAK)):
        with serve(store, fleet, fleet_lambda=lam) as base_url:
            wait_for(lambda u=base_url: status(u)["router_version"] == "1")
            r = chat(base_url)
            assert r.status_code == 200, r.text
            info = r.json()["routerops"]
            assert info["model"] == expected == r.json()["model"], (lam, info)
            cands = {c["model"]: c for c in info["fleet"]["candidates"]}
            assert set(cands) == set(PRICES)
            for name, p in q.items():  # the metadata carries the router's own predictions
                assert cands[name]["p_good"] == pytest.approx(p, abs=1e-5)
            assert cands[STRONG]["predicted_cost_usd"] > cands[MID]["predicted_cost_usd"] > 0
            assert info["fleet"]["dial"] == {"lambda": lam, "source": "settings"}
            assert info["fleet"]["category"] is None  # a router trained without categories reads the prior
            assert r.headers["x-routerops-model"] == expected
            assert expected in info["reason"] and "P(good)" in info["reason"]


def test_training_records_the_dial_that_serving_shows(store: Path, tmp_path: Path) -> None:
    import mlflow

    from routerops import registry

    settings = settings_for(store)
    version = registry.version_by_alias(settings.router_model_name, registry.CHAMPION, settings)
    mlflow.set_tracking_uri(settings.resolved_tracking_uri)
    recorded = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/fleet_dial.json")
    run = mlflow.get_run(version.run_id)
    assert run.data.metrics["fleet_dial_lam"] == pytest.approx(recorded["lam"])
    assert recorded["source"] == "calibrated" and recorded["target"] == {"quality_share": 0.95}
    with serve(store, write_fleet(tmp_path / "fleet.yaml")) as base_url:
        wait_for(lambda: status(base_url)["router_version"] == "1")
        shown = status(base_url)["fleet"]["dial"]
    assert shown["router_version"] == "1"
    assert {k: shown[k] for k in ("lam", "cost_share", "quality_share", "best_model")} == \
        {k: recorded[k] for k in ("lam", "cost_share", "quality_share", "best_model")}


def test_dial_is_calibrated_shown_and_models_listed(store: Path, tmp_path: Path) -> None:
    fleet = write_fleet(tmp_path / "fleet.yaml")
    with serve(store, fleet, fleet_target_quality_share=0.9) as base_url:
        wait_for(lambda: status(base_url)["router_version"] == "1")
        health = status(base_url)
        dial = health["fleet"]["dial"]
        assert dial["source"] == "calibrated" and dial["target"] == {"quality_share": 0.9}
        assert dial["router_version"] == "1" and dial["reference_prompts"] > 0
        assert dial["quality_share"] >= 0.9 - 1e-9 and 0 < dial["cost_share"] <= 1.0 + 1e-9
        assert [m["name"] for m in health["fleet"]["models"]] == list(PRICES)
        assert health["fleet"]["models"][2]["price_out"] == 30.0
        models = {m["id"]: m["routerops"] for m in httpx.get(
            f"{base_url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"]}
        assert {"router", WEAK, MID, STRONG} <= set(models)
        assert models[MID]["price_in"] == 1.0 and models[MID]["available"]
        r = chat(base_url, model=MID)  # a fleet model by name
        assert r.status_code == 200 and r.json()["routerops"]["model"] == MID
        assert r.json()["choices"][0]["message"]["content"].startswith("from functools import cache")
        info = chat(base_url).json()["routerops"]
        assert info["fleet"]["dial"] == {"lambda": dial["lam"], "source": "calibrated"}
        metrics = httpx.get(f"{base_url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
        routed = info["model"]
        shares = {m: float(line.split()[-1]) for m in (MID, routed) for line in metrics.splitlines()
                  if line.startswith(f'routerops_model_traffic_share{{model="{m}"}}')}
        assert shares[MID] == pytest.approx(0.5 if routed != MID else 1.0)
        assert f'routerops_model_cost_usd_total{{model="{MID}"}}' in metrics
        assert f'routerops_model_predicted_quality_count{{model="{routed}"}} 1.0' in metrics
        assert f'routerops_model_latency_seconds_count{{model="{MID}"}}' in metrics
        # the default cascade climbs the fleet cheapest first, each answer scored by the router's P(good)
        assert models["cascade"]["available"]
        q = predicted_quality(store, PROMPT)
        cascade = chat(base_url, model="cascade").json()["routerops"]
        assert cascade["strategy"] == "cascade" and cascade["reason"].startswith("default cascade")
        if q[WEAK] >= 0.5:
            assert cascade["model"] == WEAK and cascade["probe_score"] == pytest.approx(q[WEAK], abs=1e-5)
        else:
            assert cascade["model"] in (MID, STRONG) and cascade["escalated"]
            assert cascade["model"] == (MID if q[MID] >= 0.5 else STRONG)


def test_request_limits_are_obeyed_and_bad_ones_are_400(store: Path, tmp_path: Path) -> None:
    fleet = write_fleet(tmp_path / "fleet.yaml")
    with serve(store, fleet, fleet_lambda=0.0) as base_url:
        wait_for(lambda: status(base_url)["router_version"] == "1")
        # the official client's extra_body
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0)
        done = client.chat.completions.create(model="router", messages=[{"role": "user", "content": PROMPT}],
                                              extra_body={"routerops": {"models": [WEAK, MID]}})
        info = done.model_extra["routerops"]
        assert info["model"] in (WEAK, MID)
        excluded = {c["model"]: c["excluded"] for c in info["fleet"]["candidates"]}
        assert excluded[STRONG] == "not in the request's models"
        assert info["fleet"]["limits"] == {"models": [WEAK, MID]}

        cands = {c["model"]: c for c in chat(base_url).json()["routerops"]["fleet"]["candidates"]}
        cap = (cands[MID]["predicted_cost_usd"] + cands[WEAK]["predicted_cost_usd"]) / 2  # mid is over it
        r = chat(base_url, limits={"max_cost_usd": cap})
        assert r.status_code == 200 and r.json()["routerops"]["model"] == WEAK
        assert "max_cost_usd" in {c["model"]: c for c in r.json()["routerops"]["fleet"]["candidates"]}[MID]["excluded"]

        r = chat(base_url, limits={"min_quality": 0.0, "models": [STRONG]})
        assert r.status_code == 200 and r.json()["routerops"]["model"] == STRONG

        bad = [({"max_cost_usd": -1}, "routerops.max_cost_usd"), ({"max_cost_usd": "cheap"}, "routerops.max_cost_usd"),
               ({"min_quality": 2}, "routerops.min_quality"), ({"models": []}, "routerops.models"),
               ({"models": ["gpt-17"]}, "routerops.models"), ({"budget": 1}, "routerops.budget")]
        for limits, param in bad:
            r = chat(base_url, limits=limits)
            assert r.status_code == 400, (limits, r.text)
            err = r.json()["error"]
            assert err["param"] == param, (limits, err)
        assert "gpt-17" in chat(base_url, limits={"models": ["gpt-17"]}).json()["error"]["message"]
        assert WEAK in chat(base_url, limits={"models": ["gpt-17"]}).json()["error"]["message"]
        r = chat(base_url, limits={"max_cost_usd": 1e-12})
        assert r.status_code == 400 and r.json()["error"]["code"] == "limits_unsatisfiable"
        assert "max_cost_usd" in r.json()["error"]["message"]
        r = chat(base_url, model=WEAK, limits={"models": [WEAK]})
        assert r.status_code == 400 and "model='router'" in r.json()["error"]["message"]


def test_a_prompt_over_a_models_context_skips_it(store: Path, tmp_path: Path) -> None:
    q = predicted_quality(store, PROMPT)
    best = max(q, key=q.get)
    fleet = write_fleet(tmp_path / "fleet.yaml", **{best: {"max_context": 64}})
    with serve(store, fleet, fleet_lambda=0.0) as base_url:
        wait_for(lambda: status(base_url)["router_version"] == "1")
        info = chat(base_url).json()["routerops"]
        assert info["model"] != best
        excluded = {c["model"]: c["excluded"] for c in info["fleet"]["candidates"]}
        assert "max_context 64" in excluded[best]
        r = chat(base_url, limits={"models": [best]})
        assert r.status_code == 400 and r.json()["error"]["code"] == "limits_unsatisfiable"


def test_down_model_fails_over_to_the_next_under_the_dial(store: Path, tmp_path: Path) -> None:
    q = predicted_quality(store, PROMPT)
    ranked = sorted(q, key=q.get, reverse=True)  # lambda = 0: the order of P(good)
    fleet = write_fleet(tmp_path / "fleet.yaml", down=ranked[0])
    with serve(store, fleet, fleet_lambda=0.0, breaker_fail_max=2) as base_url:
        wait_for(lambda: status(base_url)["router_version"] == "1")
        for _ in range(3):
            r = chat(base_url)
            assert r.status_code == 200, r.text
            info = r.json()["routerops"]
            assert info["model"] == ranked[1], info
            assert info["fleet"]["order"][:2] == ranked[:2]
            assert info["failover"]["from_model"] == ranked[0] and info["failover"]["to_model"] == ranked[1]
            assert r.headers["x-routerops-failover"].startswith(f"{ranked[0]} unavailable")
        # streamed: the same failover before the first token, the metadata in the first and last chunks
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0)
        chunks = list(client.chat.completions.create(model="router", stream=True,
                                                     messages=[{"role": "user", "content": PROMPT}]))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == chat(base_url, model=ranked[1]).json()["choices"][0]["message"]["content"]
        last = chunks[-1].model_extra["routerops"]
        assert last["model"] == ranked[1] and last["failover"]["from_model"] == ranked[0]
        assert last["fleet"]["order"][:2] == ranked[:2] and last["estimated_cost_usd"] > 0
        kinds = [a["error"] for a in info["failover"]["attempts"]]
        assert kinds == ["circuit open"]  # two failures opened its breaker: now skipped without a call
        health = status(base_url)
        circuit = {m["name"]: m.get("circuit") for m in health["fleet"]["models"]}
        assert circuit[ranked[0]]["state"] == "open" and health["status"] == "degraded"


def test_fleet_name_unknown_to_the_router_is_refused(store: Path, tmp_path: Path) -> None:
    fleet = write_fleet(tmp_path / "fleet.yaml", **{MID: {"router_name": "gpt-17-turbo"}})
    with serve(store, fleet) as base_url:
        health = wait_for(lambda: (h := status(base_url))["last_reload_error"] and h)
        assert health["router_version"] is None
        err = health["last_reload_error"]
        assert "gpt-17-turbo" in err and "it knows:" in err and STRONG in err
    # a cold_start_like the router does not know either is refused the same way, naming both
    fleet = write_fleet(tmp_path / "fleet2.yaml", **{MID: {"router_name": "gpt-17-turbo",
                                                           "cold_start_like": "gpt-16"}})
    with serve(store, fleet) as base_url:
        err = wait_for(lambda: status(base_url)["last_reload_error"])
        assert "gpt-17-turbo" in err and "cold_start_like gpt-16 unknown too" in err


def test_a_model_without_labels_is_routed_as_its_cold_start_model(store: Path, tmp_path: Path) -> None:
    """A new fleet model the router has never seen goes live read as the model its entry names;
    the metadata says so, and its logs keep its own name (the next training run learns it)."""
    q = predicted_quality(store, PROMPT)
    fleet = write_fleet(tmp_path / "fleet.yaml", **{MID: {"router_name": "gpt-17-turbo", "cold_start_like": STRONG}})
    with serve(store, fleet, fleet_lambda=0.0) as base_url:
        health = wait_for(lambda: (h := status(base_url))["router_version"] == "1" and h)
        assert health["fleet"]["cold_started"] == {MID: STRONG}
        r = chat(base_url)
        assert r.status_code == 200, r.text
        info = r.json()["routerops"]
        cands = {c["model"]: c for c in info["fleet"]["candidates"]}
        assert cands[MID]["cold_start_like"] == STRONG and "cold_start_like" not in cands[WEAK]
        assert cands[MID]["p_good"] == pytest.approx(q[STRONG], abs=1e-5) == cands[STRONG]["p_good"]
        # equal P(good) at lambda 0: the cheaper of the two, the cold-started one, wins
        assert info["model"] == MID and "cold start: " in info["reason"]


def test_two_model_settings_unchanged_and_limits_over_the_pair(store: Path) -> None:
    from routerops.serving.app import create_app

    with running_server(create_app(settings_for(store))) as base_url:
        wait_for(lambda: status(base_url)["router_version"] == "1")
        info = chat(base_url).json()["routerops"]
        assert info["fleet"] is None and info["p_strong_wins"] is not None  # the alpha rule, as before
        assert info["model"] == (STRONG if info["p_strong_wins"] >= info["alpha"] else WEAK)
        health = status(base_url)
        assert [m["name"] for m in health["fleet"]["models"]] == [WEAK, STRONG]
        assert health["fleet"]["routes_router_strategy"] is False
        r = chat(base_url, limits={"models": [WEAK]})
        assert r.status_code == 200 and r.json()["routerops"]["model"] == WEAK
        assert r.json()["routerops"]["fleet"]["limits"] == {"models": [WEAK]}


def test_fleet_file_errors_stop_the_app_with_the_reason(store: Path, tmp_path: Path) -> None:
    from routerops.fleet import FleetError
    from routerops.serving.app import create_app

    bad = tmp_path / "fleet.toml"
    bad.write_text('[[models]]\nname = "a"\nbackend = "replay"\nprice_in = 1\n')
    with pytest.raises(FleetError, match=r"models\[0\] \(a\): `price_out`"):
        create_app(settings_for(store, fleet_file=bad))
    assert np.isfinite(PRICES[WEAK][0])


def test_fleet_exploration_asks_another_eligible_model_in_the_background(store: Path, tmp_path: Path) -> None:
    """With a fleet, an explored request gets one of the other eligible models' answers too: the pair
    row names the cheaper of the two as weak, carries both answers and P(that model observed); a
    request limited to one model explores nothing."""
    from sqlalchemy import select

    from routerops.db import session_scope
    from routerops.db.models import ExplorationPair, RequestLog

    fleet = write_fleet(tmp_path / "fleet.yaml")
    with serve(store, fleet, explore_share=1.0) as base_url:
        wait_for(lambda: status(base_url)["router_version"] == "1")
        r = chat(base_url)
        assert r.status_code == 200, r.text
        rid, served = r.json()["routerops"]["request_id"], r.json()["model"]
        settings = settings_for(store)

        def pair_row():  # noqa: ANN202
            with session_scope(settings) as s:
                row = s.execute(select(ExplorationPair).where(ExplorationPair.request_id == rid)).scalar_one_or_none()
                if row is not None:
                    s.expunge(row)
                return row

        row = wait_for(pair_row)
        logged = wait_for(lambda: _request_extra(settings, rid))
        other = logged["explore_model"]
        assert other in PRICES and other != served and logged["explore_propensity"] == pytest.approx(0.5)
        weak, strong = sorted((served, other), key=lambda m: sum(PRICES[m]))
        assert (row.weak_model, row.strong_model, row.status) == (weak, strong, "pending")
        assert row.served_role == ("weak" if served == weak else "strong")
        assert row.weak_answer and row.strong_answer and row.cost_usd > 0 and row.explore_propensity == pytest.approx(0.5)
        # limited to one model: nothing else may see the prompt
        r2 = chat(base_url, limits={"models": [MID]})
        assert r2.status_code == 200 and r2.json()["model"] == MID
        rid2 = r2.json()["routerops"]["request_id"]
        assert "explored" not in wait_for(lambda: _request_extra(settings, rid2))
        with session_scope(settings) as s:
            assert s.execute(select(RequestLog.id)).all() and s.execute(
                select(ExplorationPair).where(ExplorationPair.request_id == rid2)).first() is None


def _request_extra(settings, request_id: str) -> dict | None:  # noqa: ANN001
    from sqlalchemy import select

    from routerops.db import session_scope
    from routerops.db.models import RequestLog

    with session_scope(settings) as s:
        return s.execute(select(RequestLog.extra).where(RequestLog.id == request_id)).scalar_one_or_none()
