"""What `model` in a request can name: a strategy (router, cascade, speculative) or one of the pair.

The seam for new strategies is STRATEGY_FACTORIES: name -> factory(ctx) -> Strategy. A strategy
whose parts are missing reports why through `unavailable()`, and the API answers 503
"strategy not available: <reason>" instead of failing mid-request.
"""

from __future__ import annotations

import copy
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from routerops.backends.base import Backend, BackendError, GenerationParams, Message, last_user_prompt
from routerops.backends.factory import BackendPair
from routerops.backends.local import LocalBackend, _held_back
from routerops.db import session_scope
from routerops.model_names import ModelCatalog
from routerops.models.cascade_config import PlanChoice, UnknownCategory, select_plan
from routerops.models.cascade_log import StepRecord
from routerops.models.cascade_scorer.features import rung_parts
from routerops.models.cascade_scorer.registry import load_cascade_scorer
from routerops.models.embedders.router_files import embedder_from_router_metadata
from routerops.models.exit_head import target_spec
from routerops.models.probes.model import load_probe
from routerops.serving.cascade import (
    CascadeConfig,
    CascadeConfigError,
    CascadeStep,
    load_cascade_config,
    run_cascade,
)
from routerops.serving.failover import FailedAttempt, Guard, Served
from routerops.serving.request_log import Prices
from routerops.serving.routing import RouterState
from routerops.serving.speculative import serve_generate, serve_stream
from routerops.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ServingContext:
    settings: Settings
    pair: BackendPair
    router: RouterState
    prices: Prices
    guard: Guard | None = None  # failover + circuit breakers; built from the settings when not given
    # a fleet file's models beyond the pair (serving/fleet.py sets them): name -> (price_in, price_out),
    # name -> its name in the router's vocabulary, and the names cheapest first (the default cascade's ladder)
    fleet_prices: dict[str, tuple[float, float]] = field(default_factory=dict)
    fleet_router_names: dict[str, str] = field(default_factory=dict)
    fleet_ladder: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.guard is None:
            self.guard = Guard(self.settings, self.pair)


@dataclass
class Outcome:
    strategy: str
    model: str  # the model that answered
    role: str | None  # weak | strong | None
    reason: str
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    cost_usd: float = 0.0
    p_strong_wins: float | None = None
    alpha: float | None = None
    alpha_source: str | None = None
    router_version: str | None = None
    routing_ms: float | None = None
    routing_cached: bool | None = None
    escalated: bool | None = None
    probe_score: float | None = None
    spec: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # streaming: called with the full text once the stream ends, to fill tokens and cost
    finalize: Callable[[str], None] | None = None


def count_prompt_tokens(backend: Backend, messages: list[Message]) -> int:
    prompt_ids = getattr(backend, "prompt_ids", None) or getattr(getattr(backend, "base", None), "prompt_ids", None)
    if prompt_ids is not None:
        return len(prompt_ids(messages))
    return max(1, round(sum(len(m.get("content") or "") for m in messages) / 4))


def count_tokens(backend: Backend, text: str) -> int:
    counter = getattr(backend, "count_tokens", None)
    return int(counter(text)) if counter is not None else max(1, round(len(text) / 4)) if text else 0


def _pieces(text: str, size: int = 16) -> Iterator[str]:
    for i in range(0, len(text), size):
        yield text[i : i + size]


class Strategy:
    name = "base"

    def __init__(self, ctx: ServingContext):
        self.ctx = ctx

    def unavailable(self) -> str | None:
        return None

    def run(self, messages: list[Message], params: GenerationParams) -> Outcome:
        raise NotImplementedError

    def stream(self, messages: list[Message], params: GenerationParams) -> tuple[Outcome, Iterator[str]]:
        """Default: answer fully, then hand out the text in pieces."""
        out = self.run(messages, params)
        return out, _pieces(out.text)


