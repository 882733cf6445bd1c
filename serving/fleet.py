"""Routing a fleet of K priced models (issue 27): one decision, one dial, per-request limits, failover.

`FleetRouter.decide(prompt, limits)` predicts for every fleet model P(good answer | prompt) (the live
IRT-MF router) and the expected cost (its prices x the prompt's tokens and its predicted completion
tokens, learned from the answers it served), ranks them by P(good) - lambda x relative cost
(routerops.models.fleet_dial) and returns the ranking: the first is served, the next ones take over
when it is down, open-circuited or rate-limited (Guard.attempt_models). A request's own limits
(`extra_body={"routerops": {"max_cost_usd", "min_quality", "models"}}`) drop candidates first.

With a fleet file the `router` strategy is FleetRouterStrategy. With the two-model settings the
`router` strategy stays the alpha threshold of before, and only a request that carries limits is
decided by the fleet rule over the pair.
"""

from __future__ import annotations

import copy
import logging
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import func, select

from routerops.backends.base import Backend, BackendError, GenerationParams, Message, last_user_prompt
from routerops.db import session_scope
from routerops.db.models import RequestLog
from routerops.fleet import Fleet
from routerops.models.fleet_dial import (
    DialCalibration,
    calibrate_fleet,
    expected_costs,
    quality_sources,
    relative_costs,
)
from routerops.serving.failover import Served
from routerops.serving.routing import RouterState
from routerops.serving.schemas import RoutingLimits
from routerops.serving.strategies import (
    Outcome,
    ServingContext,
    _BackendStrategy,
)
from routerops.settings import Settings

log = logging.getLogger(__name__)


class LimitsUnsatisfiable(ValueError):
    """No fleet model meets the request's limits (API: 400 limits_unsatisfiable)."""


class TokenStats:
    """Predicted completion tokens per model: the fleet table's prior, moved by the answers served
    (a running mean with the prior worth `prior_weight` answers); seeded from the request log."""

    def __init__(self, fleet: Fleet, prior_weight: float = 10.0):
        self.prior = {m.name: float(m.completion_tokens) for m in fleet.models}
        self.weight = prior_weight
        self._n: dict[str, float] = {}
        self._sum: dict[str, float] = {}
        self._lock = threading.Lock()

    def expected(self, name: str) -> float:
        n, total = self._n.get(name, 0.0), self._sum.get(name, 0.0)
        return (self.prior.get(name, 256.0) * self.weight + total) / (self.weight + n)

    def observe(self, name: str, completion_tokens: int, count: float = 1.0) -> None:
        if name not in self.prior or completion_tokens <= 0:
            return
        with self._lock:
            self._n[name] = self._n.get(name, 0.0) + count
            self._sum[name] = self._sum.get(name, 0.0) + completion_tokens * count

    def seed(self, settings: Settings, limit_rows: int = 20_000) -> None:
        """Mean completion tokens per model over the newest request-log rows (best effort)."""
        try:
            with session_scope(settings) as session:
                newest = select(RequestLog.model_chosen, RequestLog.completion_tokens) \
                    .order_by(RequestLog.created_at.desc()).limit(limit_rows).subquery()
                rows = session.execute(select(newest.c.model_chosen, func.count(), func.avg(newest.c.completion_tokens))
                                       .group_by(newest.c.model_chosen)).all()
        except Exception as exc:  # noqa: BLE001 - a fresh or unreachable database: the priors stand
            log.info("token stats not seeded from the request log: %s", type(exc).__name__)
            return
        for name, count, mean in rows:
            if name in self.prior and count and mean:
                self.observe(name, int(round(float(mean))), float(count))

    def snapshot(self) -> dict[str, dict[str, float]]:
        return {m: {"expected_completion_tokens": round(self.expected(m), 1), "answers_seen": self._n.get(m, 0.0)}
                for m in self.prior}


