"""The runtime cascade: generate with the cheapest model, score the answer with a deferral probe,
escalate to the next model only when the probe doubts the answer.

Interface for the API (the `cascade` strategy)::

    from routerops.serving.cascade import CascadeStep, run_cascade, load_cascade_config

    config = load_cascade_config(session)            # CascadeConfig | None (None: not calibrated yet)
    ladder = [CascadeStep(backends[name], price_in, price_out) for name in config.models]
    probe = routerops.models.probes.model.load_probe(config.probe_uri or "models:/deferral-probe@champion", settings)
    result = run_cascade(messages, params, ladder, probe, config.thresholds)
    result.text, result.answered_by, result.escalated, result.probe_score, result.threshold, result.cost

Rule: at step i (all but the last), the probe gives P(answer good) for that step's answer; the answer
is returned iff P >= thresholds[i], otherwise the next step generates. The last step's answer is
always returned. `probe_scorer` is any callable (messages, Generation) -> float; pass a list (one per
non-final step) when the steps need different probes. A scorer with a `score_step(step, messages,
generations)` method (routerops.training.cascade_scorer's CascadeScorer) is called that way instead, so it sees
the earlier rungs' answers (agreement signals). With explore=True every rung generates (the logged
steps then give threshold refits every rung's outcome) while the answer returned is still the one
the thresholds pick. A step with a `partner` takes a second opinion (agreement-based cascading): the
partner's answer is drawn concurrently with the step's own (the same backend as partner means a
second sample of it, at SECOND_SAMPLE_TEMPERATURE and another seed), paid for, and handed to the
scorer as Generation.extra["second_sample"]; the answer returned is still the step's own. A partner
that fails only drops the signal (the scorer has a missing-sample form). With skip_unavailable=True
a rung whose backend is unavailable (BackendError.unavailable: down, timed out, circuit open) is
skipped to the next; when the last rung is unavailable the last answer generated is returned
although its score was below the threshold; only when no rung answers is the error raised. Backends are anything implementing
routerops.backends.base.Backend; nothing here touches the network or the database by itself except
load/save_cascade_config, which use the session they are given.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from routerops.backends.base import Backend, BackendError, Generation, GenerationParams, Message
from routerops.models.cascade_config import (  # noqa: F401 - serving's callers read them here
    CONFIG_KEY,
    CascadeConfig,
    CascadeConfigError,
    load_cascade_config,
    save_cascade_config,
)

log = logging.getLogger(__name__)

ProbeScorer = Callable[[Sequence[Message], Generation], float]
SECOND_SAMPLE_TEMPERATURE = 0.7  # a greedy second sample of the same model would only repeat the first


@dataclass(frozen=True)
class CascadeStep:
    backend: Backend
    price_in: float = 0.0  # USD per 1M prompt tokens
    price_out: float = 0.0  # USD per 1M completion tokens
    partner: Backend | None = None  # a second opinion: its answer is drawn too, and only compared with
    partner_price_in: float = 0.0
    partner_price_out: float = 0.0

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def second_sample(self) -> bool:
        """True iff the second opinion is another sample of the step's own model."""
        return self.partner is not None and self.partner is self.backend

    def cost(self, generation: Generation) -> float:
        return (generation.prompt_tokens * self.price_in + generation.completion_tokens * self.price_out) / 1e6

    def partner_cost(self, generation: Generation) -> float:
        return (generation.prompt_tokens * self.partner_price_in
                + generation.completion_tokens * self.partner_price_out) / 1e6

    def partner_params(self, params: GenerationParams) -> GenerationParams:
        if not self.second_sample:
            return params
        return replace(params, temperature=max(params.temperature, SECOND_SAMPLE_TEMPERATURE),
                       seed=None if params.seed is None else params.seed + 1)


@dataclass
class CascadeResult:
    text: str
    answered_by: str
    escalated: bool  # True iff a model other than the first answered
    probe_score: float | None  # the last probe score computed (the one that let the answer through or escalated)
    threshold: float | None  # the threshold that score was compared with
    generations: list[Generation]
    scores: list[float | None]  # per generated step; None for the last step (never scored)
    cost: float  # USD over every generation made
    answered_step: int = -1  # index of the generation returned (explore runs generate past it)
    explored: bool = False
    steps: list[int] = field(default_factory=list)  # the ladder rung of each generation
    skipped: list[tuple[int, BackendError]] = field(default_factory=list)  # rungs that were unavailable
    step_costs: list[float] = field(default_factory=list)  # per generation, its second opinion included
    second_opinion_errors: list[tuple[int, BackendError]] = field(default_factory=list)

    @property
    def answered_rung(self) -> int:
        return self.steps[self.answered_step] if self.steps else self.answered_step

    @property
    def generation(self) -> Generation:
        return self.generations[self.answered_step]