class _BackendStrategy(Strategy):
    """Shared by direct model calls and routing: the first of the candidates that answers serves.
    `target` is a role of the pair ("weak"/"strong": that one, then the other) here, or the fleet's
    ordered model names in serving/fleet.py, which overrides the hooks `_attempt`, `_report`,
    `_failed_over`, `_cost` and `_answered`."""

    def _attempt(self, target: Any, call: Callable[[Backend], Any]) -> Served:
        return self.ctx.guard.attempt(target, call)

    def _report(self, served: Served, exc: BackendError) -> None:
        """A failure after the first token (a broken stream) counts against the backend's breaker."""
        self.ctx.guard.report(served.role, exc)

    def _answered(self, out: Outcome) -> None:
        """Called once the answer's tokens are known."""

    def _failed_over(self, out: Outcome, served: Served) -> None:
        """Point the outcome at the backend that answered and say why (reason, extra.failover)."""
        if not served.failed:
            return
        out.model, out.role = served.backend.name, served.role
        out.reason = f"{served.reason}; first choice: {out.reason}"
        out.extra["failover"] = {"from_model": served.failed[0].model, "from_role": served.failed[0].role,
                                 "to_model": served.backend.name, "to_role": served.role,
                                 "reason": served.reason, "attempts": [f.as_dict() for f in served.failed]}

    def _call(self, out: Outcome, target: Any, messages: list[Message], params: GenerationParams) -> Outcome:
        served = self._attempt(target, lambda backend: backend.generate(messages, params))
        self._failed_over(out, served)
        backend, gen = served.backend, served.result
        out.text, out.finish_reason = gen.text, gen.finish_reason
        out.prompt_tokens = gen.prompt_tokens or count_prompt_tokens(backend, messages)
        out.completion_tokens = gen.completion_tokens or count_tokens(backend, gen.text)
        out.cost_usd = self._cost(out)
        self._answered(out)
        if gen.extra:
            out.extra["generation"] = {k: v for k, v in gen.extra.items() if isinstance(v, str | int | float)}
        return out

    def _cost(self, out: Outcome) -> float:
        failed = sum(a["cost_usd"] for a in out.extra.get("failover", {}).get("attempts", []))
        return failed + self.ctx.prices.cost(out.role or "strong", out.prompt_tokens, out.completion_tokens)

    def _stream(self, out: Outcome, target: Any, messages: list[Message],
                params: GenerationParams) -> tuple[Outcome, Iterator[str]]:
        """The first delta is pulled here, before any byte goes to the client: a backend that fails
        before its first token is failed over like a non-streaming call. A break after it raises
        BackendError from the iterator (the API ends the stream with an error event)."""

        def first(backend: Backend) -> tuple[Iterator[str], list[str]]:
            deltas = iter(backend.stream(messages, params))
            return deltas, [d for d in (next(deltas, None),) if d is not None]

        served = self._attempt(target, first)
        self._failed_over(out, served)
        backend, (deltas, head) = served.backend, served.result
        out.prompt_tokens = count_prompt_tokens(backend, messages)
        out.cost_usd = self._cost(out)

        def rest() -> Iterator[str]:
            yield from head
            try:
                yield from deltas
            except BackendError as exc:
                if exc.unavailable:
                    self._report(served, exc)
                raise

        def finalize(text: str) -> None:
            out.text = text
            out.completion_tokens = count_tokens(backend, text)
            out.cost_usd = self._cost(out)
            self._answered(out)

        out.finalize = finalize
        return out, rest()


class DirectStrategy(_BackendStrategy):
    name = "direct"

    def __init__(self, ctx: ServingContext, role: str):
        super().__init__(ctx)
        self.role = role
        self.backend = ctx.pair.by_role(role)  # the model asked for; its pair partner takes over if it is down

    def _outcome(self) -> Outcome:
        snap = self.ctx.router.snapshot
        return Outcome("direct", self.backend.name, self.role, f"model {self.backend.name} requested by name",
                       alpha=snap.alpha, router_version=snap.version)

    def run(self, messages: list[Message], params: GenerationParams) -> Outcome:
        return self._call(self._outcome(), self.role, messages, params)

    def stream(self, messages: list[Message], params: GenerationParams) -> tuple[Outcome, Iterator[str]]:
        return self._stream(self._outcome(), self.role, messages, params)