@dataclass
class FleetDecision:
    order: list[str]  # eligible models, best first under the dial: the first is served, the rest fail over
    candidates: list[dict[str, Any]]  # every model considered: p_good, predicted cost, utility, excluded
    lam: float
    dial_source: str
    router_version: str | None
    reason: str
    routing_ms: float
    limits: dict[str, Any] | None = None
    category: dict[str, Any] | None = None  # the prompt's predicted category (router with category heads)

    @property
    def chosen(self) -> str:
        return self.order[0]

    def info(self) -> dict[str, Any]:
        return {"dial": {"lambda": self.lam, "source": self.dial_source}, "candidates": self.candidates,
                "order": self.order, "limits": self.limits, "category": self.category}


@dataclass
class _Prepared:
    router: object
    idx: np.ndarray | None  # the fleet's rows in the router's vocabulary (None: no quality predictions)
    error: str | None = None
    cold: dict[str, str] = field(default_factory=dict)  # fleet models read as a known one (cold start)


class FleetRouter:
    def __init__(self, settings: Settings, fleet: Fleet, router_state: RouterState, tokens: TokenStats | None = None):
        self.settings, self.fleet, self.router_state = settings, fleet, router_state
        self.tokens = tokens or TokenStats(fleet)
        self.names = fleet.names
        self.prices = [(m.price_in, m.price_out) for m in fleet.models]
        self._dial: tuple[object, DialCalibration] | None = None
        self._prepared: _Prepared | None = None
        self._lock = threading.Lock()

    # --- the router's check at load: every fleet model must be in its vocabulary ----------------
    def check_router(self, router: Any) -> None:
        """Raises, naming the fleet models the router can read neither by their own name nor by their
        `cold_start_like` model, and the router's vocabulary (a RouterState load check: a router that
        cannot route the fleet does not go live)."""
        quality_sources(router, self.fleet)

    def _prepare(self, router: Any) -> _Prepared:
        prep = self._prepared
        if prep is None or prep.router is not router:
            try:
                if not router.predicts_quality:
                    raise ValueError(f"router format {router.format} predicts no P(good) per model")
                names, cold = quality_sources(router, self.fleet)
                prep = _Prepared(router, router.model_indices(names), cold=cold)
            except Exception as exc:  # noqa: BLE001 - reported in every decision's reason
                prep = _Prepared(router, None, f"{type(exc).__name__}: {str(exc)[:200]}")
            self._prepared = prep
        return prep

    def cold_started(self) -> dict[str, str]:
        """Fleet models the live router has no labels of, read as their `cold_start_like` model."""
        prep = self._prepared
        return prep.cold if prep is not None and prep.idx is not None else {}

    def dial(self) -> DialCalibration:
        """The dial for the live router (calibrated once per router object)."""
        router = self.router_state.snapshot.router
        cached = self._dial
        if cached is not None and cached[0] is router:
            return cached[1]
        with self._lock:
            s = self.settings
            usable = router if router is not None and self._prepare(router).idx is not None else None
            try:  # the fleet table's token priors: the same table training recorded for this router
                cal = calibrate_fleet(usable, self.fleet, s)
            except Exception as exc:  # noqa: BLE001 - never fail a request over the calibration
                cal = DialCalibration(lam=s.fleet_lambda if s.fleet_lambda is not None else 0.1, source="default",
                                      models=self.names, note=f"calibration failed: {type(exc).__name__}: {exc}")
            self._dial = (router, cal)
            return cal

    def quality(self, prompt: str) -> tuple[np.ndarray | None, str | None, str | None, dict[str, Any] | None]:
        """(P(good) per fleet model or None, router version, why none, the prompt's predicted category
        where the router reads quality per category)."""
        snap = self.router_state.snapshot
        if snap.router is None:
            return None, None, snap.no_router_reason, None
        prep = self._prepare(snap.router)
        if prep.idx is None:
            return None, snap.version, f"router {snap.version} cannot route the fleet ({prep.error})", None
        try:
            router = snap.router
            X = router.prompt_vectors(router.embedder.encode([prompt]), [prompt])
            q = router.quality_vectors(X, prep.idx)[0]
            cats = router.categories(X)
        except Exception as exc:  # noqa: BLE001 - a scoring failure degrades to the price ranking
            log.warning("fleet routing failed: %s", exc)
            return None, snap.version, f"routing failed ({type(exc).__name__})", None
        category = {"name": cats[0][0], "p": round(cats[0][1], 4)} if cats else None
        return q, snap.version, None, category

    def decide(self, prompt: str, limits: RoutingLimits | None = None, max_new_tokens: int | None = None,
               prompt_tokens: int | None = None) -> FleetDecision:
        t0 = time.perf_counter()
        dial = self.dial()
        q, version, why, category = self.quality(prompt)
        p_tokens = prompt_tokens if prompt_tokens is not None else max(1, round(len(prompt) / 4))
        completion = [min(self.tokens.expected(n), max_new_tokens or 10**9) for n in self.names]
        costs = expected_costs(self.prices, p_tokens, completion)
        if q is not None:
            util = q - dial.lam * relative_costs(costs[None, :])[0] - 1e-9 * costs
            ranking = [int(i) for i in np.argsort(-util, kind="stable")]
        else:  # no predictions: the pair's rule without a router (strong first), then dearest first
            util = None
            strong = self.names.index(self.fleet.strong)
            ranking = [strong] + sorted((i for i in range(len(self.names)) if i != strong),
                                        key=lambda i: -(self.prices[i][0] + self.prices[i][1]))
        candidates, order = [], []
        for i in ranking:
            name = self.names[i]
            excluded = None
            max_context = self.fleet.models[i].max_context
            if max_context is not None and p_tokens + (max_new_tokens or 0) > max_context:
                excluded = f"prompt of ~{p_tokens} tokens + {max_new_tokens or 0} new is over its max_context {max_context}"
            elif limits is not None and limits.models is not None and name not in limits.models:
                excluded = "not in the request's models"
            elif limits is not None and limits.max_cost_usd is not None and costs[i] > limits.max_cost_usd:
                excluded = f"predicted cost {costs[i]:.6g} > max_cost_usd {limits.max_cost_usd:g}"
            elif limits is not None and limits.min_quality is not None and (q is None or q[i] < limits.min_quality):
                excluded = ("no quality prediction" if q is None else
                            f"predicted P(good) {q[i]:.3f} < min_quality {limits.min_quality:g}")
            cold = self.cold_started().get(name) if q is not None else None
            candidates.append({"model": name, "p_good": None if q is None else round(float(q[i]), 6),
                               **({"cold_start_like": cold} if cold else {}),
                               "predicted_cost_usd": float(f"{costs[i]:.6g}"),
                               "utility": None if util is None else round(float(util[i]), 6), "excluded": excluded})
            if excluded is None:
                order.append(name)
        limits_dict = limits.model_dump(exclude_none=True) if limits is not None else None
        if not order:
            detail = "; ".join(f"{c['model']}: {c['excluded']}" for c in candidates)
            raise LimitsUnsatisfiable(f"no fleet model meets the request's limits {limits_dict or {}} and context: "
                                      f"{detail}")
        chosen = self.names.index(order[0])
        if q is not None:
            reason = (f"P(good)={q[chosen]:.3f}, predicted cost ${costs[chosen]:.6g}: best of {len(order)} "
                      f"candidate(s) by P(good) - {dial.lam:.4g} x relative cost ({dial.source} dial): "
                      f"routing to {order[0]}")
        else:
            reason = f"{why}: routing to {order[0]}"
        if len(order) < len(self.names):
            reason += f" ({len(self.names) - len(order)} excluded: limits or context)"
        if q is not None and order[0] in self.cold_started():
            reason += f" (cold start: {order[0]} has no labels yet, read as {self.cold_started()[order[0]]})"
        if self.settings.failover != "other":
            order = order[:1]
        if category is not None and q is not None:
            reason += f"; quality read within category {category['name']} (p={category['p']:.2f})"
        return FleetDecision(order, candidates, dial.lam, dial.source, version, reason,
                             (time.perf_counter() - t0) * 1000, limits_dict, category)


