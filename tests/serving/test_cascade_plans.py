"""Per-category cascade plans (issue 27, part 4): the stored config with plans and a category
classifier, serving running the plan of the category a request gives or the classifier predicts (a
real uvicorn server over the recorded pair), the 400 for an unknown category, a plan naming a model
the server does not serve, and `routerops cascade calibrate --per-category` from an outcome file and
from the logs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from serving_helpers import RECORDED_PAIR, STRONG, WEAK, running_server

KEY = "plans-test-key-0123456789"
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "cascade" / "per_category.csv"
NEVER = 1.0 + 1e-6  # a threshold no score reaches: always escalate
MATH = ["Find all integer solutions of x^2 - 21x + 19 = 0.", "What is the derivative of x^23 + 6x?"]
CHAT = ["What's a fun fact about cats?", "Do you like coffee? I think they are lovely.",
        "Tell me a short joke about autumn leaves."]


def make_settings(data_dir: Path, **overrides):  # noqa: ANN201
    from routerops.settings import Settings

    values = dict(data_dir=data_dir, weak_backend="replay", strong_backend="replay", weak_model=WEAK,
                  strong_model=STRONG, replay_file=RECORDED_PAIR, api_keys=[KEY], reload_interval_s=0.3)
    values.update(overrides)
    return Settings(**values)


def synthetic_scorer(folder: Path) -> Path:
    """A real CascadeScorer for the ladder (WEAK, STRONG): its scores do not matter here (the plans'
    thresholds are 0 or above 1), its loading does."""
    from routerops.models.cascade_scorer.features import StepInput, signals
    from routerops.models.cascade_scorer.model import CascadeScorer, fit_combiner

    rng = np.random.default_rng(0)
    rows, ys = [], []
    for _ in range(100):
        ans = str(rng.choice(["A", "B"]))
        rows.append(signals(StepInput("q", ans, WEAK)))
        ys.append(float(ans == "A"))
    scorer = CascadeScorer([WEAK, STRONG], [fit_combiner(np.array(rows), np.array(ys))],
                           CascadeScorer.feature_names_for(False), None, {"note": "synthetic"})
    return scorer.save(folder)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A migrated store, the server over the recorded pair, and the category classifier trained on
    the recorded prompts (math vs chat) with the configured embedder."""
    from routerops.db import migrate
    from routerops.models.embeddings import get_embedder
    from routerops.serving.app import create_app
    from routerops.training.cascade_plans import fit_category_classifier

    root = tmp_path_factory.mktemp("plans")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    settings = make_settings(root / "data")
    settings.ensure_data_dir()
    migrate.upgrade("head", settings=settings)
    embedder = get_embedder(settings)
    prompts = MATH * 3 + CHAT * 3
    classifier = fit_category_classifier(embedder, prompts, ["math"] * 6 + ["chat"] * 9, c=100.0)
    scorer = synthetic_scorer(root / "scorer")
    with running_server(create_app(settings)) as base_url:
        yield base_url, settings, classifier, embedder, scorer
    mp.undo()


def store_config(settings, config) -> None:  # noqa: ANN001
    from routerops.db import session_scope
    from routerops.serving.cascade import save_cascade_config

    with session_scope(settings) as session:
        save_cascade_config(session, config)
    time.sleep(settings.reload_interval_s + 0.1)  # the strategy re-reads its config at this pace


def two_plans(classifier, scorer: Path, **plans):  # noqa: ANN001, ANN201
    """math: the weak model, always escalated to the strong one (a two-rung plan with its own scorer);
    chat: the weak model alone; the fallback: the strong model alone."""
    from routerops.serving.cascade import CascadeConfig

    plans = plans or {"math": {"models": [WEAK, STRONG], "thresholds": [NEVER], "scorer_uri": str(scorer)},
                      "chat": {"models": [WEAK], "thresholds": []}}
    return CascadeConfig(models=[STRONG], thresholds=[], plans=plans, classifier=classifier)


