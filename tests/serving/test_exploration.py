"""Exploration through the real API (replay backends, a real uvicorn server, a real database): a share
of routed requests also gets the other model's answer in the background, without delaying or
changing the user's answer; propensities and the exploration cost are logged; a real local HTTP
judge labels the pair into a preference row; thumbs become outcome rows."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from serving_helpers import RECORDED_PAIR, STRONG, WEAK, running_server
from sqlalchemy import select

from routerops.backends.base import Generation
from routerops.backends.factory import BackendPair, make_pair
from routerops.backends.outcome_judge_server import OutcomeJudge
from routerops.db import migrate, session_scope
from routerops.db.models import ExplorationPair, OutcomeLog, PreferenceLog, RequestLog
from routerops.settings import Settings

USER_KEY = "test-user-key-0123456789"
PROMPT = "What's a fun fact about cats?"
SLOW_S = 1.5


class SlowBackend:
    """The recorded weak model answering SLOW_S seconds late (a slow provider): exploration calls it."""

    def __init__(self, base) -> None:  # noqa: ANN001
        self.base, self.name = base, base.name
        self.calls = 0

    def generate(self, messages, params) -> Generation:  # noqa: ANN001
        self.calls += 1
        time.sleep(SLOW_S)
        return self.base.generate(messages, params)

    def stream(self, messages, params):  # noqa: ANN001, ANN201
        self.calls += 1
        time.sleep(SLOW_S)
        return self.base.stream(messages, params)

    def __getattr__(self, item: str):  # noqa: ANN204 - everything else is the recorded backend's
        return getattr(self.base, item)


def make_settings(data_dir: Path, **kw) -> Settings:  # noqa: ANN003
    values = dict(data_dir=data_dir, weak_backend="replay", strong_backend="replay", weak_model=WEAK,
                  strong_model=STRONG, replay_file=RECORDED_PAIR, api_keys=[USER_KEY], reload_interval_s=60)
    values.update(kw)
    return Settings(**values)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("explore") / "data"
    s = make_settings(d)
    s.ensure_data_dir()
    migrate.upgrade("head", settings=s)
    return d


@contextmanager
def serve(data_dir: Path, share: float) -> Iterator[tuple[str, Settings, SlowBackend, object]]:
    from routerops.serving.app import create_app

    settings = make_settings(data_dir, explore_share=share)
    pair = make_pair(settings)
    slow = SlowBackend(pair.weak)
    app = create_app(settings, BackendPair(weak=slow, strong=pair.strong))
    with running_server(app) as base_url:
        yield base_url, settings, slow, app.state.serving.explorer


def chat(base_url: str, stream: bool = False) -> tuple[float, str, str]:
    """(seconds until the whole answer arrived, answer text, request id)."""
    t0 = time.perf_counter()
    body = {"model": "router", "messages": [{"role": "user", "content": PROMPT}], "stream": stream}
    headers = {"Authorization": f"Bearer {USER_KEY}"}
    if not stream:
        r = httpx.post(f"{base_url}/v1/chat/completions", json=body, headers=headers, timeout=30)
        r.raise_for_status()
        return time.perf_counter() - t0, r.json()["choices"][0]["message"]["content"], r.headers["x-routerops-request-id"]
    text = []
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, headers=headers, timeout=30) as r:
        rid = r.headers["x-routerops-request-id"]
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                text.append(chunk["choices"][0]["delta"].get("content") or "")
    return time.perf_counter() - t0, "".join(text), rid


def test_exploration_doubles_the_answer_in_the_background(data_dir: Path) -> None:
    # No champion router: every routed request goes to strong; the explored (other) model is the slow weak one.
    with serve(data_dir, 0.0) as (base_url, _settings, slow, _explorer):
        base = [chat(base_url) for _ in range(5)]
        assert slow.calls == 0
    with serve(data_dir, 1.0) as (base_url, settings, slow, explorer):
        explored = [chat(base_url) for _ in range(5)] + [chat(base_url, stream=True) for _ in range(2)]
        # the user's answer is unchanged and arrives long before the explored model's answer exists
        assert {text for _, text, _ in explored} == {text for _, text, _ in base}
        assert max(s for s, _, _ in explored) < SLOW_S / 2, [s for s, _, _ in explored]
        assert statistics.median(s for s, _, _ in explored) < statistics.median(s for s, _, _ in base) + 0.2
        assert explorer.wait_idle(60)
        assert slow.calls == 7
    ids = [rid for _, _, rid in explored]
    with session_scope(settings) as s:
        for rid in ids:
            row = s.get(RequestLog, rid)
            assert row.extra["propensity"] == 1.0 and row.extra["explore_propensity"] == 1.0
            assert row.extra["explored"] is True and row.extra["role"] == "strong"
        pairs = {p.request_id: p for p in s.scalars(select(ExplorationPair).where(ExplorationPair.request_id.in_(ids)))}
        assert set(pairs) == set(ids)
        for p in pairs.values():
            assert p.status == "pending" and p.served_role == "strong"
            assert p.weak_answer == "Cats sleep a lot." and p.strong_answer == base[0][1]
            assert p.cost_usd > 0  # mixtral's catalog price, paid for the exploration call
            assert p.latency_ms >= SLOW_S * 1000
            assert (p.propensity, p.explore_propensity) == (1.0, 1.0)
        # requests served without exploration log their propensities too
        for _, _, rid in base:
            row = s.get(RequestLog, rid)
            assert row.extra["explored"] is False and row.extra["explore_propensity"] == 0.0


def test_default_share_explores_about_two_percent(data_dir: Path) -> None:
    settings = make_settings(data_dir)
    assert settings.explore_share == 0.02
    from routerops.serving.strategies import RouterStrategy

    class Ctx:  # only what the draw reads
        pass

    ctx = Ctx()
    ctx.settings = settings
    strat = RouterStrategy.__new__(RouterStrategy)
    RouterStrategy.__init__(strat, ctx)  # type: ignore[arg-type]
    from routerops.serving.strategies import Outcome

    n = 20_000
    hits = 0
    for _ in range(n):
        out = Outcome("router", STRONG, "strong", "")
        strat._explore(out)
        hits += out.extra["explored"]
    assert abs(hits / n - 0.02) < 0.005


def test_judge_labels_pairs_and_thumbs_become_outcomes(data_dir: Path) -> None:
    from routerops.training.exploration_judge import judge_exploration_pairs

    with serve(data_dir, 1.0) as (base_url, settings, _slow, explorer):
        _, strong_text, rid = chat(base_url)
        assert explorer.wait_idle(60)
        r = httpx.post(f"{base_url}/v1/feedback", json={"request_id": rid, "thumbs": "down"},
                       headers={"Authorization": f"Bearer {USER_KEY}"})
        assert r.status_code == 201 and r.json()["recorded"] == "outcome", r.text
        r2 = httpx.post(f"{base_url}/v1/feedback", json={"request_id": rid, "rating": 0.25},
                        headers={"Authorization": f"Bearer {USER_KEY}"})
        assert r2.status_code == 201 and r2.json()["recorded"] == "outcome" and r2.json()["replaced"], r2.text
        assert r2.json()["outcome_id"] == r.json()["outcome_id"]  # one vote per (request, key): updated in place
    with OutcomeJudge({"Cats sleep a lot.": 1.0, strong_text: 0.0}) as judge:
        skipped = judge_exploration_pairs(settings)  # nothing configured: pairs wait for feedback
        assert skipped["status"] == "skipped" and skipped["pending"] >= 1
        cfg = make_settings(settings.data_dir, judge_base_url=judge.base_url, judge_model="lookup-judge")
        result = judge_exploration_pairs(cfg)
    assert result["status"] == "ok" and result["judged"] >= 1 and result["weak"] == result["judged"]
    assert judge.calls == 2 * result["judged"]  # both orders
    with session_scope(settings) as s:
        pair = s.scalars(select(ExplorationPair).where(ExplorationPair.request_id == rid)).one()
        assert (pair.status, pair.winner, pair.judge) == ("judged", "weak", "lookup-judge")
        pref = s.get(PreferenceLog, pair.preference_id)
        assert (pref.model_a, pref.model_b, pref.winner, pref.request_id) == (WEAK, STRONG, "a", rid)
        assert pref.source == "exploration:lookup-judge"
        outcomes = s.scalars(select(OutcomeLog).where(OutcomeLog.prompt_id.startswith(f"request:{rid}:"))).all()
        # the rating replaced the same key's thumbs-down: the last vote stands
        assert [(o.model, o.score, o.source) for o in outcomes] == [(STRONG, 0.25, "feedback")]
        assert all(o.prompt == PROMPT for o in outcomes)