def _role(ctx: ServingContext, name: str) -> str | None:
    pair = ctx.pair
    return "weak" if pair.weak.name == name else "strong" if pair.strong.name == name else None


class _FleetBackendStrategy(_BackendStrategy):
    """Calls over the fleet's models by name, through their breakers (Guard.attempt_models)."""

    def __init__(self, ctx: ServingContext, fleet: Fleet, tokens: TokenStats):
        super().__init__(ctx)
        self.fleet, self.tokens = fleet, tokens

    def _attempt(self, target: Any, call: Any) -> Served:  # target: the ordered fleet model names
        return self.ctx.guard.attempt_models(target, call)

    def _report(self, served: Served, exc: BackendError) -> None:
        self.ctx.guard.report_model(served.backend.name, exc)

    def _answered(self, out: Outcome) -> None:
        self.tokens.observe(out.model, out.completion_tokens)

    def _failed_over(self, out: Outcome, served: Served) -> None:
        if not served.failed:
            return
        first = served.failed[0]
        reason = f"{first.model} unavailable ({first.kind}); served by {served.backend.name}"
        out.model, out.role = served.backend.name, _role(self.ctx, served.backend.name)
        out.reason = f"{reason}; first choice: {out.reason}"
        out.extra["failover"] = {"from_model": first.model, "from_role": _role(self.ctx, first.model) or "fleet",
                                 "to_model": served.backend.name, "to_role": out.role or "fleet", "reason": reason,
                                 "attempts": [f.as_dict() for f in served.failed]}

    def _cost(self, out: Outcome) -> float:
        failed = sum(a["cost_usd"] for a in out.extra.get("failover", {}).get("attempts", []))
        return failed + self.fleet[out.model].cost(out.prompt_tokens, out.completion_tokens)