class RouterStrategy(_BackendStrategy):
    name = "router"

    def _decide(self, messages: list[Message]) -> Outcome:
        d = self.ctx.router.decide(last_user_prompt(messages))
        backend = self.ctx.pair.by_role(d.role)
        return Outcome("router", backend.name, d.role, d.reason, p_strong_wins=d.p_strong_wins, alpha=d.alpha,
                       alpha_source=d.alpha_source, router_version=d.router_version, routing_ms=d.routing_ms,
                       routing_cached=d.cached)

    def __init__(self, ctx: ServingContext):
        super().__init__(ctx)
        self._rng = random.Random()
        self._rng_lock = threading.Lock()

    def _explore(self, out: Outcome) -> None:
        """Log the route's propensity and draw whether the other model answers too (in the background,
        after the user's answer: serving/exploration.py). The draw never changes the route."""
        share = float(self.ctx.settings.explore_share)
        with self._rng_lock:
            u = self._rng.random()
        out.extra.update(propensity=1.0, explore_propensity=share, explored=share > 0 and u < share)

    def run(self, messages: list[Message], params: GenerationParams) -> Outcome:
        out = self._decide(messages)
        self._explore(out)
        return self._call(out, out.role or "strong", messages, params)

    def stream(self, messages: list[Message], params: GenerationParams) -> tuple[Outcome, Iterator[str]]:
        out = self._decide(messages)
        self._explore(out)
        return self._stream(out, out.role or "strong", messages, params)


class StrategyUnavailable(RuntimeError):
    """Raised by a strategy at request time when its parts cannot be loaded (API: 503)."""


def _stop_filtered(deltas: Iterator[str], stops: tuple[str, ...]) -> Iterator[str]:
    """Cut a delta stream at the first stop string (holding back text that may start one)."""

    stops = tuple(x for x in stops if x)
    if not stops:
        yield from deltas
        return
    text, emitted = "", 0
    for delta in deltas:
        text += delta
        hits = [i for i in (text.find(x) for x in stops) if i >= 0]
        if hits:
            if min(hits) > emitted:
                yield text[emitted : min(hits)]
            return
        end = len(text) - _held_back(text, stops)
        if end > emitted:
            yield text[emitted:end]
            emitted = end
    if len(text) > emitted:
        yield text[emitted:]


class DefaultCascadeScorer:
    """The out-of-the-box cascade's scorer (no calibrated config, no probe): the live router's
    P(good answer | prompt) for the rung's model where it predicts one (an IRT-MF router), else 1.0
    for any non-empty answer (the first rung's answer is kept); an empty answer always scores 0."""

    version = "default"

    def __init__(self, ctx: ServingContext):
        self.ctx = ctx

    def describe(self) -> str:
        router = self.ctx.router.snapshot.router
        if router is not None and getattr(router, "predicts_quality", False):
            return f"scored by router {self.ctx.router.snapshot.version}'s P(good | prompt)"
        return "no router predictions: a non-empty answer is kept"

    def __call__(self, messages: list[Message], generation: Any) -> float:
        if not (generation.text or "").strip():
            return 0.0
        snap = self.ctx.router.snapshot
        router = snap.router
        if router is None or not getattr(router, "predicts_quality", False):
            return 1.0
        prompt = last_user_prompt(list(messages))
        name = self.ctx.fleet_router_names.get(generation.model) or (
            self.ctx.settings.strong_router_name if generation.model == self.ctx.pair.strong.name
            else self.ctx.settings.weak_router_name)
        try:
            return float(router.quality_embeddings(router.embedder.encode([prompt]), [name], prompts=[prompt])[0, 0])
        except Exception as exc:  # noqa: BLE001 - no prediction: keep the answer
            log.warning("default cascade scorer: %s", exc)
            return 1.0


class _Unscored:
    """The scorer of a one-model ladder: never asked (the last rung's answer is always returned)."""

    version = None

    def __call__(self, messages: list[Message], generation: Any) -> float:  # pragma: no cover - never called
        raise CascadeConfigError("a one-model ladder has no rung to score")


