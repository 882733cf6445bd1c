"""Cascade scorers for API-model answers (issue 14): agreement signals on hand-made answers, the
cross-encoder learning a separable rule, the scorer's MLflow round trip, ladder-aware run_cascade
with exploration, per-rung step logging, and threshold refits from logged steps (hand-computed;
registered as a challenger, never made live by themselves)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from routerops.backends.base import Generation, GenerationParams
from routerops.backends.replay import ReplayBackend
from routerops.models.cascade_scorer.features import (
    SIGNAL_NAMES,
    StepInput,
    agree,
    normalize_answer,
    signals,
    token_overlap,
)
from routerops.serving.cascade import (
    CascadeConfig,
    CascadeStep,
    load_cascade_config,
    run_cascade,
    save_cascade_config,
)


# --- agreement features -----------------------------------------------------------------------
def test_normalize_answer_finds_the_final_answer():
    assert normalize_answer("B") == normalize_answer("B\n") == normalize_answer("(B)") == "B"
    assert normalize_answer("B) house") == "B"
    assert normalize_answer("The answer is C.") == "C"
    assert normalize_answer("A function that sorts") == "a function that sorts"  # a word, not choice A
    assert normalize_answer("Here:\n```python\ndef f(x):\n    return x\n```\nDone.") == "def f(x): return x"
    assert normalize_answer("42.") == normalize_answer("42") == "42.0"
    assert normalize_answer("  Paris.  ") == "paris"
    assert normalize_answer(None) == normalize_answer("") == ""


def test_agreement_and_overlap_on_hand_made_answers():
    assert agree("B", "B\n") == 1.0 and agree("B", "(b)") == 0.0 and agree("A", "The answer is A") == 1.0
    # {def, f, (, x, ), :, return} vs {def, f, (, y, ), :, return}: 6 shared of 8
    assert token_overlap("```python\ndef f(x): return x\n```", "```\ndef f(y): return y\n```") == pytest.approx(6 / 8)
    assert token_overlap("", "") == 1.0 and token_overlap("yes", "") == 0.0

    first = dict(zip(SIGNAL_NAMES, signals(StepInput("q?", "B", "m1")), strict=True))
    assert first["has_prev"] == 0 and first["agree_prev"] == 0 and first["has_logprobs"] == 0
    assert first["log_length"] == pytest.approx(math.log(2))

    third = dict(zip(SIGNAL_NAMES, signals(StepInput("q?", "B", "m3", previous=["B", "C"], second_sample="B",
                                                     token_logprobs=[-0.1, -0.5, float("nan")])), strict=True))
    assert third["has_prev"] == 1 and third["agree_prev"] == 0.0  # the rung just before said C
    assert third["agree_earlier"] == 0.5  # one of the two earlier rungs said B
    assert third["has_sample"] == 1 and third["agree_sample"] == 1.0
    assert third["has_logprobs"] == 1 and third["logprob_mean"] == pytest.approx(-0.3)
    assert third["logprob_min"] == pytest.approx(-0.5)  # NaN log-probs are ignored


def test_vectorized_signals_match_row_by_row():
    from routerops.training.cascade_scorer.routerbench import SignalCache, Split

    answers = {"a": ["B", "x = 1", "C"], "b": ["B\n", "x = 2", "A"], "c": ["(B)", "x = 1", "C"]}
    split = Split(["q1", "q2", "q3"], np.array(["t"] * 3), {m: np.ones(3) for m in answers},
                  {m: np.ones(3) for m in answers}, answers)
    cache = SignalCache(split)
    for rung in range(3):
        got = cache.rung_signals(("a", "b", "c"), rung)
        for i in range(3):
            expected = signals(StepInput(f"q{i + 1}", answers["abc"[rung]][i], "abc"[rung],
                                         previous=[answers[m][i] for m in "abc"[:rung]]))
            assert got[i] == pytest.approx(expected), (rung, i)


# --- the cross-encoder ------------------------------------------------------------------------
def separable_fixture(n: int, seed: int) -> tuple[list[str], list[str], list[float]]:
    """Correct iff the answer commits ("Certainly, ...") rather than hedges ("Perhaps ..."): separable."""
    rng = np.random.default_rng(seed)
    cities = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Tokyo", "Quito", "Dakar"]
    qs, ans, ys = [], [], []
    for _ in range(n):
        a, b = rng.choice(len(cities), 2, replace=False)
        right = bool(rng.random() < 0.5)
        qs.append(f"Which city is the capital near {cities[a]}?")
        ans.append(f"Certainly, it is {cities[b]}." if right else f"Perhaps it is {cities[b]}.")
        ys.append(float(right))
    return qs, ans, ys


def test_cross_encoder_fine_tuning_learns_a_separable_rule(tmp_path):
    from routerops.models.cascade_scorer.cross_encoder import CrossEncoderScorer, TrainConfig
    from routerops.models.probes.probe import auroc

    q, a, y = separable_fixture(64, seed=1)
    qt, at, yt = separable_fixture(32, seed=2)
    ce = CrossEncoderScorer.base(max_length=24, layers=2)  # the first 2 of MiniLM's 6 layers: a fast fixture
    before = auroc(yt, ce.predict(qt, ["m"] * len(qt), at))
    stats = ce.fit(q, ["m"] * len(q), a, y, TrainConfig(max_length=24, epochs=4, batch_size=8, lr=2e-4, threads=1))
    after = auroc(yt, ce.predict(qt, ["m"] * len(qt), at))
    assert after > 0.9 and after > before + 0.2, (before, after)
    assert stats["train_examples"] == 64 and stats["epochs"] == 4 and stats["train_seconds"] > 0
    loaded = CrossEncoderScorer.load(ce.save(tmp_path / "ce"))
    assert loaded.model.config.num_hidden_layers == 2
    assert loaded.logits(qt, ["m"] * len(qt), at) == pytest.approx(ce.logits(qt, ["m"] * len(qt), at), abs=1e-5)
    with pytest.raises(ValueError, match="both correct and wrong"):
        CrossEncoderScorer.base().fit(["q"] * 3, ["m"] * 3, ["a"] * 3, [1.0] * 3)


# --- the scorer: combiners, MLflow, run_cascade -------------------------------------------------
def agreement_scorer():
    """A 3-rung ladder's scorer fit on synthetic steps where agreeing with the rung before means correct."""
    from routerops.models.cascade_scorer.model import CascadeScorer, fit_combiner

    rng = np.random.default_rng(0)
    combiners = []
    for rung in range(2):
        rows, ys = [], []
        for _ in range(200):
            ok = rng.random() < 0.6
            prev = ["B"] if rung else []
            ans = ("B" if ok else "C") if rung else rng.choice(["A", "B"])
            rows.append(signals(StepInput("q", ans, f"m{rung}", previous=prev)))
            ys.append(float(ok) if rung else float(rng.random() < 0.5))
        combiners.append(fit_combiner(np.array(rows), np.array(ys)))
    return CascadeScorer(["m0", "m1", "m2"], combiners, CascadeScorer.feature_names_for(False), None,
                         {"note": "synthetic"})


