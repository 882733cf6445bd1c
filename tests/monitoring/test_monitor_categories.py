"""Per-category figures of a monitor run, on arrays worked out by hand."""

from __future__ import annotations

import pytest

from routerops.monitoring.categories import CategoryFigures, mlflow_metrics, per_category, table

# A: 5 traces, 4 labelled now. alpha .5 sends the first two to strong.
#    now:      weak 0 1 1 0, strong 1 1 1 1 -> q_weak .5, q_strong 1, routed 1 1 1 0 = .75, PGR .5
#    recorded (all 5 labelled): weak 0 0 1 0 0, strong 1 1 1 0 1 -> q_weak .2, q_strong .8,
#              routed (5th, score .7, to strong) 1 1 1 0 1 = .8 -> baseline PGR 1.0
# B: 2 traces (< 3): counts only.  C: strong below weak: PGR null with the reason.
CATS = ["A"] * 5 + ["B"] * 2 + ["C"] * 3
SCORES = [0.9, 0.8, 0.2, 0.1, 0.7, 0.9, 0.1, 0.9, 0.9, 0.9]
WQ = [0, 1, 1, 0, None, 1, 0, 1, 1, 0]
SQ = [1, 1, 1, 1, None, 1, 1, 0, 1, 0]
WQ_REF = [0, 0, 1, 0, 0, 1, 0, 1, 1, 0]
SQ_REF = [1, 1, 1, 0, 1, 1, 1, 0, 1, 0]


def test_per_category_figures_min_count_and_null_pgr():
    a, b, c = per_category(CATS, SCORES, WQ, SQ, WQ_REF, SQ_REF, alpha=0.5, min_traces=3)
    assert (a.category, a.n, a.n_labelled, a.reported) == ("A", 5, 4, True)
    assert a.strong_share == 0.5 and a.quality_weak == 0.5 and a.quality_strong == 1.0
    assert a.quality_routed == 0.75 and a.pgr == pytest.approx(0.5) and a.pgr_null_reason is None
    assert a.baseline_pgr == pytest.approx(1.0)
    assert b == CategoryFigures("B", 2, 2, False)
    assert c.reported and c.pgr is None and c.pgr_null_reason.startswith("PGR is undefined: strong quality")
    assert c.strong_share == 1.0 and c.quality_routed == pytest.approx(1 / 3)

    m = mlflow_metrics([a, b, c])
    assert m["category.A.pgr"] == pytest.approx(0.5) and m["category.A.strong_share"] == 0.5
    assert m["category.B.n_labelled"] == 2.0 and "category.B.pgr" not in m
    assert "category.C.pgr" not in m and m["category.C.quality_weak"] == pytest.approx(2 / 3)
    lines = table([a, b, c], 3)
    assert lines[0] == "per category (figures from >= 3 labelled traces):"
    assert "B" in lines[3] and "too few labelled traces" in lines[3]
    assert lines[4].split()[-2:] == ["null", "null"]


def test_per_category_bad_input():
    with pytest.raises(ValueError, match="min_traces must be >= 1"):
        per_category(CATS, SCORES, WQ, SQ, WQ_REF, SQ_REF, alpha=0.5, min_traces=0)
    with pytest.raises(ValueError, match="differ in length"):
        per_category(CATS[:-1], SCORES, WQ, SQ, WQ_REF, SQ_REF, alpha=0.5, min_traces=3)
    assert mlflow_metrics([CategoryFigures("a/b c!", 1, 1, False)]) == {"category.a_b c_.n_labelled": 1.0}


def test_category_regression_alert_per_category_with_the_aggregate_tolerance(settings):
    from sqlalchemy import select

    from routerops.db import session_scope
    from routerops.db.models import Alert
    from routerops.monitoring.alerts import (
        active_alert_gauges,
        category_regression_condition,
        process_conditions,
    )

    rows = per_category(CATS, SCORES, WQ, SQ, WQ_REF, SQ_REF, alpha=0.5, min_traces=3)

    def conds(tolerance: float, figures=rows):  # noqa: ANN001, ANN202
        return [category_regression_condition("g.jsonl:abcd", r, tolerance, alpha=0.5, golden_name="g.jsonl",
                                              min_traces=3, run_id="r1") for r in figures]

    a, b, c = conds(0.1)
    # A: PGR 0.5 vs baseline 1.0 (drop 0.5 > 0.1); B: under the minimum count; C: null PGR
    assert (a.kind, a.dedupe_key, a.active) == ("category_regression", "category_regression:g.jsonl:abcd:A", True)
    assert a.message == ("category 'A': PGR at alpha 0.500 is 0.500, baseline 1.000 (tolerance 0.1, 4 labelled "
                         "traces) on g.jsonl")
    assert a.payload["category"] == "A" and a.payload["n_labelled"] == 4 and a.payload["min_traces"] == 3
    assert b.active is None and c.active is None
    assert [x.active for x in conds(0.5)] == [False, None, None]  # a drop of exactly the tolerance is not one
    with session_scope(settings) as s:
        assert len(process_conditions(s, settings, conds(0.1))) == 1  # only A opens
        assert process_conditions(s, settings, conds(0.1)) == []  # still regressed: one alert
        assert active_alert_gauges(s)["routerops_category_regression_active"] == 1.0
        # B and C have no measurable condition: they never touch an open alert
        process_conditions(s, settings, conds(0.1)[1:])
        assert s.scalars(select(Alert.status)).all() == ["open"]
        process_conditions(s, settings, conds(0.6))  # A within tolerance now: resolved
        assert s.scalars(select(Alert.status)).all() == ["resolved"]
        assert active_alert_gauges(s)["routerops_category_regression_active"] == 0.0
    # the set's conditions: one per category, none when one category is the whole set
    from routerops.monitoring.alerts import category_conditions

    assert [c.active for c in category_conditions("g:1", rows, 0.1, alpha=0.5, golden_name="g", min_traces=3)] == \
        [True, None, None]
    assert category_conditions("g:1", rows[:1], 0.1, alpha=0.5, golden_name="g", min_traces=3) == []
    long = CategoryFigures("x" * 300, 5, 5, True, pgr=0.1, baseline_pgr=0.9)
    (cond,) = conds(0.1, [long])
    assert cond.active and len(cond.dedupe_key) <= 200 and cond.payload["category"] == "x" * 300