@dataclass
class _LoadedPlan:
    """One runnable ladder: the config's fallback plan or a category's plan."""

    models: list[str]
    thresholds: list[float]
    ladder: list[CascadeStep]
    probe: Any
    roles: list[str]
    partner_roles: list[str | None]


@dataclass
class _LoadedCascade:
    config: CascadeConfig
    plans: dict[str | None, _LoadedPlan]  # None: the fallback (top-level) plan
    embedder: Any = None  # the category classifier's embedder (None: no classifier)


class CascadeStrategy(Strategy):
    """Generate with the weak model, score the answer with the deferral probe, escalate if unsure.

    The mechanism and its calibrated config live in routerops.serving.cascade (issue 4): the ladder and the
    thresholds come from the stored config (`routerops cascade calibrate`), the probe from its
    probe_uri or models:/<probe_model_name>@champion. Config and probe are re-read every
    reload_interval_s, so a new calibration or an approved probe goes live without a restart.
    A config with per-category plans runs, per request, the plan of the category the request gives
    (`extra_body={"routerops": {"category": ...}}`, see with_category) or the stored classifier
    predicts from the prompt (routerops.models.cascade_config.select_plan).
    """

    name = "cascade"

    def __init__(self, ctx: ServingContext):
        super().__init__(ctx)
        self._cache: dict[str, tuple[float, _LoadedCascade]] = {}  # shared with the per-request copies
        self._lock = threading.Lock()
        self.category: str | None = None

    def with_category(self, category: str | None) -> CascadeStrategy:
        """This strategy for one request that names its category (the loaded config is shared)."""
        bound = copy.copy(self)
        bound.category = category
        return bound

    def category_error(self) -> str | None:
        """Why the request's category cannot run (unknown: the known ones named), else None."""
        if self.category is None:
            return None
        try:
            select_plan(self._load().config, self.category)
        except UnknownCategory as exc:
            return str(exc)
        return None

    def _role_of(self, name: str) -> str | None:
        catalog = ModelCatalog.builtin()
        for role, backend in (("weak", self.ctx.pair.weak), ("strong", self.ctx.pair.strong)):
            if name == backend.name or catalog.canonicalize(name) == catalog.canonicalize(backend.name):
                return role
        if name in self.ctx.fleet_prices and name in self.ctx.guard.fleet:  # a fleet model: its name is its key
            return name
        return None

    def _backend(self, key: str) -> Backend:
        return self.ctx.pair.by_role(key) if key in ("weak", "strong") else self.ctx.guard.fleet[key]

    def _prices(self, key: str) -> tuple[float, float]:
        return self.ctx.prices.by_role[key] if key in ("weak", "strong") else self.ctx.fleet_prices[key]

    def _call(self, key: str, call: Callable[[Backend], Any]) -> Any:
        guard = self.ctx.guard
        return guard.call(key, call) if key in ("weak", "strong") else guard.call_model(key, call)

    def _read_config(self) -> CascadeConfig | None:
        """The stored config; None when the database is down and a loaded one keeps serving."""
        try:
            with session_scope(self.ctx.settings) as session:
                return load_cascade_config(session) or _NO_CONFIG
        except CascadeConfigError as exc:
            raise StrategyUnavailable(f"the stored cascade config is invalid: {exc}") from None
        except SQLAlchemyError as exc:  # database down: the last good config keeps serving
            if self._cache.get("loaded"):
                log.warning("cascade config unreadable (%s); serving the last one loaded", type(exc).__name__)
                return None
            raise StrategyUnavailable(f"the cascade config cannot be read: the database is unreachable "
                                      f"({type(exc).__name__})") from None

    def _default_config(self) -> CascadeConfig:
        settings = self.ctx.settings
        if not settings.cascade_default:
            raise StrategyUnavailable("no cascade config yet: run `routerops cascade calibrate` "
                                      "(or set ROUTEROPS_CASCADE_DEFAULT=true)")
        pair = self.ctx.pair  # a fleet file: every fleet model, cheapest first; else weak then strong
        names = list(self.ctx.fleet_ladder) or (
            [pair.weak.name, pair.strong.name] if pair.weak.name != pair.strong.name else [pair.strong.name])
        return CascadeConfig(models=names, thresholds=[settings.cascade_default_threshold] * (len(names) - 1),
                             objective="default", source="ROUTEROPS_CASCADE_DEFAULT")

    def _load(self) -> _LoadedCascade:
        with self._lock:
            cached = self._cache.get("loaded")
            # the default cascade is re-checked at every call: a calibrated config replaces it at once
            if cached and time.monotonic() - cached[0] < self.ctx.settings.reload_interval_s \
                    and cached[1].config.objective != "default":
                return cached[1]
            config = self._read_config()
            if config is None:
                self._cache["loaded"] = (time.monotonic(), cached[1])
                return cached[1]
            default = config is _NO_CONFIG
            if default:
                config = self._default_config()
            plans = {None: self._plan(config, None, config.models, config.thresholds, None, None, default)}
            for category, p in config.plans.items():
                plans[category] = self._plan(config, category, p.models, p.thresholds, p.scorer_uri, p.probe_uri,
                                             default)
            value = _LoadedCascade(config, plans, self._classifier_embedder(config))
            self._cache["loaded"] = (time.monotonic(), value)
            return value

    def _classifier_embedder(self, config: CascadeConfig) -> Any:
        if config.classifier is None:
            return None
        try:  # the embedder the classifier was trained on, or the reason it is not here
            return embedder_from_router_metadata(config.classifier.embedder, None, self.ctx.settings)
        except Exception as exc:  # noqa: BLE001 - no embedder: no category can be predicted
            raise StrategyUnavailable(f"the cascade's category classifier cannot embed prompts: "
                                      f"{str(exc)[:300]}") from None

    def _plan(self, config: CascadeConfig, category: str | None, models: list[str], thresholds: list[float],
              scorer_uri: str | None, probe_uri: str | None, default: bool) -> _LoadedPlan:
        where = "the cascade config" if category is None else f"the cascade plan for category {category!r}"
        ladder, roles, partner_roles = [], [], []
        for rung in models:  # "A" or "A+B" (A's answer with a second opinion from B)
            found = []
            for name in (m for m in rung_parts(rung) if m is not None):
                role = self._role_of(name)
                if role is None:
                    served = ", ".join(dict.fromkeys([self.ctx.pair.weak.name, self.ctx.pair.strong.name,
                                                      *self.ctx.fleet_ladder]))
                    raise StrategyUnavailable(f"{where} names {name!r}, which this server does not serve "
                                              f"(weak={self.ctx.pair.weak.name}, strong={self.ctx.pair.strong.name}"
                                              f"; served: {served})")
                found.append(role)
            role, partner = found[0], (found[1] if len(found) > 1 else None)
            p_in, p_out = self._prices(role)
            q_in, q_out = self._prices(partner) if partner else (0.0, 0.0)
            ladder.append(CascadeStep(self._backend(role), p_in, p_out,
                                      partner=self._backend(partner) if partner else None,
                                      partner_price_in=q_in, partner_price_out=q_out))
            roles.append(role)
            partner_roles.append(partner)
        return _LoadedPlan(list(models), list(thresholds), ladder,
                           self._probe(config, models, scorer_uri, probe_uri, default, where), roles, partner_roles)

    def _probe(self, config: CascadeConfig, models: list[str], scorer_uri: str | None, probe_uri: str | None,
               default: bool, where: str) -> Any:
        if default:
            return DefaultCascadeScorer(self.ctx)
        if len(models) == 1:
            return _Unscored()
        if scorer_uri is None and config.scorer_uri and list(models) == list(config.models):
            scorer_uri = config.scorer_uri
        uri = scorer_uri or probe_uri or config.probe_uri or f"models:/{self.ctx.settings.probe_model_name}@champion"
        try:
            if scorer_uri:
                probe = load_cascade_scorer(uri, self.ctx.settings)
                if len(probe.models) != len(models):
                    raise ValueError(f"the scorer was trained for the ladder {probe.models}, {where} names {models}")
                return probe
            return load_probe(uri, self.ctx.settings)
        except Exception as exc:  # noqa: BLE001 - no probe: the cascade cannot decide
            raise StrategyUnavailable(f"deferral probe {uri} not loadable: {str(exc)[:300]}") from None

    def unavailable(self) -> str | None:
        """Why the cascade cannot answer now (its config, a plan naming a model not served, its probe),
        so that it is not listed as available; read at most every reload_interval_s."""
        try:
            self._load()
        except StrategyUnavailable as exc:
            return str(exc)
        return None

    def _choose(self, loaded: _LoadedCascade, messages: list[Message]) -> PlanChoice:
        embedder = loaded.embedder
        embed = None if embedder is None else (
            lambda: np.asarray(embedder.encode([last_user_prompt(messages)]), np.float64)[0])
        return select_plan(loaded.config, self.category, embed)

    def run(self, messages: list[Message], params: GenerationParams) -> Outcome:
        loaded = self._load()
        config = loaded.config
        choice = self._choose(loaded, messages)
        plan = loaded.plans[choice.category if choice.source != "fallback" else None]
        ladder, probe, roles, partner_roles = plan.ladder, plan.probe, plan.roles, plan.partner_roles
        explore = config.explore_rate > 0 and random.random() < config.explore_rate
        # each rung goes through its backend's circuit breaker; an unavailable rung is skipped to the
        # next (ROUTEROPS_FAILOVER=other), as the router fails over to the other model
        res = run_cascade(messages, params, ladder, probe, plan.thresholds, explore=explore,
                          skip_unavailable=self.ctx.settings.failover == "other",
                          generate=lambda i, _step: self._call(roles[i], lambda b: b.generate(list(messages), params)),
                          ask_partner=lambda i, _step, p: self._call(partner_roles[i],
                                                                     lambda b: b.generate(list(messages), p)))
        out = self._outcome(res, plan, probe)
        if config.objective == "default":
            out.reason = f"default cascade (no calibrated config; {probe.describe()}): {out.reason}"
        if config.plans or choice.source != "fallback":
            out.reason = f"{_plan_words(choice)}: {out.reason}"
        self._failover(out, res, plan)
        # one cascade_steps row per rung that answered (routerops.serving.request_log writes them beside the
        # request log row); the plan's category, and how it was chosen, ride in each row's signals
        plan_signals = {"category": choice.category, "category_source": choice.source,
                        "category_probability": choice.probability} if config.plans else None
        out.extra["cascade_plan"] = choice.describe()
        out.extra["cascade_steps"] = [
            StepRecord(step=i, model=plan.models[i], score=res.scores[j],
                       threshold=float(plan.thresholds[i]) if i < len(plan.thresholds) else None,
                       accepted=j == res.answered_step, cost_usd=res.step_costs[j],
                       prompt_tokens=g.prompt_tokens + g.extra.get("second_opinion", {}).get("prompt_tokens", 0),
                       completion_tokens=g.completion_tokens
                       + g.extra.get("second_opinion", {}).get("completion_tokens", 0),
                       explored=res.explored, scorer_version=getattr(probe, "version", None),
                       signals=plan_signals).to_dict()
            for j, (i, g) in enumerate(zip(res.steps, res.generations, strict=True))]
        snap = self.ctx.router.snapshot
        out.alpha, out.router_version = snap.alpha, snap.version
        return out

    def _outcome(self, res: Any, plan: _LoadedPlan, probe: Any) -> Outcome:
        role, gen = plan.roles[res.answered_rung], res.generation
        role = role if role in ("weak", "strong") else None  # a fleet model beyond the pair has no role
        score, threshold = res.probe_score, res.threshold
        if score is None:
            reason = f"single-step cascade: {res.answered_by}"
        elif score >= threshold:
            reason = f"probe P(good)={score:.3f} >= {threshold:.3f}: kept {res.answered_by}'s answer"
        elif res.answered_rung > res.steps[0]:
            reason = f"probe P(good)={score:.3f} < {threshold:.3f}: escalated to {res.answered_by}"
        else:  # the rungs above were unavailable: the doubted answer is the only one there is
            reason = f"probe P(good)={score:.3f} < {threshold:.3f}, no later rung available: kept {res.answered_by}'s answer"
        out = Outcome("cascade", res.answered_by, role, reason, text=res.text, finish_reason=gen.finish_reason,
                      prompt_tokens=sum(g.prompt_tokens + g.extra.get("second_opinion", {}).get("prompt_tokens", 0)
                                        for g in res.generations),
                      completion_tokens=sum(g.completion_tokens
                                            + g.extra.get("second_opinion", {}).get("completion_tokens", 0)
                                            for g in res.generations),
                      cost_usd=res.cost, escalated=res.escalated, probe_score=score)
        out.extra.update(threshold=threshold, cascade_models=list(plan.models), cascade_scores=res.scores,
                         probe_version=getattr(probe, "version", None))
        return out

    def _failover(self, out: Outcome, res: Any, plan: _LoadedPlan) -> None:
        if not res.skipped:
            return
        guard, role = self.ctx.guard, out.role
        failed = [FailedAttempt(plan.roles[i], plan.ladder[i].name, exc.kind, str(exc)) for i, exc in res.skipped]
        served = Served(role, plan.ladder[res.answered_rung].backend, None, failed)
        out.reason = served.reason if res.probe_score is None else f"{served.reason}; {out.reason}"
        out.extra["failover"] = {"from_model": failed[0].model, "from_role": failed[0].role,
                                 "to_model": res.answered_by, "to_role": role, "reason": served.reason,
                                 "attempts": [f.as_dict() for f in failed]}
        if guard.metrics is not None:
            for f in failed:
                guard.metrics.failovers.labels(f.model, f.kind).inc()