def test_scorer_registers_as_challenger_and_loads_back(settings):
    from routerops import registry
    from routerops.models.cascade_scorer.registry import SCORER_MODEL_NAME, load_cascade_scorer
    from routerops.training.cascade_scorer.register import log_cascade_scorer

    scorer = agreement_scorer()
    agreeing = [StepInput("q", "B", "m1", previous=["B"])]
    disagreeing = [StepInput("q", "C", "m1", previous=["B"])]
    assert scorer.score(1, agreeing)[0] > 0.9 and scorer.score(1, disagreeing)[0] < 0.1
    run_id, version = log_cascade_scorer(scorer, settings, metrics={"test_auroc_rung1": 0.97}, params={"k": 1})
    assert version == "1"
    assert registry.version_by_alias(SCORER_MODEL_NAME, registry.CHALLENGER, settings).version == "1"
    assert registry.version_by_alias(SCORER_MODEL_NAME, registry.CHAMPION, settings) is None  # a person approves
    loaded = load_cascade_scorer(f"models:/{SCORER_MODEL_NAME}@challenger", settings)
    assert loaded.models == ["m0", "m1", "m2"] and loaded.version == "1"
    assert loaded.score(1, agreeing + disagreeing) == pytest.approx(scorer.score(1, agreeing + disagreeing))
    with pytest.raises(ValueError, match="rung 2 has no scorer"):
        loaded.score(2, agreeing)


