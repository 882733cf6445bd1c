"""The live router on its own traffic (issue 24; docs/exploration-and-ope.md).

Exploration pairs are a uniform random sample of routed traffic (each routed request explored with
probability ROUTEROPS_EXPLORE_SHARE, whatever its prompt), judged into strong / weak / tie. On them
the live router's PGR is sum(served strong * d) / sum(d) with d = +1 / -1 / 0 (routerops/ope.py), per
category (the request's `metadata.category`) and overall, with a bootstrap confidence interval. A
router that routes at random with strong share s has PGR s in expectation, so when the interval's
lower bound is not above the served share s the router is **not better than random** at that share:
the monitor opens a `not_better_than_random` alert (one per category, resolved when it recovers). A
category with fewer than ROUTEROPS_EXPLORE_MIN_PAIRS judged pairs reports counts only and neither
opens nor resolves an alert.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import select

from routerops import ope
from routerops.db import session_scope
from routerops.db.models import ExplorationPair, RequestLog
from routerops.monitoring.alerts import Condition, process_conditions
from routerops.settings import Settings

log = logging.getLogger(__name__)

ALL = "all"
KIND = "not_better_than_random"


@dataclass
class LoggedTraffic:
    """Routed requests of a window, with their exploration pairs (arrays aligned by request)."""

    request_ids: list[str]
    prompts: list[str | None]
    categories: list[str]
    served_strong: np.ndarray  # bool
    p_logged: np.ndarray  # the live router's P(strong wins) (NaN where none)
    q: np.ndarray  # explore propensity (0 where not logged)
    observed: np.ndarray  # bool: a judged pair exists
    d: np.ndarray  # strong minus weak outcome where observed (0 elsewhere)
    router_versions: list[str | None]

    def __len__(self) -> int:
        return len(self.request_ids)


def load_traffic(settings: Settings, since: datetime | None = None, until: datetime | None = None) -> LoggedTraffic:
    """Routed (strategy "router") requests in [since, until) and their judged exploration pairs."""
    with session_scope(settings) as s:
        q = select(RequestLog.id, RequestLog.prompt, RequestLog.p_strong_wins, RequestLog.extra,
                   RequestLog.router_version).where(RequestLog.strategy == "router")
        if since is not None:
            q = q.where(RequestLog.created_at >= since)
        if until is not None:
            q = q.where(RequestLog.created_at < until)
        rows = s.execute(q.order_by(RequestLog.created_at, RequestLog.id)).all()
        # fleet decisions (a fleet file, or limits on a request) are not the pair's alpha rule: their
        # explorations measure each model (monitoring/per_model.py), not the pair's PGR
        rows = [r for r in rows if not (r[3] or {}).get("fleet")]
        pairs: dict[str, tuple[str | None, str | None]] = {}
        ids = [r[0] for r in rows]
        for i in range(0, len(ids), 500):
            for rid, winner, category in s.execute(
                    select(ExplorationPair.request_id, ExplorationPair.winner, ExplorationPair.category)
                    .where(ExplorationPair.request_id.in_(ids[i:i + 500]), ExplorationPair.status == "judged")):
                pairs[rid] = (winner, category)
    n = len(rows)
    served = np.zeros(n, dtype=bool)
    p = np.full(n, np.nan)
    qv = np.zeros(n)
    obs = np.zeros(n, dtype=bool)
    d = np.zeros(n)
    cats: list[str] = []
    for i, (rid, _prompt, pw, extra, _v) in enumerate(rows):
        extra = extra or {}
        served[i] = extra.get("role") == "strong"
        if pw is not None:
            p[i] = pw
        qv[i] = float(extra.get("explore_propensity") or 0.0)
        pair = pairs.get(rid)
        if pair is not None and pair[0] in ope.WINNER_TO_D and qv[i] > 0:
            obs[i], d[i] = True, ope.WINNER_TO_D[pair[0]]
        cats.append(str(extra.get("category") or (pair[1] if pair else None) or "uncategorized"))
    return LoggedTraffic([r[0] for r in rows], [r[1] for r in rows], cats, served, p, qv, obs, d,
                         [r[4] for r in rows])


@dataclass
class LivePGR:
    category: str
    n_requests: int
    n_pairs: int
    served_share: float | None  # strong share of the routed requests (random routing's PGR)
    pgr: float | None
    lo: float | None
    hi: float | None
    reported: bool  # enough pairs for the figures and the alert
    not_better_than_random: bool | None  # None: not reported

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LiveReport:
    window_hours: float
    rows: list[LivePGR] = field(default_factory=list)
    alerts_opened: list[int] = field(default_factory=list)  # ids of the alerts this report opened

    def to_dict(self) -> dict[str, Any]:
        return {"window_hours": self.window_hours, "rows": [r.to_dict() for r in self.rows],
                "alerts_opened": self.alerts_opened}

    def table(self) -> str:
        lines = ["category          requests  pairs  served share  live PGR [CI]            vs random"]
        for r in self.rows:
            if not r.reported:
                lines.append(f"{r.category[:16]:16}  {r.n_requests:8d}  {r.n_pairs:5d}  "
                             f"{'-' if r.served_share is None else f'{r.served_share:.3f}':>12}  "
                             f"(fewer pairs than the minimum)")
                continue
            ci = f"{_f(r.pgr)} [{_f(r.lo)}, {_f(r.hi)}]"
            verdict = "NOT BETTER" if r.not_better_than_random else "better"
            lines.append(f"{r.category[:16]:16}  {r.n_requests:8d}  {r.n_pairs:5d}  {r.served_share:12.3f}  "
                         f"{ci:24}  {verdict}")
        return "\n".join(lines)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def live_pgr(traffic: LoggedTraffic, *, min_pairs: int, n_boot: int = 1000, confidence: float = 0.95,
             seed: int = 0) -> list[LivePGR]:
    """Overall ("all") and per-category live PGR on judged exploration pairs."""
    cats = np.asarray(traffic.categories, dtype=object)
    groups = [ALL] + sorted(set(traffic.categories)) if len(set(traffic.categories)) > 1 else [ALL]
    out = []
    for g in groups:
        sel = np.ones(len(traffic), dtype=bool) if g == ALL else cats == g
        n = int(sel.sum())
        share = float(traffic.served_strong[sel].mean()) if n else None
        pick = sel & traffic.observed
        k = int(pick.sum())
        if k < min_pairs or share is None:
            out.append(LivePGR(g, n, k, share, None, None, None, False, None))
            continue
        # weighted by 1/q, so a share changed mid-window still counts each pair for its requests
        w = 1.0 / traffic.q[pick]
        est = ope.pgr_on_pairs(traffic.served_strong[pick], traffic.d[pick], w, n_boot=n_boot,
                               confidence=confidence, seed=seed)
        verdict = None if est.lo is None else bool(est.lo <= share)
        out.append(LivePGR(g, n, k, share, est.value, est.lo, est.hi, est.lo is not None, verdict))
    return out


def conditions(rows: list[LivePGR]) -> list[Condition]:
    conds = []
    for r in rows:
        active = r.not_better_than_random if r.reported else None
        where = "overall" if r.category == ALL else f"category {r.category}"
        msg = (f"live router not better than random routing ({where}): PGR {_f(r.pgr)} "
               f"[{_f(r.lo)}, {_f(r.hi)}] on {r.n_pairs} exploration pairs, random at the served strong share "
               f"{_f(r.served_share)} gets {_f(r.served_share)}")
        conds.append(Condition(KIND, f"{KIND}:{r.category}", active, msg, r.to_dict()))
    return conds


def run_live_pgr(settings: Settings, window_hours: float | None = None, *, alerts: bool = True) -> LiveReport:
    """The live router's PGR on the window's exploration pairs; opens/resolves not-better-than-random alerts."""
    hours = window_hours or settings.ope_window_hours
    since = datetime.now(UTC) - timedelta(hours=hours)
    traffic = load_traffic(settings, since)
    rep = LiveReport(hours, live_pgr(traffic, min_pairs=settings.explore_min_pairs, n_boot=settings.ope_bootstrap,
                                     confidence=settings.ope_confidence))
    if alerts:
        with session_scope(settings) as s:
            rep.alerts_opened = [a.id for a in process_conditions(s, settings, conditions(rep.rows))]
    return rep