def chat(base_url: str, prompt: str, options: dict | None = None, model: str = "cascade") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    if options is not None:
        body["routerops"] = options
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=60)


def logged_steps(settings, request_id: str) -> list:  # noqa: ANN001
    from sqlalchemy import select

    from routerops.db import session_scope
    from routerops.db.models import CascadeStepLog, RequestLog

    deadline = time.monotonic() + 10
    while True:
        with session_scope(settings) as session:
            rows = [(r.step, r.model, list(r.ladder), dict(r.signals or {})) for r in session.scalars(
                select(CascadeStepLog).where(CascadeStepLog.request_id == request_id).order_by(CascadeStepLog.step))]
            log_row = session.get(RequestLog, request_id)
            extra = dict(log_row.extra) if log_row is not None else None
        if (rows and extra is not None) or time.monotonic() > deadline:
            return rows, extra
        time.sleep(0.1)


def test_the_requests_category_picks_its_plan(served) -> None:
    base_url, settings, classifier, _, scorer = served
    store_config(settings, two_plans(classifier, scorer))
    # category math: plan math's ladder ran (weak, then always escalated to strong)
    r = chat(base_url, CHAT[0], {"category": "math"})
    assert r.status_code == 200, r.text
    info = r.json()["routerops"]
    assert info["model"] == STRONG and info["escalated"] is True
    assert info["cascade"] == {"category": "math", "plan": "math", "source": "request", "probability": None,
                               "models": [WEAK, STRONG]}
    assert "category 'math' (given by the request)" in info["reason"]
    steps, extra = logged_steps(settings, info["request_id"])
    assert [(s[0], s[1]) for s in steps] == [(0, WEAK), (1, STRONG)] and all(s[2] == [WEAK, STRONG] for s in steps)
    assert steps[0][3] == {"category": "math", "category_source": "request", "category_probability": None}
    assert extra["cascade_plan"]["category"] == "math"
    # the same prompt with category chat: plan chat (the weak model alone) answers
    r = chat(base_url, CHAT[0], {"category": "chat"})
    info = r.json()["routerops"]
    assert r.status_code == 200 and info["model"] == WEAK and info["escalated"] is False
    assert info["cascade"]["plan"] == "chat" and info["cascade"]["models"] == [WEAK]
    assert r.json()["choices"][0]["message"]["content"] == "Cats sleep a lot."
    steps, _ = logged_steps(settings, info["request_id"])
    assert [(s[1], s[2]) for s in steps] == [(WEAK, [WEAK])]


def test_a_prompt_without_category_runs_the_predicted_plan(served) -> None:
    base_url, settings, classifier, embedder, scorer = served
    store_config(settings, two_plans(classifier, scorer))
    seen = set()
    for prompt in MATH + CHAT:
        expected, p = classifier.predict(np.asarray(embedder.encode([prompt]), np.float64)[0])
        seen.add(expected)
        r = chat(base_url, prompt)
        assert r.status_code == 200, r.text
        info = r.json()["routerops"]
        assert info["cascade"]["category"] == expected and info["cascade"]["source"] == "predicted"
        assert info["cascade"]["probability"] == pytest.approx(p, abs=1e-6)
        assert info["model"] == (STRONG if expected == "math" else WEAK)
        assert f"category {expected!r} (predicted, P=" in info["reason"]
    assert seen == {"math", "chat"}  # the classifier tells the recorded prompts apart
    # without a classifier, a request with no category runs the fallback plan (the strong model)
    config = two_plans(classifier, scorer)
    config.classifier = None
    store_config(settings, config)
    info = chat(base_url, CHAT[0]).json()["routerops"]
    assert info["model"] == STRONG and info["cascade"]["source"] == "fallback" and info["cascade"]["category"] is None