PROMPTS = ["What is 2+2? A) 3 B) 4", "Capital of France? A) Paris B) Lyon"]


@pytest.fixture
def ladder(tmp_path: Path) -> list[CascadeStep]:
    rows = []
    for model, answers in {"m0": ["B", "B"], "m1": ["B", "A"], "m2": ["B", "A"]}.items():
        rows += [{"prompt": p, "output": a, "model": model} for p, a in zip(PROMPTS, answers, strict=True)]
    path = tmp_path / "recorded.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return [CascadeStep(ReplayBackend(path, m), 1.0, 2.0) for m in ("m0", "m1", "m2")]


def test_run_cascade_gives_the_scorer_the_history_and_explores(ladder):
    scorer = agreement_scorer()
    msgs = [{"role": "user", "content": PROMPTS[1]}]
    # m0 says B (scored ~.5 < .7: escalate); m1 says A, disagreeing with B: low score, escalate to m2
    r = run_cascade(msgs, GenerationParams(), ladder, scorer, [0.7, 0.5])
    assert r.answered_by == "m2" and len(r.generations) == 3 and r.scores[1] < 0.1
    msgs = [{"role": "user", "content": PROMPTS[0]}]
    r = run_cascade(msgs, GenerationParams(), ladder, scorer, [0.7, 0.5])
    assert r.answered_by == "m1" and r.scores[1] > 0.9 and len(r.generations) == 2  # m1 agreed with m0
    # exploring: every rung generates, the answer is still the one the thresholds chose
    e = run_cascade(msgs, GenerationParams(), ladder, scorer, [0.7, 0.5], explore=True)
    assert e.answered_by == "m1" and e.answered_step == 1 and len(e.generations) == 3 and e.explored
    assert e.cost == pytest.approx(sum(s.cost(g) for s, g in zip(ladder, e.generations, strict=True)))
    assert e.text == r.text and e.probe_score == pytest.approx(r.probe_score)


def test_request_log_writes_one_row_per_step(settings):
    from sqlalchemy import select

    from routerops.db import session_scope
    from routerops.db.models import CascadeStepLog, RequestLog
    from routerops.models.cascade_log import StepRecord
    from routerops.serving.request_log import LogEntry, write_entry

    steps = [StepRecord(0, "m0", 0.3, 0.5, False, 0.001).to_dict(), StepRecord(1, "m1", None, None, True, 0.01).to_dict()]
    write_entry(settings, LogEntry("r1", "p", "answer", "cascade", "cascade", "m1", None, None, None, 1.0, None, 3, 4,
                                   0.011, None, extra={"cascade_models": ["m0", "m1"], "cascade_steps": steps}))
    with session_scope(settings) as s:
        rows = s.scalars(select(CascadeStepLog).order_by(CascadeStepLog.step)).all()
        assert [(r.step, r.model, r.score, r.accepted, r.ladder) for r in rows] == [
            (0, "m0", 0.3, False, ["m0", "m1"]), (1, "m1", None, True, ["m0", "m1"])]
        assert "cascade_steps" not in s.get(RequestLog, "r1").extra  # kept once, in its own table