_NO_CONFIG: Any = object()  # _read_config: the database holds no cascade config (the default one applies)


def _plan_words(choice: PlanChoice) -> str:
    if choice.source == "request":
        return f"category {choice.category!r} (given by the request): plan {choice.models}"
    if choice.source == "predicted":
        return f"category {choice.category!r} (predicted, P={choice.probability:.3f}): plan {choice.models}"
    return f"no category: fallback plan {choice.models}"


class SpeedupTracker:
    """The speculative strategy's measured speedups (target-only cost over actual, from each request's
    acceptance), over its last `window` requests per (target, draft). When their mean is below 1,
    speculative decoding is slower than the target alone on this traffic, so requests are decoded
    plainly; every `probe_every`-th such request still runs speculatively to re-measure."""

    def __init__(self, window: int = 8, probe_every: int = 10):
        self.window, self.probe_every = window, probe_every
        self._seen: dict[tuple, list[float]] = {}
        self._plain: dict[tuple, int] = {}
        self._lock = threading.Lock()

    def record(self, key: tuple, speedup: float) -> None:
        with self._lock:
            self._seen.setdefault(key, []).append(speedup)
            del self._seen[key][:-self.window]

    def measured(self, key: tuple) -> tuple[float, int] | None:
        with self._lock:
            seen = self._seen.get(key, [])
            return (sum(seen) / len(seen), len(seen)) if len(seen) >= self.window else None

    def use_plain(self, key: tuple) -> float | None:
        """The measured speedup when this request should be decoded plainly, else None."""
        m = self.measured(key)
        if m is None or m[0] >= 1.0:
            return None
        with self._lock:
            self._plain[key] = self._plain.get(key, 0) + 1
            if self._plain[key] % self.probe_every == 0:
                return None  # re-measure now and then: the traffic may have changed
        return m[0]


