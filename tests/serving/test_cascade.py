"""The cascade: threshold/ladder calibration against hand-computed tables, the runtime rule
(escalate exactly when the probe's P(good) < threshold) over recorded backends, the stored config,
and the `routerops cascade` CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from routerops.backends.base import GenerationParams
from routerops.backends.replay import ReplayBackend
from routerops.serving.cascade import (
    CascadeConfig,
    CascadeConfigError,
    CascadeStep,
    load_cascade_config,
    run_cascade,
    save_cascade_config,
)
from routerops.training.cascade_eval import (
    NEVER,
    OutcomeTable,
    candidate_ladders,
    load_routerbench,
    response_text,
    search,
    simulate,
)


# --- calibration: hand-computed cases ---------------------------------------------------------
def two_model_table() -> OutcomeTable:
    # 4 queries. weak: correct 1,1,0,0; P(good) .9,.6,.4,.2; cost 1 each. strong: correct 1,1,1,0; cost 10.
    return OutcomeTable(
        ["weak", "strong"],
        correct={"weak": np.array([1, 1, 0, 0.]), "strong": np.array([1, 1, 1, 0.])},
        cost={"weak": np.ones(4), "strong": np.full(4, 10.0)},
        score={"weak": np.array([.9, .6, .4, .2]), "strong": np.zeros(4)},
    )


TWO_GRIDS = {"weak": np.array([0.0, 0.3, 0.5, 0.7, NEVER]), "strong": np.array([0.0])}


def test_two_model_cascade_by_hand():
    # Worked by hand, weak -> strong with threshold t (accept the weak answer iff score >= t):
    #   t=0   : all weak                          quality 2/4 = .50, cost 1
    #   t=.3  : q4 escalates (strong wrong there) quality .50,       cost 1 + 10/4  = 3.5
    #   t=.5  : q3, q4 escalate                   quality 3/4 = .75, cost 1 + 20/4  = 6
    #   t=.7  : q2, q3, q4 escalate               quality .75,       cost 1 + 30/4  = 8.5
    #   never : all escalate                      quality .75,       cost 11
    # and the single models: weak .50 @ 1, strong .75 @ 10.
    t = two_model_table()
    for thr, (q, c) in {0.0: (.5, 1), .3: (.5, 3.5), .5: (.75, 6), .7: (.75, 8.5), NEVER: (.75, 11)}.items():
        assert simulate(t, ["weak", "strong"], [thr]) == pytest.approx((q, c))
    # budget 5: nothing above .50 fits; .50 is cheapest as weak alone (cost 1)
    plan = search(t, budget=5, grids=TWO_GRIDS)
    assert (plan.quality, plan.cost) == pytest.approx((.5, 1.0)) and plan.models == ("weak",)
    # budget 6: t=.5 reaches .75 at exactly 6
    plan = search(t, budget=6, grids=TWO_GRIDS)
    assert plan.models == ("weak", "strong") and plan.thresholds == (0.5,)
    assert (plan.quality, plan.cost) == pytest.approx((.75, 6.0))
    # quality target .75 (the strong model's): cheapest is t=.5 at 6, not strong alone at 10
    plan = search(t, quality_target=.75, grids=TWO_GRIDS)
    assert plan.models == ("weak", "strong") and plan.thresholds == (0.5,) and plan.cost == pytest.approx(6.0)
    # unreachable target / budget below the cheapest model
    assert search(t, quality_target=.9, grids=TWO_GRIDS) is None
    assert search(t, budget=.5, grids=TWO_GRIDS) is None


def three_model_table() -> OutcomeTable:
    #        A (cost 1)        B (cost 3)        C (cost 10)
    #  q1  right, p=.8       right, p=.9       right
    #  q2  wrong, p=.3       right, p=.7       right
    #  q3  wrong, p=.6       wrong, p=.2       right
    #  q4  wrong, p=.2       wrong, p=.4       wrong
    return OutcomeTable(
        ["A", "B", "C"],
        correct={"A": np.array([1, 0, 0, 0.]), "B": np.array([1, 1, 0, 0.]), "C": np.array([1, 1, 1, 0.])},
        cost={"A": np.ones(4), "B": np.full(4, 3.0), "C": np.full(4, 10.0)},
        score={"A": np.array([.8, .3, .6, .2]), "B": np.array([.9, .7, .2, .4]), "C": np.zeros(4)},
    )


def test_three_model_ladder_search_by_hand():
    t = three_model_table()
    grids = {m: np.array([0.0, 0.5, NEVER]) for m in "ABC"}
    # A->B->C at (.5, .5): q1 A (right, cost 1); q2 A->B (right, 4); q3 A accepts (wrong, 1); q4 A->B->C (wrong, 14)
    assert simulate(t, "ABC", (.5, .5)) == pytest.approx((.5, 5.0))
    # Quality >= .75 needs q3 right, which only C gets, and A wrongly accepts q3 at t=.5, so A must
    # always escalate (adds cost 1). B->C at .5: q1, q2 B (3 each), q3, q4 B->C (13 each) = 32/4 = 8,
    # cheaper than A->B->C (inf, .5) = 9 and C alone = 10.
    plan = search(t, quality_target=.75, grids=grids)
    assert plan.models == ("B", "C") and plan.thresholds == (0.5,)
    assert (plan.quality, plan.cost) == pytest.approx((.75, 8.0))
    # Budget 5: .75 costs at least 8 (above), so the best is .50; the cheapest .50 is A->B at .5:
    # q1 A (1), q2 A->B (4), q3 A (1), q4 A->B (4) = 10/4 = 2.5 (A->B->C with B accepting all ties it).
    plan = search(t, budget=5, grids=grids)
    assert (plan.quality, plan.cost) == pytest.approx((.5, 2.5))
    assert plan.models[:2] == ("A", "B") and plan.thresholds[0] == 0.5
    assert simulate(t, plan.models, plan.thresholds) == pytest.approx((plan.quality, plan.cost))
    # max_length=1 is model selection: under budget 5, B (.5 @ 3) beats A (.25 @ 1)
    assert search(t, budget=5, grids=grids, max_length=1).models == ("B",)


def test_candidate_ladders_cheaper_first_and_lengths():
    t = three_model_table()
    ladders = candidate_ladders(t, 3)
    assert ("C", "A") not in ladders and ("A", "C") in ladders and ("A", "B", "C") in ladders
    assert len(ladders) == 3 + 3 + 1  # singles, increasing pairs, the one increasing triple
    assert len(candidate_ladders(t, 3, cheaper_first=False)) == 3 + 6 + 6


def test_search_rejects_ambiguous_objective_and_bad_tables():
    t = two_model_table()
    with pytest.raises(ValueError, match="exactly one"):
        search(t, budget=1, quality_target=.5)
    with pytest.raises(ValueError, match="'strong' cost has 3 rows"):
        OutcomeTable(["weak", "strong"], t.correct, {"weak": np.ones(4), "strong": np.ones(3)}, t.score)
    with pytest.raises(ValueError, match="lacks columns"):
        OutcomeTable.from_frame(pd.DataFrame({"a": [1], "a|score": [.5]}))


# --- runtime cascade over recorded backends ---------------------------------------------------
PROMPTS = ["What is 2+2?", "Capital of France?", "Prove Fermat's last theorem."]


@pytest.fixture
def ladder(tmp_path: Path) -> list[CascadeStep]:
    rows = []
    for model, answers in {"tiny": ["4", "Lyon", "trivial"], "mid": ["4", "Paris", "see Wiles"],
                           "big": ["4", "Paris", "Wiles, 1995"]}.items():
        rows += [{"prompt": p, "output": a, "model": model} for p, a in zip(PROMPTS, answers, strict=True)]
    path = tmp_path / "recorded.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return [CascadeStep(ReplayBackend(path, "tiny"), 0.1, 0.2), CascadeStep(ReplayBackend(path, "mid"), 1.0, 2.0),
            CascadeStep(ReplayBackend(path, "big"), 10.0, 30.0)]


class ScriptedProbe:
    """P(good) fixed per (model, answer): the test decides what the probe says."""

    def __init__(self, scores: dict[tuple[str, str], float]):
        self.scores = scores
        self.calls: list[tuple[str, str]] = []

    def __call__(self, messages, generation) -> float:  # noqa: ANN001
        self.calls.append((generation.model, generation.text))
        return self.scores[(generation.model, generation.text)]


def msgs(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def test_two_step_escalates_exactly_when_probe_below_threshold(ladder):
    pair = ladder[:2]
    params = GenerationParams(max_new_tokens=8)
    for score in (0.0, 0.29, 0.3, 0.31, 1.0):
        probe = ScriptedProbe({("tiny", "Lyon"): score})
        r = run_cascade(msgs(PROMPTS[1]), params, pair, probe, [0.3])
        assert r.escalated is (score < 0.3), score  # equality accepts
        assert r.answered_by == ("mid" if score < 0.3 else "tiny")
        assert r.text == ("Paris" if score < 0.3 else "Lyon")
        assert [g.model for g in r.generations] == (["tiny", "mid"] if score < 0.3 else ["tiny"])
        assert r.probe_score == score and r.threshold == 0.3
        assert probe.calls == [("tiny", "Lyon")]  # the last step is never scored
        expected_cost = sum(s.cost(g) for s, g in zip(pair, r.generations, strict=False))
        assert r.cost == pytest.approx(expected_cost) and r.cost > 0


def test_three_steps_with_per_step_probes(ladder):
    tiny_probe = ScriptedProbe({("tiny", "4"): .9, ("tiny", "Lyon"): .2, ("tiny", "trivial"): .1})
    mid_probe = ScriptedProbe({("mid", "Paris"): .8, ("mid", "see Wiles"): .4})
    thresholds = [0.5, 0.6]
    expected = {PROMPTS[0]: ("tiny", "4"), PROMPTS[1]: ("mid", "Paris"), PROMPTS[2]: ("big", "Wiles, 1995")}
    for prompt, (model, text) in expected.items():
        r = run_cascade(msgs(prompt), GenerationParams(), ladder, [tiny_probe, mid_probe], thresholds)
        assert (r.answered_by, r.text) == (model, text)
        assert len(r.generations) == ["tiny", "mid", "big"].index(model) + 1
        assert r.scores[-1] is None if model == "big" else r.scores[-1] >= thresholds[len(r.scores) - 1]
    assert mid_probe.calls == [("mid", "Paris"), ("mid", "see Wiles")]


def test_cascade_rejects_bad_configuration(ladder):
    with pytest.raises(CascadeConfigError, match="needs 2 thresholds"):
        run_cascade(msgs(PROMPTS[0]), GenerationParams(), ladder, lambda m, g: 1.0, [0.5])
    with pytest.raises(CascadeConfigError, match="empty"):
        run_cascade(msgs(PROMPTS[0]), GenerationParams(), [], lambda m, g: 1.0, [])
    with pytest.raises(ValueError, match="NaN"):
        run_cascade(msgs(PROMPTS[0]), GenerationParams(), ladder[:2], lambda m, g: math.nan, [0.5])


def test_an_unavailable_rung_is_skipped_to_the_next(ladder):
    """A rung whose backend is down (nothing listens: a real connection refused) is skipped with
    skip_unavailable; without it the error propagates, as before."""
    from serving_helpers import free_port

    from routerops.backends.base import BackendError
    from routerops.backends.openai_http import OpenAIHTTPBackend

    down = CascadeStep(OpenAIHTTPBackend(f"http://127.0.0.1:{free_port()}/v1", "tiny", name="down", timeout_s=2,
                                         max_retries=1, backoff_s=0.01))
    probe = ScriptedProbe({("mid", "Paris"): 0.1, ("tiny", "Lyon"): 0.1})
    with pytest.raises(BackendError) as exc:
        run_cascade(msgs(PROMPTS[1]), GenerationParams(), [down, ladder[1]], probe, [0.5])
    assert exc.value.unavailable
    r = run_cascade(msgs(PROMPTS[1]), GenerationParams(), [down, *ladder[1:]], probe, [0.5, 0.5],
                    skip_unavailable=True)
    assert [i for i, _ in r.skipped] == [0] and r.steps == [1, 2] and r.answered_rung == 2
    assert (r.answered_by, r.text, r.escalated, r.probe_score) == ("big", "Paris", True, 0.1)
    # the last rung down: the doubted answer below it is the only one there is
    r = run_cascade(msgs(PROMPTS[1]), GenerationParams(), [ladder[0], down], probe, [0.5], skip_unavailable=True)
    assert (r.answered_by, r.text, r.escalated, r.steps, r.probe_score) == ("tiny", "Lyon", False, [0], 0.1)
    with pytest.raises(BackendError, match="every rung of the cascade is unavailable"):
        run_cascade(msgs(PROMPTS[1]), GenerationParams(), [down, down], probe, [0.5], skip_unavailable=True)


# --- stored configuration and CLI ---------------------------------------------------------------
def test_config_roundtrip_in_serving_state(settings):
    from routerops.db.session import session_scope

    with session_scope(settings) as s:
        assert load_cascade_config(s) is None
        save_cascade_config(s, CascadeConfig(["a", "b"], [NEVER], objective="manual"))
    with session_scope(settings) as s:
        got = load_cascade_config(s)
        assert got.models == ["a", "b"] and got.thresholds[0] > 1.0  # "always escalate" survives JSON
        save_cascade_config(s, CascadeConfig(["a", "b", "c"], [0.2, 0.7], budget=0.01))
    with session_scope(settings) as s:
        got = load_cascade_config(s)
        assert got.models == ["a", "b", "c"] and got.thresholds == [0.2, 0.7] and got.budget == 0.01
    with pytest.raises(CascadeConfigError, match="need 1 thresholds"):
        CascadeConfig(["a", "b"], [])
    with pytest.raises(CascadeConfigError, match="not a probability"):
        CascadeConfig(["a", "b"], [-0.5])


def table_csv(path: Path) -> Path:
    t = two_model_table()
    df = pd.DataFrame({**{m: t.correct[m] for m in t.models}, **{f"{m}|total_cost": t.cost[m] for m in t.models},
                       **{f"{m}|score": t.score[m] for m in t.models}})
    # the same four queries as train and as test: the test figures must equal the hand-computed ones
    df = pd.concat([df.assign(split="train"), df.assign(split="test")])
    df.to_csv(path, index=False)
    return path


def test_cli_calibrate_stores_what_serving_reads(settings, tmp_path):
    from routerops.db.session import session_scope
    from routerops.orchestration.cli import cli

    path = table_csv(tmp_path / "outcomes.csv")
    runner = CliRunner()
    result = runner.invoke(cli, ["cascade", "calibrate", "--table", str(path), "--match", "strong",
                                 "--grid-size", "5"])
    assert result.exit_code == 0, result.output
    with session_scope(settings) as s:
        config = load_cascade_config(s)
    # grid of 5 over scores (.2,.4,.6,.9) holds 0, the 3 inner quantiles, never; .75 needs q3 and q4
    # escalated and q1, q2 accepted: a threshold in (.4, .6]; the cheapest such plan costs 6.
    assert config.models == ["weak", "strong"] and 0.4 < config.thresholds[0] <= 0.6
    assert config.objective == "min_cost_at_quality" and config.quality_target == pytest.approx(.75)
    assert config.expected["test_cost"] == pytest.approx(6.0) and config.expected["test_quality"] == pytest.approx(.75)
    shown = runner.invoke(cli, ["cascade", "show"])
    assert shown.exit_code == 0 and json.loads(shown.output)["models"] == ["weak", "strong"]


def test_cli_calibrate_reports_bad_input(settings, tmp_path):
    from routerops.orchestration.cli import cli

    bad = tmp_path / "bad.csv"
    pd.DataFrame({"weak": [1, 0], "weak|total_cost": [1, 1]}).to_csv(bad, index=False)
    r = CliRunner().invoke(cli, ["cascade", "calibrate", "--table", str(bad), "--budget", "1"])
    assert r.exit_code != 0 and "|score" in r.output
    r = CliRunner().invoke(cli, ["cascade", "calibrate", "--table", str(table_csv(tmp_path / "t.csv")),
                                 "--budget", "0.5"])
    assert r.exit_code != 0 and "no cascade reaches mean cost <= 0.5" in r.output
    r = CliRunner().invoke(cli, ["cascade", "show"])
    assert r.exit_code != 0 and "no cascade calibrated" in r.output


# --- RouterBench tables -------------------------------------------------------------------------
def test_routerbench_tables_load(shared_data):
    tr = load_routerbench(shared_data / "routerbench", "train", ["winograde"])
    assert len(tr.models) == 11 and "gpt-4-1106-preview" in tr.models
    assert tr.frame[tr.models].isin([0.0, 1.0]).all().all()
    assert response_text("['A\\n']") == "A"
    with pytest.raises(FileNotFoundError, match="nope_train"):
        load_routerbench(shared_data / "routerbench", "train", ["nope"])