# --- threshold refit from logged steps ---------------------------------------------------------
# The hand-computed table of tests/serving/test_cascade.py, now as logged traffic: 4 explored requests,
# weak (cost 1): correct 1,1,0,0 with scores .9,.6,.4,.2; strong (cost 10): correct 1,1,1,0.
# Accepting the weak answer iff score >= t:  t <= .2: quality .50 cost 1;  .2 < t <= .4: .50 @ 3.5;
# .4 < t <= .6: .75 @ 6;  .6 < t <= .9: .75 @ 8.5;  t > .9: .75 @ 11.
LOGGED = [(0.9, 1, 1), (0.6, 1, 1), (0.4, 0, 1), (0.2, 0, 0)]


def log_requests(settings, live: CascadeConfig, *, explored: bool = True, prefix: str = "e") -> None:  # noqa: ANN001
    from routerops.db import session_scope
    from routerops.models.cascade_log import StepRecord, label_steps, write_steps

    with session_scope(settings) as s:
        for i, (score, _weak_ok, _strong_ok) in enumerate(LOGGED):
            rid = f"{prefix}{i}"
            accepted_weak = score >= live.thresholds[0]
            write_steps(s, rid, live.models, [
                StepRecord(0, "weak", score, live.thresholds[0], accepted_weak, 1.0, explored=explored).to_dict(),
                StepRecord(1, "strong", None, None, not accepted_weak, 10.0, explored=explored).to_dict()])
        s.flush()
        for i, (_score, weak_ok, strong_ok) in enumerate(LOGGED):
            label_steps(s, f"{prefix}{i}", weak_ok, step=0, source="judge:test")
            label_steps(s, f"{prefix}{i}", strong_ok, step=1, source="judge:test")


def live_config(settings) -> CascadeConfig:  # noqa: ANN001
    from routerops.db import session_scope

    live = CascadeConfig(models=["weak", "strong"], thresholds=[0.95], objective="max_quality_under_budget",
                         budget=6.0, explore_rate=0.1)
    with session_scope(settings) as s:
        save_cascade_config(s, live)
    return live


def test_refit_picks_the_hand_computed_thresholds(settings):
    from routerops.training.cascade_refit import RefitError, refit_cascade_thresholds

    live = live_config(settings)
    log_requests(settings, live)
    log_requests(settings, live, explored=False, prefix="u")  # stopped-early traffic: not an unbiased sample
    res = refit_cascade_thresholds(settings, budget=6.0, min_requests=4, register=False)
    assert res.n_requests == 4 and res.skipped["not_explored"] == 4
    assert 0.4 < res.config.thresholds[0] <= 0.6  # the band that gives .75 at cost 6
    assert res.config.expected["logged_quality"] == pytest.approx(0.75)
    assert res.config.expected["logged_cost"] == pytest.approx(6.0)
    res = refit_cascade_thresholds(settings, budget=5.0, min_requests=4, register=False)
    assert res.config.thresholds[0] <= 0.2 and res.config.expected["logged_cost"] == pytest.approx(1.0)
    res = refit_cascade_thresholds(settings, quality_target=0.75, min_requests=4, register=False)
    assert 0.4 < res.config.thresholds[0] <= 0.6
    with pytest.raises(RefitError, match="only 4 labelled requests"):
        refit_cascade_thresholds(settings, budget=6.0, min_requests=5, register=False)
    with pytest.raises(RefitError, match="no thresholds"):
        refit_cascade_thresholds(settings, quality_target=0.9, min_requests=4, register=False)


