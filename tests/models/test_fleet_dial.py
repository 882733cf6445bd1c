"""The fleet dial (routerops/models/fleet_dial.py): its ends, and calibration to a quality or cost target."""

from __future__ import annotations

import numpy as np
import pytest

from routerops.models.fleet_dial import DialCalibration, calibrate, calibrate_router, choose, dial_curve

MODELS = ["cheap", "mid", "best"]
COSTS = np.array([0.1, 1.0, 10.0])


def quality(n: int = 400, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ease = rng.random(n)
    return np.clip(np.stack([ease - 0.3, ease - 0.1, ease + 0.1], axis=1) + 0.05 * rng.standard_normal((n, 3)), 0, 1)


def test_dial_ends_pick_the_best_and_the_cheapest() -> None:
    q = quality()
    c = np.broadcast_to(COSTS, q.shape)
    assert (choose(q, c, 0.0) == q.argmax(axis=1)).all()
    assert (choose(q, c, 1e6) == 0).all()
    allowed = np.array([[False, True, True]] * len(q))
    assert (choose(q, c, 1e6, allowed) == 1).all()
    # equal quality: the cheaper model, even at lambda 0
    assert choose(np.full((1, 3), 0.5), c[:1], 0.0)[0] == 0


def test_calibration_meets_its_target_as_cheaply_as_the_grid_allows() -> None:
    q = quality()
    cal = calibrate(q, COSTS, MODELS, quality_share=0.9, router_version="7")
    assert isinstance(cal, DialCalibration) and cal.best_model == "best" and cal.router_version == "7"
    assert cal.quality_share >= 0.9 and cal.cost_share < 1.0
    _, rows = dial_curve(q, COSTS)
    cheaper = [r for r in rows if r[1] < cal.cost_share - 1e-12]
    assert all(r[2] < 0.9 for r in cheaper)  # nothing cheaper keeps the target
    assert sum(cal.share_by_model.values()) == pytest.approx(1.0)
    spend = calibrate(q, COSTS, MODELS, cost_share=0.3)
    assert spend.cost_share <= 0.3 and spend.target == {"cost_share": 0.3}
    assert calibrate(q, COSTS, MODELS, quality_share=1.0).lam <= cal.lam


class _Router:
    version = "3"

    def __init__(self, q: np.ndarray | None):
        self.q = q

    def reference_quality(self, models: list[str]) -> np.ndarray | None:
        return self.q


def test_calibrate_router_without_reference_or_by_hand() -> None:
    prices, tokens = [(0.1, 0.1), (1, 1), (10, 10)], [100, 100, 100]
    none = calibrate_router(_Router(None), MODELS, MODELS, prices, tokens)
    assert none.source == "default" and "no reference prompts" in none.note
    hand = calibrate_router(_Router(quality()), MODELS, MODELS, prices, tokens, lam=0.0)
    assert hand.source == "settings" and hand.lam == 0.0 and hand.quality_share >= 1.0
    auto = calibrate_router(_Router(quality()), MODELS, MODELS, prices, tokens, quality_share=0.95)
    assert auto.source == "calibrated" and auto.quality_share >= 0.95
