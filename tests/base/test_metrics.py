"""routerops.metrics against values worked out by hand on tiny arrays."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from routerops import metrics as m

# --- A: a plain case --------------------------------------------------------------------------------
# scores  .9  .7  .4  .2      q_weak = 2/4 = .5, q_strong = 3/4 = .75, gap .25
# weak     0   1   0   1      gain (strong - weak) in score order: +1, 0, +1, -1
# strong   1   1   1   0      quality after k prompts sent strong: .5, .75, .75, 1.0, .75
#                             PGR: 0, 1, 1, 2, 1 at shares 0, .25, .5, .75, 1
# APGR = .25 * [(0+1)/2 + (1+1)/2 + (1+2)/2 + (2+1)/2] = .25 * 4.5 = 1.125
# CPT(50%) = .125 (halfway up the first segment); CPT(100%) = .25; CPT(150%) = .5 + .25/2 = .625
A = dict(scores=[0.9, 0.7, 0.4, 0.2], weak_q=[0, 1, 0, 1], strong_q=[1, 1, 1, 0])


def test_plain_curve_apgr_cpt():
    curve = m.pgr_curve(**A)
    np.testing.assert_allclose(curve.strong_share, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(curve.quality, [0.5, 0.75, 0.75, 1.0, 0.75])
    np.testing.assert_allclose(curve.pgr, [0, 1, 1, 2, 1])
    np.testing.assert_allclose(curve.thresholds, [np.inf, 0.9, 0.7, 0.4, 0.2])
    assert (curve.q_weak, curve.q_strong) == (0.5, 0.75)
    assert m.apgr(**A) == pytest.approx(1.125)
    assert m.cpt(**A, target_pgr=0.5) == pytest.approx(0.125)
    assert m.cpt(**A, target_pgr=1.0) == pytest.approx(0.25)
    assert m.cpt(**A, target_pgr=1.5) == pytest.approx(0.625)
    assert m.cpt(**A, target_pgr=0.0) == 0.0
    assert math.isnan(m.cpt(**A, target_pgr=2.5))  # the curve tops out at 2
    assert curve.pgr_at_share(0.875) == pytest.approx(1.5)


def test_routed_quality_and_pgr():
    # alpha .5 sends the first two prompts to strong: quality (1 + 1 + 0 + 1) / 4
    assert m.routed_quality(**A, alpha=0.5) == (0.75, 0.5)
    # alpha .9: only the first; >= is inclusive
    assert m.routed_quality(**A, alpha=0.9) == (0.75, 0.25)
    assert m.routed_quality(**A, alpha=0.95) == (0.5, 0.0)
    assert m.pgr(0.75, 0.5, 0.75) == 1.0
    assert m.pgr(0.6, 0.5, 0.75) == pytest.approx(0.4)
    # weak cost 1, strong cost 10: two prompts each way
    assert m.routed_cost(A["scores"], [1] * 4, [10] * 4, alpha=0.5) == 5.5


def test_curve_vertices_agree_with_routing_at_their_thresholds():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=40) / 5  # many ties
    weak, strong = rng.integers(0, 2, size=40), rng.integers(0, 2, size=40)
    if strong.mean() <= weak.mean():  # PGR needs strong better than weak
        weak, strong = strong, weak
    assert strong.mean() > weak.mean()
    curve = m.pgr_curve(scores, weak, strong)
    for alpha, share, quality in zip(curve.thresholds[1:], curve.strong_share[1:], curve.quality[1:], strict=True):
        assert m.routed_quality(scores, weak, strong, alpha) == pytest.approx((quality, share))


# --- B: non-monotone PGR: RouteLLM's np.interp gives the wrong CPT -----------------------------------
# scores  .9  .8  .7  .6  .5     q_weak = 1/5 = .2, q_strong = 3/5 = .6, gap .4
# weak     0   0   1   0   0     gains: +1, 0, -1, +1, +1; cumulative 1, 1, 0, 1, 2
# strong   1   0   0   1   1     quality .2, .4, .4, .2, .4, .6 -> PGR 0, .5, .5, 0, .5, 1
# APGR = .2 * [.25 + .5 + .25 + .25 + .75] = .4
# CPT(50%): the curve first reaches .5 at share .2. RouteLLM interpolates share over accuracy as
# if accuracy rose with share: np.interp(.4, quality, share) answers .8 (the last plateau).
# CPT(75%): first crossing in the last segment: .8 + (.75 - .5) / (1 - .5) * .2 = .9
B = dict(scores=[0.9, 0.8, 0.7, 0.6, 0.5], weak_q=[0, 0, 1, 0, 0], strong_q=[1, 0, 0, 1, 1])


def test_non_monotone_cpt_is_first_crossing():
    curve = m.pgr_curve(**B)
    np.testing.assert_allclose(curve.pgr, [0, 0.5, 0.5, 0, 0.5, 1], atol=1e-12)
    assert curve.apgr() == pytest.approx(0.4)
    assert curve.cpt(0.5) == pytest.approx(0.2)
    assert curve.cpt(0.75) == pytest.approx(0.9)
    routellm_style = np.interp(0.2 + 0.5 * 0.4, curve.quality, curve.strong_share)
    assert routellm_style == pytest.approx(0.8)  # what RouteLLM's evaluate.py would report
    # alpha reaching PGR .5 at the least share: send only the top prompt
    assert m.alpha_for_pgr(**B, target_pgr=0.5) == 0.9
    assert m.alpha_for_pgr(**B, target_pgr=0.75) == 0.5
    with pytest.raises(ValueError, match="best is 1.000"):
        m.alpha_for_pgr(**B, target_pgr=1.2)


def test_dip_below_zero():
    # gains -1, +1, +1, 0 (q_weak .25, q_strong .5): PGR 0, -1, 0, 1, 1; APGR .25 * (-.5 - .5 + .5 + 1) = .125
    curve = m.pgr_curve([0.9, 0.8, 0.7, 0.6], [1, 0, 0, 0], [0, 1, 1, 0])
    np.testing.assert_allclose(curve.pgr, [0, -1, 0, 1, 1])
    assert curve.apgr() == pytest.approx(0.125)
    assert curve.cpt(0.5) == pytest.approx(0.625)
    assert curve.cpt(-0.5) == 0.0
    assert m.alpha_for_pgr([0.9, 0.8, 0.7, 0.6], [1, 0, 0, 0], [0, 1, 1, 0], 0.0) == np.nextafter(0.9, 1)


# --- C: ties in score move as one block ----------------------------------------------------------------
# scores  .8  .5  .5  .2     q_weak .25, q_strong .5
# weak     0   0   1   0     blocks {.8}: +1, {.5, .5}: +1 - 1 = 0, {.2}: 0
# strong   1   1   0   0     shares 0, .25, .75, 1; PGR 0, 1, 1, 1
# APGR = .25 * .5 + .5 * 1 + .25 * 1 = .875  (splitting the tie block +1 then -1 would give 1.125)
C = dict(scores=[0.8, 0.5, 0.5, 0.2], weak_q=[0, 0, 1, 0], strong_q=[1, 1, 0, 0])


def test_ties_form_one_block_in_any_input_order():
    for perm in itertools.permutations(range(4)):
        p = list(perm)
        curve = m.pgr_curve(*(np.asarray(C[k])[p] for k in ("scores", "weak_q", "strong_q")))
        np.testing.assert_allclose(curve.strong_share, [0, 0.25, 0.75, 1])
        np.testing.assert_allclose(curve.pgr, [0, 1, 1, 1])
        np.testing.assert_allclose(curve.thresholds, [np.inf, 0.8, 0.5, 0.2])
        assert curve.apgr() == pytest.approx(0.875)


def test_alpha_for_strong_share_exact_with_ties():
    s = C["scores"]
    # reachable shares 0, .25, .75, 1
    assert m.alpha_for_strong_share(s, 1.0) == 0.2
    assert m.alpha_for_strong_share(s, 0.75) == 0.5
    assert m.alpha_for_strong_share(s, 0.6) == 0.5  # nearest reachable: .75
    assert m.alpha_for_strong_share(s, 0.5) == 0.8  # .25 and .75 equally near: the lower share
    assert m.alpha_for_strong_share(s, 0.25) == 0.8
    zero = m.alpha_for_strong_share(s, 0.0)
    assert 0.8 < zero <= 1.0 and m.strong_share_at(s, zero) == 0.0
    for share in (0.0, 0.25, 0.75, 1.0):
        assert m.strong_share_at(s, m.alpha_for_strong_share(s, share)) == share
    # a score of exactly 1.0 cannot be sent weak with alpha <= 1: alpha 1.0, realised share .25
    top = [1.0, 0.5, 0.3, 0.1]
    assert m.alpha_for_strong_share(top, 0.0) == 1.0
    assert m.strong_share_at(top, 1.0) == 0.25


def test_alpha_for_strong_share_distinct_scores_hits_share_exactly():
    scores = np.linspace(0.01, 0.99, 100)
    for k in range(101):
        alpha = m.alpha_for_strong_share(scores, k / 100)
        assert m.strong_share_at(scores, alpha) == pytest.approx(k / 100)


def test_random_router_expectation_is_half():
    # Average APGR over every ordering of 5 distinct scores = the random router's expected APGR.
    weak, strong = np.array([0, 1, 0, 1, 0]), np.array([1, 1, 0, 0, 1])
    apgrs = [m.apgr(np.array(p, dtype=float), weak, strong) for p in itertools.permutations(range(5))]
    assert np.mean(apgrs) == pytest.approx(m.random_router_apgr()) == pytest.approx(0.5)
    assert m.random_router_pgr(0.3) == 0.3


def test_oracle_curve_is_the_best_order():
    # gains on A: +1, 0, +1, -1 -> oracle sends both +1 first: shares 0, .5, .75, 1; PGR 0, 2, 2, 1
    # APGR = .5 * 1 + .25 * 2 + .25 * 1.5 = 1.375
    oracle = m.oracle_curve(A["weak_q"], A["strong_q"])
    np.testing.assert_allclose(oracle.strong_share, [0, 0.5, 0.75, 1])
    np.testing.assert_allclose(oracle.pgr, [0, 2, 2, 1])
    assert oracle.apgr() == pytest.approx(1.375) and oracle.apgr() >= m.apgr(**A)


def test_real_valued_quality():
    # judge scores 1-10: q_weak 5, q_strong 7, gap 2; gains by score: +4, +0, +2, +2
    curve = m.pgr_curve([0.6, 0.4, 0.3, 0.1], [4, 6, 5, 5], [8, 6, 7, 7])
    np.testing.assert_allclose(curve.pgr, [0, 0.5, 0.5, 0.75, 1])
    assert curve.cpt(0.6) == pytest.approx(0.5 + 0.1 / 0.25 * 0.25)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="PGR is undefined"):
        m.pgr_curve([0.1, 0.9], [1, 0], [0, 1])  # both models average .5
    with pytest.raises(ValueError, match="PGR is undefined"):
        m.pgr(0.5, 0.7, 0.7)
    # strong worse than weak: no gap either (the ratio would read 1.0 for all-strong routing)
    with pytest.raises(m.NoQualityGap, match="strong quality 0.292 is below weak quality 0.375"):
        m.pgr(0.292, 0.375, 0.292)
    with pytest.raises(m.NoQualityGap, match="below weak quality"):
        m.pgr_curve([0.1, 0.9], [1, 1], [0, 1])
    assert m.quality_gap_problem(0.5, 0.75) is None
    with pytest.raises(ValueError, match="length mismatch"):
        m.apgr([0.1, 0.2], [1], [0, 1])
    with pytest.raises(ValueError, match=r"non-finite value\(s\) at position\(s\) \[1\]"):
        m.pgr_curve([0.1, float("nan")], [0, 0], [1, 1])
    with pytest.raises(ValueError, match="empty"):
        m.pgr_curve([], [], [])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        m.alpha_for_strong_share([0.1, 0.2], 1.5)
    with pytest.raises(ValueError, match="probabilities"):
        m.alpha_for_strong_share([0.1, 2.0], 0.5)


def test_equally_near_shares_pick_the_lower_despite_rounding():
    # 7 distinct scores: 3/7 and 4/7 are equally near .5, though 4/7 - .5 < .5 - 3/7 in floating point
    scores = np.linspace(0.1, 0.7, 7)
    assert m.strong_share_at(scores, m.alpha_for_strong_share(scores, 0.5)) == pytest.approx(3 / 7)
