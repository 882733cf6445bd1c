"""Per-category figures of a monitor run, on arrays worked out by hand."""

from __future__ import annotations

import pytest

from monitoring.categories import CategoryFigures, mlflow_metrics, per_category, table

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