def test_refit_job_registers_a_challenger_and_never_touches_the_live_config(settings):
    from routerops import registry
    from routerops.db import session_scope
    from routerops.orchestration.cli import cli
    from routerops.training.cascade_refit import CONFIG_MODEL_NAME, load_registered_config, refit_cascade_job

    assert refit_cascade_job(settings)["status"] == "skipped"  # no live config yet
    live = live_config(settings)
    log_requests(settings, live)
    out = refit_cascade_job(settings)  # the live config's own objective: budget 6
    assert out["status"] == "skipped" and "only 4" in out["reason"]  # default minimum: 50 requests
    result = CliRunner().invoke(cli, ["cascade", "refit", "--min-requests", "4"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("{"))
    assert json.loads(line)["version"] == "1"
    assert registry.version_by_alias(CONFIG_MODEL_NAME, registry.CHALLENGER, settings).version == "1"
    assert registry.version_by_alias(CONFIG_MODEL_NAME, registry.CHAMPION, settings) is None
    challenger, number = load_registered_config("challenger", settings)
    assert number == "1" and 0.4 < challenger.thresholds[0] <= 0.6 and challenger.explore_rate == 0.1
    with session_scope(settings) as s:
        assert load_cascade_config(s).thresholds == [0.95]  # the live config did not move
    # activating without an approval fails; after a person approves, activation makes it live
    assert CliRunner().invoke(cli, ["cascade", "activate"]).exit_code != 0
    registry.approve(CONFIG_MODEL_NAME, "1", approved_by="tester", settings=settings)
    result = CliRunner().invoke(cli, ["cascade", "activate"])
    assert result.exit_code == 0, result.output
    with session_scope(settings) as s:
        assert load_cascade_config(s).thresholds == challenger.thresholds


def test_label_cli_attaches_outcomes_and_names_bad_rows(settings, tmp_path):
    from routerops.db import session_scope
    from routerops.db.models import CascadeStepLog
    from routerops.models.cascade_log import StepRecord, write_steps
    from routerops.orchestration.cli import cli

    with session_scope(settings) as s:
        write_steps(s, "r1", ["weak", "strong"], [StepRecord(0, "weak", 0.8, 0.5, True, 1.0).to_dict()])
    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join([json.dumps({"request_id": "r1", "correct": 1}),
                               json.dumps({"request_id": "nope", "correct": 1}),
                               json.dumps({"request_id": "r1", "correct": 3})]))
    result = CliRunner().invoke(cli, ["cascade", "label", str(path), "--source", "judge:gpt-4"])
    assert result.exit_code == 0, result.output
    assert "labelled 1 step" in result.output and "no logged cascade steps" in result.output
    assert "not in [0, 1]" in result.output
    with session_scope(settings) as s:
        row = s.query(CascadeStepLog).one()
        assert (row.correct, row.label_source) == (1.0, "judge:gpt-4")


def test_generation_logprobs_reach_the_scorer():
    scorer = agreement_scorer()
    gens = [Generation("B", "m0", token_logprobs=[-0.2, -0.4])]
    p = scorer.score_step(0, [{"role": "user", "content": "q"}], gens)
    x = scorer.features([StepInput("q", "B", "m0", token_logprobs=[-0.2, -0.4])])
    assert x[0, SIGNAL_NAMES.index("has_logprobs")] == 1.0
    assert p == pytest.approx(float(scorer.combiners[0].predict_proba(x)[0, 1]))


# --- second opinions ("A+B": A's answer, checked against B's; "A+A": against a second sample) ------
def test_second_opinion_rung_names():
    from routerops.models.cascade_scorer.features import base_models, rung_parts, short_rung

    assert rung_parts("org/a") == ("org/a", None) and rung_parts("org/a+b") == ("org/a", "b")
    assert rung_parts("a+a") == ("a", "a")  # a second sample of the same model
    for bad in ("+b", "a+", "a+b+c"):
        with pytest.raises(ValueError, match="MODEL\\+OTHER_MODEL"):
            rung_parts(bad)
    assert base_models(["a+b", "b", "c", "c+a"]) == ["a", "b", "c"]
    assert short_rung("mistralai/mixtral+zero-one-ai/Yi") == "mixtral+Yi"