class FleetRouterStrategy(_FleetBackendStrategy):
    """model="router" over a fleet: the dial's ranking, served by the first model that answers."""

    name = "router"

    def __init__(self, ctx: ServingContext, fleet: Fleet, fleet_router: FleetRouter):
        super().__init__(ctx, fleet, fleet_router.tokens)
        self.fleet_router = fleet_router
        self.limits: RoutingLimits | None = None
        self._rng = random.Random()
        self._rng_lock = threading.Lock()

    def with_limits(self, limits: RoutingLimits | None) -> FleetRouterStrategy:
        """This strategy for one request carrying its own limits."""
        bound = copy.copy(self)
        bound.limits = limits
        return bound

    def _decide(self, messages: list[Message], params: GenerationParams) -> tuple[Outcome, list[str]]:
        d = self.fleet_router.decide(last_user_prompt(messages), self.limits, params.max_new_tokens)
        out = Outcome("router", d.chosen, _role(self.ctx, d.chosen), d.reason, router_version=d.router_version,
                      routing_ms=d.routing_ms)
        out.extra["fleet"] = d.info()
        self._explore(out, d)
        return out, d.order

    def _explore(self, out: Outcome, d: FleetDecision) -> None:
        """Draw whether another eligible model (one of the rest, uniformly) also answers, in the
        background (serving/exploration.py): measured quality per model and labels for every model.
        The route is deterministic (propensity 1); explore_propensity is P(that model is observed)."""
        share = float(self.ctx.settings.explore_share)
        others = [c["model"] for c in d.candidates if c["excluded"] is None and c["model"] != d.chosen]
        if share <= 0 or not others:
            return
        with self._rng_lock:
            explored, other = self._rng.random() < share, self._rng.choice(others)
        out.extra.update(propensity=1.0, explore_propensity=share / len(others), explored=explored,
                         **({"explore_model": other} if explored else {}))

    def run(self, messages: list[Message], params: GenerationParams) -> Outcome:
        out, order = self._decide(messages, params)
        return self._call(out, order, messages, params)

    def stream(self, messages: list[Message], params: GenerationParams) -> tuple[Outcome, Iterator[str]]:
        out, order = self._decide(messages, params)
        return self._stream(out, order, messages, params)


