"""Off-policy evaluation (routerops/ope.py) against a hand-computed case, and the monitor's
not-better-than-random alert on a real database where the live router routes at random."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest
from sqlalchemy import select

from routerops import ope
from routerops.db import migrate, session_scope
from routerops.db.models import Alert, ExplorationPair, RequestLog
from routerops.settings import Settings


def test_ips_and_dr_match_a_hand_computed_case() -> None:
    # 5 logged requests; the evaluated policy calls strong on 0, 2, 4; pairs judged on 0, 1, 3, 4
    target = [1, 0, 1, 0, 1]
    observed = [1, 1, 0, 1, 1]
    d = [1.0, -1.0, 123.0, 1.0, 0.0]  # d of an unobserved request is never read
    q = [0.5, 0.5, 0.5, 0.25, 0.5]
    # IPS: sum(o s d / q) = 1/0.5 = 2; sum(o d / q) = 2 - 2 + 4 + 0 = 4; PGR = 0.5
    est = ope.evaluate_policy(target, observed, d, q, n_boot=2000, seed=1)
    assert est.pgr_ips.value == pytest.approx(0.5)
    assert est.strong_share == pytest.approx(0.6)
    assert (est.n_requests, est.n_pairs) == (5, 4)
    assert est.gap_ips == pytest.approx(4 / 5)
    assert est.pgr_dr.value == pytest.approx(0.5)  # no reward model: DR is IPS
    assert est.pgr_ips.lo <= 0.5 <= est.pgr_ips.hi
    # DR with m = 0.5 everywhere: terms m + o (d - m) / q = 1.5, -2.5, 0.5, 2.5, -0.5
    # numerator (s = 1): 1.5 + 0.5 - 0.5 = 1.5; denominator: 1.5; PGR = 1.0
    est = ope.evaluate_policy(target, observed, d, q, m=[0.5] * 5, n_boot=200, seed=1)
    assert est.pgr_dr.value == pytest.approx(1.0)
    assert est.pgr_ips.value == pytest.approx(0.5)


def test_no_pairs_or_no_gap_is_undefined_not_a_number() -> None:
    est = ope.evaluate_policy([1, 0], [0, 0], [0, 0], [0.1, 0.1], n_boot=100)
    assert est.pgr_ips.value is None and est.pgr_ips.lo is None
    est = ope.evaluate_policy([1, 0], [1, 1], [1.0, -1.0], [0.1, 0.1], n_boot=100)  # sum(d) = 0: no gap
    assert est.pgr_ips.value is None
    with pytest.raises(ValueError):
        ope.evaluate_policy([1], [1], [1.0], [0.0])


def test_ips_is_unbiased_and_its_interval_covers_on_simulated_traffic() -> None:
    """Many simulated logs of one population: the 95% interval covers the full-information PGR in
    about 95% of them (>= 88% over 60 runs allows for chance)."""
    rng = np.random.default_rng(0)
    n = 4000
    p = rng.uniform(size=n)
    d = np.where(rng.uniform(size=n) < 0.35 + 0.6 * p, 1.0, -1.0) * (rng.uniform(size=n) < 0.7)
    target = p >= 0.6
    truth = (target * d).sum() / d.sum()
    covered = 0
    for seed in range(60):
        r = np.random.default_rng(100 + seed)
        q = np.full(n, 0.1)
        obs = r.uniform(size=n) < q
        est = ope.evaluate_policy(target, obs, d, q, feature=p, n_boot=300, seed=seed)
        covered += est.pgr_dr.covers(truth)
    assert covered >= 53, covered


@pytest.fixture
def settings(tmp_path) -> Settings:  # noqa: ANN001
    s = Settings(data_dir=tmp_path / "data", explore_min_pairs=30, ope_bootstrap=500)
    s.ensure_data_dir()
    migrate.upgrade("head", settings=s)
    return s


def _log(session, rng, n: int, category: str, route, q: float) -> None:  # noqa: ANN001
    """n routed requests; each explored with probability q, its pair judged with the recorded winner."""
    for i in range(n):
        d = 1.0 if rng.uniform() < 0.5 else (-1.0 if rng.uniform() < 0.4 else 0.0)
        role = route(d)
        rid = f"{category[:8]}{i:08d}{rng.integers(1 << 30):010d}"
        session.add(RequestLog(id=rid, prompt_hash="h", prompt=f"{category} prompt {i}", strategy="router",
                               model_requested="router", model_chosen=role, p_strong_wins=0.5, alpha=0.5,
                               extra={"role": role, "propensity": 1.0, "explore_propensity": q,
                                      "explored": False, "category": category}))
        if rng.uniform() < q:
            session.add(ExplorationPair(request_id=rid, prompt_hash="h", category=category, served_role=role,
                                        weak_model="w", strong_model="s", explore_propensity=q, status="judged",
                                        winner={1.0: "strong", -1.0: "weak", 0.0: "tie"}[d], cost_usd=0.0,
                                        judged_at=datetime.now(UTC)))


def test_monitor_alerts_when_the_router_is_not_better_than_random(settings: Settings) -> None:
    from routerops.monitoring.exploration import run_live_pgr

    rng = np.random.default_rng(3)
    with session_scope(settings) as s:
        # "chat": the router flips a coin (strong share 0.5) whatever the prompt: PGR ~ 0.5 = random
        _log(s, rng, 1500, "chat", lambda d: "strong" if rng.uniform() < 0.5 else "weak", 0.2)
        # "math": strong exactly where strong wins (share ~ 0.5, PGR 1): better than random
        _log(s, rng, 1500, "math", lambda d: "strong" if d > 0 else "weak", 0.2)
        # "code": too few pairs to say anything
        _log(s, rng, 40, "code", lambda d: "strong", 0.2)
    rep = run_live_pgr(settings)
    rows = {r.category: r for r in rep.rows}
    assert set(rows) == {"all", "chat", "math", "code"}
    chat, math, code = rows["chat"], rows["math"], rows["code"]
    assert chat.reported and chat.not_better_than_random is True
    assert chat.lo <= chat.served_share <= chat.hi
    # the oracle: strong wins all go strong, no weak win does; PGR = wins / (wins - losses) > 1
    assert math.reported and math.not_better_than_random is False and math.pgr > 1.0
    assert not code.reported and code.not_better_than_random is None and code.pgr is None
    assert len(rep.alerts_opened) == 1
    with session_scope(settings) as s:
        alerts = s.scalars(select(Alert).where(Alert.status == "open")).all()
        assert [(a.kind, a.dedupe_key) for a in alerts] == [("not_better_than_random", "not_better_than_random:chat")]
        assert "not better than random" in alerts[0].message
    again = run_live_pgr(settings)  # still holding: one regression, one alert
    assert again.alerts_opened == []
    assert "NOT BETTER" in again.table()
    # the same report from the command line
    from click.testing import CliRunner

    from routerops.orchestration.cli import cli

    result = CliRunner().invoke(cli, ["ope", "live", "--no-alerts", "--json"],
                                env={"ROUTEROPS_DATA_DIR": str(settings.data_dir), "ROUTEROPS_EXPLORE_MIN_PAIRS": "30",
                                     "ROUTEROPS_OPE_BOOTSTRAP": "200"})
    assert result.exit_code == 0, result.output
    shown = {r["category"]: r for r in json.loads(result.output)["rows"]}
    assert shown["chat"]["not_better_than_random"] is True and shown["math"]["not_better_than_random"] is False