def test_second_opinion_rung_in_routerbench_columns_and_signals():
    from routerops.models.cascade_scorer.features import agree, token_overlap
    from routerops.training.cascade_scorer.routerbench import (
        SignalCache,
        Split,
        alias_rungs,
        candidate_ladders,
    )

    answers = {"a": ["B", "x = 1", "C"], "b": ["B\n", "x = 2", "A"], "c": ["(B)", "x = 1", "C"]}
    split = Split(["q1", "q2", "q3"], np.array(["t"] * 3), {"a": np.array([1, 0, 1.]), "b": np.ones(3),
                                                             "c": np.zeros(3)},
                  {"a": np.ones(3), "b": np.full(3, 2.0), "c": np.full(3, 4.0)}, answers)
    split.add_rung("a+b")
    # the rung's outcome and answer are a's, its cost a's plus b's
    assert split.correct["a+b"].tolist() == [1, 0, 1] and split.cost["a+b"].tolist() == [3, 3, 3]
    assert split.answers["a+b"] == answers["a"] and split.take(np.array([2])).partner == {"a+b": "b"}
    got = SignalCache(split).rung_signals(("a+b", "c"), 0)
    cols = {name: got[:, i] for i, name in enumerate(SIGNAL_NAMES)}
    assert cols["has_prev"].tolist() == [0, 0, 0] and cols["has_sample"].tolist() == [1, 1, 1]
    assert cols["agree_sample"].tolist() == [agree(x, y) for x, y in zip(answers["a"], answers["b"], strict=True)] \
        == [1.0, 0.0, 0.0]
    assert cols["overlap_sample"] == pytest.approx([token_overlap(x, y) for x, y in zip(answers["a"], answers["b"],
                                                                                           strict=True)])
    for i in range(3):  # the same row serving computes from a second sample
        assert got[i] == pytest.approx(signals(StepInput(f"q{i + 1}", answers["a"][i], "a+b",
                                                         second_sample=answers["b"][i])))
    # text-scorer logits are the primary's
    assert alias_rungs({"a": np.array([0.5])}, ["a+b", "c"])["a+b"].tolist() == [0.5]
    # a second opinion is only a first rung, and no ladder calls a model twice
    ladders = candidate_ladders(["a", "b", "c", "a+b"], {"a": 1, "b": 2, "c": 4, "a+b": 3}, max_length=3, last="c")
    assert ("a+b", "c") in ladders and all("a+b" not in lad[1:] for lad in ladders)
    assert not any("a+b" in lad and ("a" in lad or "b" in lad) for lad in ladders)


def test_routerbench_loads_second_opinion_rungs(shared_data):
    from routerops.training.cascade_scorer.routerbench import load_data

    a, b = "mistralai/mixtral-8x7b-chat", "zero-one-ai/Yi-34B-Chat"
    data = load_data(shared_data / "routerbench", ["arc_challenge"], [a, f"{a}+{b}", "gpt-4-1106-preview"])
    for split in (data.ce_train, data.fit, data.test):
        assert np.array_equal(split.correct[f"{a}+{b}"], split.correct[a])
        assert split.cost[f"{a}+{b}"] == pytest.approx(split.cost[a] + split.cost[b])
        assert split.partner == {f"{a}+{b}": b}
    with pytest.raises(ValueError, match="one answer per model"):
        load_data(shared_data / "routerbench", ["arc_challenge"], [f"{a}+{a}", "gpt-4-1106-preview"])


def second_opinion_scorer():
    """Rung 0 ("m0+m1") is right exactly when its answer agrees with the second opinion (and half the
    time when there is none)."""
    from routerops.models.cascade_scorer.model import CascadeScorer, fit_combiner

    rng = np.random.default_rng(0)
    rows, ys = [], []
    for _ in range(300):
        ans, other = rng.choice(["A", "B"]), rng.choice(["A", "B", None])
        rows.append(signals(StepInput("q", ans, "m0+m1", second_sample=other)))
        ys.append(float(ans == other) if other is not None else float(rng.random() < 0.5))
    return CascadeScorer(["m0+m1", "m2"], [fit_combiner(np.array(rows), np.array(ys))],
                         CascadeScorer.feature_names_for(False), None, {"note": "synthetic"})


