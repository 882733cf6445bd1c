"""Failover between the two models of the pair, behind a circuit breaker per backend.

`Guard.attempt(role, call)` runs call(backend) on the chosen role's backend; when that backend is
unavailable (BackendError.unavailable: connection error, timeout, 5xx/429 after retries, a stream
broken before its first token) or its circuit is open, and ROUTEROPS_FAILOVER=other, the other role's
backend answers instead. Errors that are the request's fault (a 400, a prompt with no record) are
raised as they are: the other model would refuse them too, and they say nothing about health.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from routerops.backends.base import Backend, BackendError
from routerops.backends.factory import BackendPair
from routerops.serving.breaker import STATE_VALUE, BackendBreaker, CircuitOpen
from routerops.settings import Settings

T = TypeVar("T")
OTHER = {"weak": "strong", "strong": "weak"}


@dataclass
class FailedAttempt:
    role: str
    model: str
    kind: str  # ConnectError, HTTP 500, circuit open, ...
    detail: str
    cost_usd: float = 0.0  # a failed upstream call returns no usage: nothing is known to be billed

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "model": self.model, "error": self.kind, "detail": self.detail[:500],
                "cost_usd": self.cost_usd}


@dataclass
class Served:
    role: str
    backend: Backend
    result: Any
    failed: list[FailedAttempt] = field(default_factory=list)

    @property
    def reason(self) -> str | None:
        """"weak unavailable (ConnectError); served by strong", or None when the first choice answered."""
        if not self.failed:
            return None
        first = self.failed[0]
        return f"{first.role} unavailable ({first.kind}); served by {self.role}"


class BackendsUnavailable(BackendError):
    def __init__(self, failed: list[FailedAttempt]):
        super().__init__("; ".join(f"{f.role} ({f.model}) unavailable: {f.detail}" for f in failed),
                         unavailable=True, kind=failed[-1].kind)
        self.failed = failed


class Guard:
    """Owns one breaker per role; reports failovers, skips and breaker states to the metrics."""

    def __init__(self, settings: Settings, pair: BackendPair, metrics: Any = None,
                 fleet: dict[str, Backend] | None = None):
        self.settings, self.pair, self.metrics = settings, pair, metrics
        self.breakers = {role: BackendBreaker(pair.by_role(role).name, settings.breaker_fail_max,
                                              settings.breaker_reset_s, on_change=self._state_changed)
                         for role in ("weak", "strong")}
        # the fleet's models by name (issue 27): the pair's two share their role's breaker
        self.fleet: dict[str, Backend] = dict(fleet or {})
        self.named: dict[str, BackendBreaker] = {}
        for name, backend in self.fleet.items():
            role = next((r for r in ("weak", "strong") if pair.by_role(r) is backend), None)
            self.named[name] = self.breakers[role] if role else BackendBreaker(
                name, settings.breaker_fail_max, settings.breaker_reset_s, on_change=self._state_changed)
        for breaker in {id(b): b for b in [*self.breakers.values(), *self.named.values()]}.values():
            self._state_changed(breaker.name, breaker.state)

    def _state_changed(self, name: str, state: str) -> None:
        if self.metrics is not None:
            self.metrics.circuit_state.labels(name).set(STATE_VALUE.get(state, -1.0))

    def refresh_metrics(self) -> None:
        for breaker in {id(b): b for b in [*self.breakers.values(), *self.named.values()]}.values():
            self._state_changed(breaker.name, breaker.state)

    def order(self, role: str) -> list[str]:
        return [role, OTHER[role]] if self.settings.failover == "other" else [role]

    def call(self, role: str, call: Callable[[Backend], T]) -> T:
        """call(backend) on this role's backend alone, through its breaker: raises CircuitOpen when
        the circuit is open, and the backend's error (counted against it when `unavailable`)."""
        return self._guarded(self.pair.by_role(role), self.breakers[role], call)

    def _guarded(self, backend: Backend, breaker: BackendBreaker, call: Callable[[Backend], T]) -> T:
        try:
            probe = breaker.acquire()
        except CircuitOpen:
            if self.metrics is not None:
                self.metrics.circuit_skips.labels(backend.name).inc()
            raise
        try:
            result = call(backend)
        except BackendError as exc:
            if exc.unavailable:
                breaker.failure(probe, exc)
            else:
                breaker.release(probe)
            raise
        except BaseException:
            breaker.release(probe)
            raise
        breaker.success(probe)
        return result

    def _first_answer(self, tries: list[tuple[str, str, Backend, Callable[[], T]]]) -> Served:
        """The first of `tries` (label, model name, backend, run) that answers; an unavailable one
        (down, 5xx/429 after retries, open circuit) is recorded and skipped, any other error raised.
        BackendsUnavailable when every one failed."""
        failed: list[FailedAttempt] = []
        for label, model, backend, run in tries:
            try:
                result = run()
            except BackendError as exc:
                if not exc.unavailable:
                    raise
                failed.append(FailedAttempt(label, model, exc.kind, str(exc)))
                continue
            if failed and self.metrics is not None:
                self.metrics.failovers.labels(failed[0].model, failed[0].kind).inc()
            return Served(label, backend, result, failed)
        raise BackendsUnavailable(failed)

    def attempt(self, role: str, call: Callable[[Backend], T]) -> Served:
        """call(backend) on the pair: `role` first, the other one if it is unavailable (failover=other)."""
        return self._first_answer([(r, self.pair.by_role(r).name, self.pair.by_role(r),
                                    lambda r=r: self.call(r, call)) for r in self.order(role)])

    def attempt_models(self, order: list[str], call: Callable[[Backend], T]) -> Served:
        """call(backend) on the fleet models in `order` (the dial's ranking), each through its
        breaker: an unavailable or open-circuited model is skipped for the next. Served.role is the
        model's name."""
        return self._first_answer([(n, n, self.fleet[n], lambda n=n: self._guarded(self.fleet[n], self.named[n], call))
                                   for n in order])

    def call_model(self, name: str, call: Callable[[Backend], T]) -> T:
        """call(backend) on this fleet model alone, through its breaker (see `call`)."""
        return self._guarded(self.fleet[name], self.named[name], call)

    def report_model(self, name: str, exc: BaseException) -> None:
        self.named[name].failure(False, exc)

    def fleet_snapshot(self) -> dict[str, dict[str, object]]:
        return {name: b.snapshot() for name, b in self.named.items()}

    def report(self, role: str, exc: BaseException) -> None:
        """A failure after the call returned (a stream broken after its first token)."""
        self.breakers[role].failure(False, exc)

    def snapshot(self) -> dict[str, dict[str, object]]:
        return {role: {"name": b.name, **b.snapshot()} for role, b in self.breakers.items()}