def _scorer_for(probe_scorer: ProbeScorer | Sequence[ProbeScorer], step: int) -> ProbeScorer:
    if callable(probe_scorer) or hasattr(probe_scorer, "score_step"):
        return probe_scorer  # type: ignore[return-value]
    scorers = list(probe_scorer)
    if step >= len(scorers):
        raise CascadeConfigError(f"no probe scorer for step {step} ({len(scorers)} given)")
    return scorers[step]


def _score(scorer: ProbeScorer, step: int, messages: Sequence[Message], generations: list[Generation]) -> float:
    score_step = getattr(scorer, "score_step", None)
    if score_step is not None:
        return float(score_step(step, messages, generations))
    return float(scorer(messages, generations[-1]))


def run_cascade(messages: Sequence[Message], params: GenerationParams, ladder: Sequence[CascadeStep],
                probe_scorer: ProbeScorer | Sequence[ProbeScorer], thresholds: Sequence[float],
                explore: bool = False, skip_unavailable: bool = False,
                generate: Callable[[int, CascadeStep], Generation] | None = None,
                ask_partner: Callable[[int, CascadeStep, GenerationParams], Generation] | None = None
                ) -> CascadeResult:
    """Run the ladder on one request (see the module docstring). Backend errors propagate, unless
    skip_unavailable and the backend is unavailable. `generate(rung, step)` replaces
    step.backend.generate and `ask_partner(rung, step, params)` step.partner.generate (serving passes
    the circuit breakers' calls)."""
    if not ladder:
        raise CascadeConfigError("the cascade ladder is empty")
    if len(thresholds) != len(ladder) - 1:
        raise CascadeConfigError(f"a ladder of {len(ladder)} models needs {len(ladder) - 1} thresholds, "
                                 f"got {len(thresholds)}")
    generations: list[Generation] = []
    scores: list[float | None] = []
    cost = 0.0
    last_score: float | None = None
    last_threshold: float | None = None
    answered: int | None = None
    steps: list[int] = []
    skipped: list[tuple[int, BackendError]] = []
    step_costs: list[float] = []
    partner_errors: list[tuple[int, BackendError]] = []
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cascade-partner") \
        if any(s.partner is not None for s in ladder[:-1]) else None

    def partner_answer(i: int, step: CascadeStep) -> Generation:
        p = step.partner_params(params)
        return ask_partner(i, step, p) if ask_partner is not None else step.partner.generate(list(messages), p)  # type: ignore[union-attr]

    try:
        for i, step in enumerate(ladder):
            second = pool.submit(partner_answer, i, step) if pool is not None and step.partner is not None \
                and i < len(ladder) - 1 else None
            try:
                gen = generate(i, step) if generate is not None else step.backend.generate(list(messages), params)
            except BackendError as exc:
                if second is not None:
                    second.cancel()
                if not (skip_unavailable and exc.unavailable):
                    raise
                skipped.append((i, exc))
                continue
            step_cost = step.cost(gen)
            if second is not None:
                try:
                    other = second.result()
                except BackendError as exc:  # no second opinion: the scorer sees the signal missing
                    log.warning("cascade rung %d: second opinion from %s failed (%s)", i, step.partner.name, exc.kind)
                    partner_errors.append((i, exc))
                else:
                    gen.extra["second_sample"] = other.text
                    gen.extra["second_opinion"] = {"model": other.model, "cost_usd": step.partner_cost(other),
                                                   "prompt_tokens": other.prompt_tokens,
                                                   "completion_tokens": other.completion_tokens}
                    step_cost += step.partner_cost(other)
            generations.append(gen)
            steps.append(i)
            step_costs.append(step_cost)
            cost += step_cost
            if i == len(ladder) - 1:
                scores.append(None)
                break
            score = _score(_scorer_for(probe_scorer, i), i, messages, generations)
            if math.isnan(score):
                raise ValueError(f"probe returned NaN for {step.name}'s answer")
            scores.append(score)
            if answered is None:
                last_score, last_threshold = score, float(thresholds[i])
                if score >= thresholds[i]:
                    answered = len(generations) - 1
                    if not explore:
                        break
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
    if not generations:
        raise BackendError("every rung of the cascade is unavailable: "
                           + "; ".join(f"{ladder[i].name}: {exc}" for i, exc in skipped),
                           unavailable=True, kind=skipped[-1][1].kind)
    answered = len(generations) - 1 if answered is None else answered
    return CascadeResult(text=generations[answered].text, answered_by=ladder[steps[answered]].name,
                         escalated=steps[answered] > 0, probe_score=last_score, threshold=last_threshold,
                         generations=generations, scores=scores, cost=cost, answered_step=answered,
                         explored=explore and len(generations) == len(ladder), steps=steps, skipped=skipped,
                         step_costs=step_costs, second_opinion_errors=partner_errors)