def test_run_cascade_takes_a_second_opinion(ladder, tmp_path):
    m0, m1, m2 = (s.backend for s in ladder)
    steps = [CascadeStep(m0, 1.0, 2.0, partner=m1, partner_price_in=3.0, partner_price_out=5.0),
             CascadeStep(m2, 10.0, 20.0)]
    scorer = second_opinion_scorer()
    # PROMPTS[0]: m0 says B and m1 agrees: m0's answer is kept, both are paid for
    r = run_cascade([{"role": "user", "content": PROMPTS[0]}], GenerationParams(), steps, scorer, [0.5])
    g = r.generation
    assert r.answered_by == "m0" and r.text == "B" and r.scores[0] > 0.9 and len(r.generations) == 1
    assert g.extra["second_sample"] == "B" and g.extra["second_opinion"]["model"] == "m1"
    own = steps[0].cost(g)
    other = (g.extra["second_opinion"]["prompt_tokens"] * 3.0 + g.extra["second_opinion"]["completion_tokens"] * 5.0) / 1e6
    assert other > 0 and r.cost == pytest.approx(own + other) == pytest.approx(r.step_costs[0])
    # PROMPTS[1]: m0 says B, m1 says A: doubted, escalated to m2
    r = run_cascade([{"role": "user", "content": PROMPTS[1]}], GenerationParams(), steps, scorer, [0.5])
    assert r.answered_by == "m2" and r.scores[0] < 0.1 and len(r.step_costs) == 2
    # a partner that cannot answer drops the signal, not the request
    silent = ReplayBackend(_recording(tmp_path, {"m9": {"unrelated prompt": "A"}}), "m9")
    lost = [CascadeStep(m0, 1.0, 2.0, partner=silent), steps[1]]
    r = run_cascade([{"role": "user", "content": PROMPTS[0]}], GenerationParams(), lost, scorer, [0.5])
    assert "second_sample" not in r.generations[0].extra and [i for i, _ in r.second_opinion_errors] == [0]
    assert 0.1 < r.scores[0] < 0.9  # no second opinion: the scorer cannot tell


def _recording(tmp_path: Path, answers: dict[str, dict[str, str]]) -> Path:
    path = tmp_path / "other.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p, "output": a, "model": m})
                              for m, by_prompt in answers.items() for p, a in by_prompt.items()))
    return path


def test_a_second_sample_of_the_same_model_is_drawn_at_a_temperature(ladder):
    m0 = ladder[0].backend
    step = CascadeStep(m0, 1.0, 2.0, partner=m0, partner_price_in=1.0, partner_price_out=2.0)
    assert step.second_sample and not CascadeStep(m0, partner=ladder[1].backend).second_sample
    p = step.partner_params(GenerationParams(temperature=0.0, seed=7, max_new_tokens=9))
    assert p.temperature == pytest.approx(0.7) and p.seed == 8 and p.max_new_tokens == 9
    assert step.partner_params(GenerationParams(temperature=1.2)).temperature == pytest.approx(1.2)
    assert CascadeStep(m0, partner=ladder[1].backend).partner_params(GenerationParams()) == GenerationParams()
    seen = []
    r = run_cascade([{"role": "user", "content": PROMPTS[0]}], GenerationParams(seed=1), [step, ladder[2]],
                    second_opinion_scorer(), [0.5],
                    ask_partner=lambda i, s, params: seen.append((i, params.temperature, params.seed))
                    or s.partner.generate([{"role": "user", "content": PROMPTS[0]}], params))
    assert seen == [(0, 0.7, 2)] and r.generation.extra["second_sample"] == "B"
    assert r.cost == pytest.approx(2 * step.cost(r.generation))