class FleetDirectStrategy(_FleetBackendStrategy):
    """A fleet model asked for by name; with failover=other the dearest others take over if it is down."""

    name = "direct"

    def __init__(self, ctx: ServingContext, fleet: Fleet, tokens: TokenStats, model: str):
        super().__init__(ctx, fleet, tokens)
        self.model = model

    def _order(self) -> list[str]:
        if self.ctx.settings.failover != "other":
            return [self.model]
        rest = sorted((m for m in self.fleet.models if m.name != self.model), key=lambda m: -(m.price_in + m.price_out))
        return [self.model, *(m.name for m in rest)]

    def _outcome(self) -> Outcome:
        return Outcome("direct", self.model, _role(self.ctx, self.model), f"model {self.model} requested by name",
                       router_version=self.ctx.router.snapshot.version)

    def run(self, messages: list[Message], params: GenerationParams) -> Outcome:
        return self._call(self._outcome(), self._order(), messages, params)

    def stream(self, messages: list[Message], params: GenerationParams) -> tuple[Outcome, Iterator[str]]:
        return self._stream(self._outcome(), self._order(), messages, params)


@dataclass
class FleetServing:
    """What the app keeps of the fleet: the table, its backends, the decision and its strategy."""

    fleet: Fleet
    backends: dict[str, Backend]
    router: FleetRouter
    strategy: FleetRouterStrategy
    directs: dict[str, FleetDirectStrategy] = field(default_factory=dict)

    def health(self, guard: Any) -> dict[str, Any]:
        circuits = guard.fleet_snapshot() if guard is not None else {}
        tokens = self.router.tokens.snapshot()
        return {"source": self.fleet.source, "weak": self.fleet.weak, "strong": self.fleet.strong,
                "routes_router_strategy": self.fleet.from_file,
                "models": [{**m.describe(), **tokens.get(m.name, {}),
                            **({"circuit": circuits[m.name]} if m.name in circuits else {})}
                           for m in self.fleet.models],
                "dial": self.router.dial().to_dict(), "cold_started": self.router.cold_started()}


def build_fleet(ctx: ServingContext, fleet: Fleet, backends: dict[str, Backend],
                strategies: dict[str, Any]) -> FleetServing:
    """The fleet decision and strategies; with a fleet file they take `router` and each model's
    name in `strategies` (the pair's names keep their direct strategies)."""
    tokens = TokenStats(fleet)
    fleet_router = FleetRouter(ctx.settings, fleet, ctx.router, tokens)
    strategy = FleetRouterStrategy(ctx, fleet, fleet_router)
    serving = FleetServing(fleet, backends, fleet_router, strategy)
    if fleet.from_file:
        ctx.router.load_checks.append(fleet_router.check_router)
        ctx.fleet_prices.update({m.name: (m.price_in, m.price_out) for m in fleet.models})
        ctx.fleet_router_names.update({m.name: m.logs_name for m in fleet.models})
        ctx.fleet_ladder[:] = [m.name for m in sorted(fleet.models, key=lambda m: (m.price_in + m.price_out,
                                                                                     fleet.names.index(m.name)))]
        strategies["router"] = strategy
        for name in fleet.names:
            if name not in strategies:
                serving.directs[name] = strategies[name] = FleetDirectStrategy(ctx, fleet, tokens, name)
    return serving