SPEEDUPS = SpeedupTracker()


class SpeculativeStrategy(Strategy):
    """Exact speculative decoding of the local target model (issue 5), via routerops.serving.speculative.
    Falls back to plain decoding of the same target, said in the reason and in `speculative`
    (fallback_plain 1, measured_speedup), while the measured speedup is below 1 (SpeedupTracker)."""

    name = "speculative"

    def _key(self) -> tuple:
        return (self._target(), getattr(self.ctx.settings, "speculative_draft", "?"))

    def _plain(self, messages: list[Message], params: GenerationParams, measured: float) -> Outcome:
        gen = LocalBackend(target_spec(self.ctx.settings), name=self._target()).generate(messages, params)
        n = self.measured_n()
        out = Outcome("speculative", self._target(), "strong",
                      f"plain decoding of {self._target()}: speculative decoding's measured speedup {measured:.2f} "
                      f"over its last {n} requests is below 1 (draft: "
                      f"{getattr(self.ctx.settings, 'speculative_draft', '?')})")
        out.text, out.finish_reason = gen.text, gen.finish_reason
        out.prompt_tokens, out.completion_tokens = gen.prompt_tokens, gen.completion_tokens
        out.spec = {"fallback_plain": 1.0, "measured_speedup": measured, "measured_requests": float(n)}
        out.cost_usd = self.ctx.prices.cost("strong", out.prompt_tokens, out.completion_tokens)
        return out

    def measured_n(self) -> int:
        m = SPEEDUPS.measured(self._key())
        return 0 if m is None else m[1]

    def unavailable(self) -> str | None:
        settings = self.ctx.settings
        if settings.strong_backend != "local" and getattr(settings, "speculative_target", None) is None:
            return (f"speculative decoding needs a local target model; the strong backend is "
                    f"{settings.strong_backend!r} (set ROUTEROPS_SPECULATIVE_TARGET)")
        return None

    def _target(self) -> str:
        return getattr(self.ctx.settings, "speculative_target", None) or self.ctx.settings.strong_model

    def _fill(self, out: Outcome, res: Any) -> None:
        stats = {k: float(v) for k, v in (getattr(res, "stats", None) or {}).items()
                 if isinstance(v, int | float) and not isinstance(v, bool)}
        if "speedup_estimate" in stats:
            stats.setdefault("speedup", stats["speedup_estimate"])
        if stats.get("speedup", 0.0) > 0.0:
            SPEEDUPS.record(self._key(), stats["speedup"])
        out.spec = stats
        out.prompt_tokens = int(getattr(res, "prompt_tokens", 0))
        out.completion_tokens = int(getattr(res, "completion_tokens", 0))
        out.finish_reason = getattr(res, "finish_reason", "stop") or "stop"
        out.extra["draft"] = getattr(res, "draft", None)
        out.cost_usd = self.ctx.prices.cost("strong", out.prompt_tokens, out.completion_tokens)

    def _outcome(self) -> Outcome:
        draft = getattr(self.ctx.settings, "speculative_draft", "?")
        return Outcome("speculative", self._target(), "strong",
                       f"exact speculative decoding of {self._target()} (draft: {draft})")

    def run(self, messages: list[Message], params: GenerationParams) -> Outcome:
        measured = SPEEDUPS.use_plain(self._key())
        if measured is not None:
            return self._plain(messages, params, measured)
        res = serve_generate(messages, params, self.ctx)
        out = self._outcome()
        out.model = getattr(res, "model", None) or out.model
        out.text = res.text
        self._fill(out, res)
        return out

    def stream(self, messages: list[Message], params: GenerationParams) -> tuple[Outcome, Iterator[str]]:
        measured = SPEEDUPS.use_plain(self._key())
        if measured is not None:
            out = self._plain(messages, params, measured)
            return out, _pieces(out.text)
        spec_stream = serve_stream(messages, params, self.ctx)
        out = self._outcome()

        def finalize(text: str) -> None:
            result = getattr(spec_stream, "result", None)
            if result is not None:
                self._fill(out, result)
            if text != getattr(result, "text", text):  # cut at a stop string
                out.finish_reason = "stop"
            out.text = text

        out.finalize = finalize
        return out, _stop_filtered(iter(spec_stream), tuple(params.stop))


STRATEGY_FACTORIES: dict[str, Callable[[ServingContext], Strategy]] = {
    "router": RouterStrategy,
    "cascade": CascadeStrategy,
    "speculative": SpeculativeStrategy,
}


def build_strategies(ctx: ServingContext) -> dict[str, Strategy]:
    """Every name `model` may take: the strategies, then the weak and strong model names."""
    table: dict[str, Strategy] = {name: factory(ctx) for name, factory in STRATEGY_FACTORIES.items()}
    table.setdefault(ctx.pair.weak.name, DirectStrategy(ctx, "weak"))
    table.setdefault(ctx.pair.strong.name, DirectStrategy(ctx, "strong"))
    return table