def test_task_aware_plans_pick_the_hand_computed_combination():
    """Two tasks of 2 queries, weak (cost 1) -> strong (cost 10), thresholds "accept all" (0) or
    "escalate all" (NEVER). Task x: weak always right; task y: weak always wrong (scored just as
    high). One plan for both: quality 1 costs 11. Per task: accept on x (q 1, c 1), escalate on y
    (q 1, c 11): pooled quality 1 at cost 6. On test, x's weak is right once of twice: 0.75 at 6."""
    from routerops.training.cascade_eval import NEVER, OutcomeTable
    from routerops.training.cascade_scorer.routerbench import LadderFit, choose, choose_per_task

    def table(weak_ok: list[float]) -> OutcomeTable:
        return OutcomeTable(["weak", "strong"], {"weak": np.array(weak_ok), "strong": np.ones(4)},
                            {"weak": np.ones(4), "strong": np.full(4, 10.0)},
                            {"weak": np.array([.9, .8, .9, .8]), "strong": np.zeros(4)})

    tasks = np.array(["x", "x", "y", "y"])
    grids = [np.array([0.0, NEVER])]
    fit_t, test_t = table([1, 1, 0, 0]), table([1, 0, 0, 0])
    f = LadderFit(("weak", "strong"), "signals", grids, np.array([0.5, 1.0]), np.array([1.0, 11.0]), fit_t, test_t)
    pooled = choose([f], quality_target=1.0)
    assert pooled.train_cost == pytest.approx(11.0)
    plans = choose_per_task([f], tasks, tasks, quality_target=1.0)
    assert plans.plans["x"].thresholds == (0.0,) and plans.plans["y"].thresholds == (NEVER,)
    assert (plans.train_quality, plans.train_cost) == pytest.approx((1.0, 6.0))
    assert (plans.test_quality, plans.test_cost) == pytest.approx((0.75, 6.0))
    assert choose_per_task([f], tasks, tasks, quality_target=1.01) is None


def test_cascade_config_checks_second_opinion_rungs():
    from routerops.serving.cascade import CascadeConfigError

    ok = CascadeConfig(models=["weak+weak", "strong"], thresholds=[0.5])
    assert CascadeConfig.from_dict(ok.to_dict()).models == ["weak+weak", "strong"]
    with pytest.raises(CascadeConfigError, match="MODEL\\+OTHER_MODEL"):
        CascadeConfig(models=["weak+", "strong"], thresholds=[0.5])
    with pytest.raises(CascadeConfigError, match="last rung 'strong\\+weak' is never scored"):
        CascadeConfig(models=["weak", "strong+weak"], thresholds=[0.5])


def test_per_category_plans_by_budget_and_the_held_out_margin():
    """The same two tasks as above, 4 queries each. With a budget, the best pooled quality within it;
    the held-out margin is 0 when the train halves agree (every row of a task alike)."""
    from routerops.training.cascade_eval import OutcomeTable
    from routerops.training.cascade_plans import checked_margin, choose_per_task, table_fits

    def table(weak_ok: list[float]) -> OutcomeTable:
        n = len(weak_ok)
        return OutcomeTable(["weak", "strong"], {"weak": np.array(weak_ok, float), "strong": np.ones(n)},
                            {"weak": np.ones(n), "strong": np.full(n, 10.0)},
                            {"weak": np.full(n, 0.9), "strong": np.zeros(n)})

    tasks = np.array(["x"] * 4 + ["y"] * 4)
    fits = table_fits(table([1, 1, 1, 1, 0, 0, 0, 0]), None, [("weak",), ("strong",), ("weak", "strong")], grid_size=3)
    # budget 6: x accepts the weak answer (cost 1), y goes to strong alone (10): pooled 5.5, quality 1
    tp = choose_per_task(fits, tasks, tasks, budget=6.0)
    assert (tp.train_quality, tp.train_cost) == pytest.approx((1.0, 5.5))
    assert tp.plans["x"].ladder[0] == "weak" and tp.plans["y"].ladder == ("strong",)
    assert choose_per_task(fits, tasks, tasks, budget=0.5) is None
    assert checked_margin(fits, tasks, quality_target=1.0, margins=[0.0, 0.1]) == 0.0