def test_unknown_category_is_a_400_naming_the_known_ones(served) -> None:
    base_url, settings, classifier, _, scorer = served
    store_config(settings, two_plans(classifier, scorer))
    r = chat(base_url, CHAT[0], {"category": "poetry"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "routerops.category" and err["code"] == "unknown_category"
    assert "'poetry'" in err["message"] and "known categories: chat, math" in err["message"]
    r = chat(base_url, CHAT[0], {"category": "math"}, model="router")
    assert r.status_code == 400 and "applies to model='cascade'" in r.json()["error"]["message"]
    r = chat(base_url, CHAT[0], {"category": "math", "max_cost_usd": 0.1})
    assert r.status_code == 400 and "apply to model='router'" in r.json()["error"]["message"]


def test_a_plan_naming_an_unserved_model_makes_the_cascade_unavailable(served) -> None:
    base_url, settings, classifier, _, scorer = served
    config = two_plans(classifier, scorer, math={"models": ["no-such-model", STRONG], "thresholds": [0.5]},
                       chat={"models": [WEAK], "thresholds": []})
    store_config(settings, config)
    models = httpx.get(f"{base_url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"]
    cascade = next(m for m in models if m["id"] == "cascade")["routerops"]
    assert cascade["available"] is False
    assert "plan for category 'math' names 'no-such-model'" in cascade["unavailable_reason"]
    assert "does not serve" in cascade["unavailable_reason"]
    r = chat(base_url, CHAT[0], {"category": "chat"})
    assert r.status_code == 503 and "no-such-model" in r.json()["error"]["message"]
    store_config(settings, two_plans(classifier, scorer))
    assert chat(base_url, CHAT[0], {"category": "chat"}).status_code == 200


def test_stored_plans_roundtrip_and_old_configs_load_unchanged(settings) -> None:
    from routerops.db import session_scope
    from routerops.db.models import ServingState
    from routerops.serving.cascade import CascadeConfig, CascadeConfigError, load_cascade_config

    old = {"models": ["a", "b"], "thresholds": [0.4], "objective": "manual"}  # a config from before plans
    with session_scope(settings) as s:
        s.add(ServingState(key="cascade", value=old))
    with session_scope(settings) as s:
        got = load_cascade_config(s)
    assert got.models == ["a", "b"] and got.plans == {} and got.classifier is None
    assert "plans" not in got.to_dict()
    with pytest.raises(CascadeConfigError, match="plan 'x': 2 models need 1 thresholds"):
        CascadeConfig(["a"], [], plans={"x": {"models": ["a", "b"], "thresholds": []}})
    with pytest.raises(CascadeConfigError, match="plan 'x': unknown keys"):
        CascadeConfig(["a"], [], plans={"x": {"models": ["a"], "thresholds": [], "ladder": []}})
    clf = {"classes": ["x", "y"], "coef": [[0.0, 0.0], [1.0, -1.0]], "intercept": [0.0, 0.0],
           "embedder": {"name": "e", "dim": 2}}
    with pytest.raises(CascadeConfigError, match=r"predicts \['y'\], which have no plan"):
        CascadeConfig(["a"], [], plans={"x": {"models": ["a"], "thresholds": []}}, classifier=clf)
    with pytest.raises(CascadeConfigError, match="embedder's dim 2"):
        CascadeConfig(["a"], [], plans={"x": {"models": ["a"], "thresholds": []}},
                      classifier=clf | {"coef": [[0.0], [1.0]]})


# --- calibrate --per-category ---------------------------------------------------------------------
def test_calibrate_per_category_from_an_outcome_file(settings) -> None:
    from routerops.db import session_scope
    from routerops.orchestration.cli import cli
    from routerops.serving.cascade import load_cascade_config

    r = CliRunner().invoke(cli, ["cascade", "calibrate", "--per-category", "--table", str(FIXTURE),
                                 "--match", "strong", "--grid-size", "5", "--train-frac", "0.95"])
    assert r.exit_code == 0, r.output
    # the fixture's last row has weak|score 1.7: reported and skipped
    assert "1 of 9 rows skipped (weak|score missing or out of range: 1; first at lines [10])" in r.output
    with session_scope(settings) as s:
        config = load_cascade_config(s)
    # easy: the weak model is always right (cost 1); hard: always wrong, the strong model right (cost 10).
    # Per category: easy -> the weak model's answer (cost 1), hard -> the strong model alone (cost 10):
    # quality 1 at a pooled 5.5, cheaper than any single plan (weak -> strong by the score: 6).
    assert set(config.plans) == {"easy", "hard"}
    easy, hard = config.plans["easy"], config.plans["hard"]
    assert easy.models[0] == "weak" and easy.expected["train_cost"] == pytest.approx(1.0)
    assert hard.models == ["strong"] and hard.expected["train_cost"] == pytest.approx(10.0)
    assert easy.expected["train_quality"] == hard.expected["train_quality"] == pytest.approx(1.0)
    assert config.models == ["weak", "strong"] and 0.2 < config.thresholds[0] <= 0.9  # the pooled fallback
    assert config.objective == "min_cost_at_quality" and config.quality_target == pytest.approx(1.0)
    clf = config.classifier
    assert clf is not None and clf.classes == ["easy", "hard"] and len(clf.coef[0]) == clf.embedder["dim"]
    assert "plan easy" in r.output and "category classifier: ['easy', 'hard']" in r.output
    # the held-out margin: every row of a category alike, so plans chosen on one half hold on the other
    r = CliRunner().invoke(cli, ["cascade", "calibrate", "--per-category", "--table", str(FIXTURE), "--match",
                                 "strong", "--grid-size", "5", "--train-frac", "0.95", "--holdout-margin", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "held-out halves of train need the target raised by 0.0000: 1.0000 -> 1.0000" in r.output


def test_calibrate_per_category_refuses_bad_input(settings, tmp_path: Path) -> None:
    import pandas as pd

    from routerops.orchestration.cli import cli

    no_cat = tmp_path / "nocat.csv"
    pd.read_csv(FIXTURE).drop(columns=["category"]).to_csv(no_cat, index=False)
    r = CliRunner().invoke(cli, ["cascade", "calibrate", "--per-category", "--table", str(no_cat), "--match", "strong"])
    assert r.exit_code != 0 and "needs a 'category' column" in r.output
    r = CliRunner().invoke(cli, ["cascade", "calibrate", "--from-logs", "--match", "strong"])
    assert r.exit_code != 0 and "--from-logs calibrates per category" in r.output


def test_calibrate_from_logs_says_what_is_missing(settings) -> None:
    from routerops.db import session_scope
    from routerops.models.cascade_log import StepRecord, label_steps, write_steps
    from routerops.orchestration.cli import cli

    args = ["cascade", "calibrate", "--per-category", "--from-logs", "--match", "b"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code != 0 and "no usable logged cascade requests: 0 logged request(s)" in r.output
    # explored, labelled requests, but no request log row or plan says their category
    with session_scope(settings) as s:
        for n in range(3):
            rid = f"req{n}"
            write_steps(s, rid, ["a", "b"], [
                StepRecord(0, "a", 0.7, 0.5, True, 1.0, explored=True).to_dict(),
                StepRecord(1, "b", None, None, False, 10.0, explored=True).to_dict()])
            s.flush()
            for step in (0, 1):
                label_steps(s, rid, 1.0, step=step, source="test")
    r = CliRunner().invoke(cli, args)
    assert r.exit_code != 0 and "the 3 usable logged request(s) of ladder ['a', 'b'] carry no category" in r.output


def test_calibrate_from_logs_learns_plans_per_logged_category(settings) -> None:
    from routerops.db import session_scope
    from routerops.db.models import RequestLog
    from routerops.models.cascade_log import StepRecord, label_steps, write_steps
    from routerops.orchestration.cli import cli
    from routerops.serving.cascade import load_cascade_config
    from routerops.text import prompt_hash

    rows = [("greet", "hello there friend", 1.0), ("maths", "integrate x squared", 0.0)] * 6
    with session_scope(settings) as s:
        for n, (category, prompt, weak_right) in enumerate(rows):
            rid = f"req{n}"
            s.add(RequestLog(id=rid, prompt_hash=prompt_hash(prompt), prompt=prompt, strategy="cascade",
                             model_requested="cascade", model_chosen="b",
                             extra={"cascade_plan": {"category": category, "source": "request"}}))
            write_steps(s, rid, ["a", "b"], [
                StepRecord(0, "a", 0.9 if weak_right else 0.1, 0.5, True, 1.0, explored=True).to_dict(),
                StepRecord(1, "b", None, None, False, 10.0, explored=True).to_dict()])
            s.flush()
            label_steps(s, rid, weak_right, step=0, source="test")
            label_steps(s, rid, 1.0, step=1, source="test")
    r = CliRunner().invoke(cli, ["cascade", "calibrate", "--per-category", "--from-logs", "--match", "b",
                                 "--train-frac", "0.95", "--grid-size", "5"])
    assert r.exit_code == 0, r.output
    assert "logged traffic: 12 explored, labelled requests of ladder ['a', 'b']" in r.output
    with session_scope(settings) as s:
        config = load_cascade_config(s)
    assert config.source == "logs:cascade_steps" and set(config.plans) == {"greet", "maths"}
    assert config.plans["greet"].models[0] == "a" and config.plans["maths"].models == ["b"]
    assert config.classifier is not None and config.classifier.classes == ["greet", "maths"]
    assert json.loads(json.dumps(config.to_dict()))["plans"]["maths"]["models"] == ["b"]


def test_calibrate_per_category_uses_only_the_fleets_models(settings, tmp_path: Path, monkeypatch) -> None:
    """With a fleet served, a column may name a fleet model by its router_name (stored under the fleet
    name); a model the fleet does not serve is left out, with a note."""
    import yaml

    from routerops.db import session_scope
    from routerops.orchestration.cli import cli
    from routerops.serving.cascade import load_cascade_config

    def fleet(models: list[dict]) -> Path:
        path = tmp_path / f"fleet{len(models)}.yaml"
        path.write_text(yaml.safe_dump({"models": [{"backend": "openai", "base_url": "http://127.0.0.1:9/v1",
                                                     **m} for m in models]}))
        return path

    # "weak" is served as "cheap-model" (its router_name), "strong" under its own name
    monkeypatch.setenv("ROUTEROPS_FLEET_FILE", str(fleet([
        {"name": "strong", "price_in": 10, "price_out": 30},
        {"name": "cheap-model", "router_name": "weak", "price_in": 0.1, "price_out": 0.2}])))
    args = ["cascade", "calibrate", "--per-category", "--table", str(FIXTURE), "--match", "strong",
            "--grid-size", "5", "--train-frac", "0.95"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    with session_scope(settings) as s:
        config = load_cascade_config(s)
    assert config.plans["easy"].models[0] == "cheap-model" and config.plans["hard"].models == ["strong"]
    assert config.models == ["cheap-model", "strong"]  # cheapest first, by the fleet's prices
    # a fleet without the weak model: it is left out, every plan is the strong model
    monkeypatch.setenv("ROUTEROPS_FLEET_FILE", str(fleet([{"name": "strong", "price_in": 10, "price_out": 30}])))
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "left out, not served by the fleet" in r.output and ": weak" in r.output
    with session_scope(settings) as s:
        config = load_cascade_config(s)
    assert {p: plan.models for p, plan in config.plans.items()} == {"easy": ["strong"], "hard": ["strong"]}
