"""Exploration (issue 24; docs/exploration-and-ope.md): a share of routed requests also gets the
other model's answer, in the background.

The router strategy draws, per routed request, whether to explore (probability
ROUTEROPS_EXPLORE_SHARE) and logs on the request row (extra) the propensity of the route it took
(1.0: the threshold router is deterministic), the exploration propensity (the share at that moment)
and whether it explored. The user's answer is the routed one, returned as soon as it exists: the other
model is called afterwards by a small pool of background threads fed through a bounded queue (a full
queue drops the exploration, counted, rather than queue work in front of users). The pair lands in
`exploration_pairs` with the exploration call's cost and latency; the configured judge labels it
later (routerops.training.exploration_judge, a scheduled job) or feedback does.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from routerops.backends.base import Backend, BackendError, GenerationParams, Message, last_user_prompt
from routerops.backends.factory import BackendPair
from routerops.db import session_scope
from routerops.db.models import ExplorationPair
from routerops.fleet import Fleet
from routerops.serving.request_log import Prices
from routerops.settings import Settings
from routerops.text import prompt_hash

log = logging.getLogger(__name__)


@dataclass
class ExploreTask:
    request_id: str
    messages: list[Message]
    params: GenerationParams
    served_role: str
    served_answer: str
    p_strong_wins: float | None
    alpha: float | None
    router_version: str | None
    propensity: float
    explore_propensity: float
    category: str | None
    # a fleet (issue 27): the served model and the one explored, by fleet name (None: the pair's other model)
    served_model: str | None = None
    other_model: str | None = None


def count_tokens(backend: object, text: str) -> int:
    counter = getattr(backend, "count_tokens", None)
    return int(counter(text)) if counter is not None else (max(1, round(len(text) / 4)) if text else 0)


class Explorer:
    """Background calls of the other model for explored requests; rows in exploration_pairs."""

    def __init__(self, settings: Settings, pair: BackendPair, prices: Prices, metrics: object | None = None,
                 fleet: Fleet | None = None, fleet_backends: dict[str, Backend] | None = None):
        self.settings, self.pair, self.prices, self.metrics = settings, pair, prices, metrics
        self.fleet, self.fleet_backends = fleet, fleet_backends or {}
        self._queue: queue.Queue[ExploreTask | None] = queue.Queue(maxsize=settings.explore_queue_size)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._busy = 0
        self.stored = self.failed = self.dropped = 0

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.explorations.labels(outcome).inc()

    def submit(self, task: ExploreTask) -> bool:
        """Queue one exploration; never blocks (a full queue drops it). Returns whether it was queued."""
        with self._lock:
            if not self._threads:
                for i in range(self.settings.explore_workers):
                    t = threading.Thread(target=self._run, name=f"explore-{i}", daemon=True)
                    t.start()
                    self._threads.append(t)
        try:
            self._queue.put_nowait(task)
        except queue.Full:
            self.dropped += 1
            self._count("dropped")
            log.warning("exploration queue full: request %s not explored", task.request_id)
            return False
        return True

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Block until every queued exploration is stored (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self._queue.empty() and self._busy == 0:
                    return True
            time.sleep(0.01)
        return False

    def stop(self, timeout_s: float = 10.0) -> None:
        self.wait_idle(timeout_s)
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=1.0)
        self._threads = []

    def _run(self) -> None:
        while True:
            task = self._queue.get()
            if task is None:
                return
            with self._lock:
                self._busy += 1
            try:
                self.explore(task)
            except Exception:  # noqa: BLE001 - a background failure must never reach users
                log.exception("exploration of request %s failed", task.request_id)
            finally:
                with self._lock:
                    self._busy -= 1

    def _fleet_pair(self, task: ExploreTask) -> tuple[str, Backend, str, str, Callable[[int, int], float]]:
        """(the served model's role in the pair, the explored backend, weak and strong router names, the
        explored call's cost) for a fleet exploration: of the two models the cheaper is "weak"."""
        fleet = self.fleet
        served, other = fleet[task.served_model], fleet[task.other_model]
        weak, strong = sorted((served, other), key=lambda m: (m.price_in + m.price_out, fleet.names.index(m.name)))
        role = "weak" if served is weak else "strong"
        return role, self.fleet_backends[other.name], weak.logs_name, strong.logs_name, other.cost

    def explore(self, task: ExploreTask) -> ExplorationPair:
        """Call the other model (blocking) and store the pair."""
        if task.other_model is not None and self.fleet is not None:
            served_role, backend, weak_name, strong_name, cost = self._fleet_pair(task)
        else:
            served_role, backend = task.served_role, self.pair.by_role("weak" if task.served_role == "strong"
                                                                       else "strong")
            weak_name, strong_name = self.settings.weak_router_name, self.settings.strong_router_name
            other_role = "weak" if served_role == "strong" else "strong"
            cost = lambda p, c: self.prices.cost(other_role, p, c)  # noqa: E731
        other = "weak" if served_role == "strong" else "strong"
        prompt = last_user_prompt(task.messages)
        row = ExplorationPair(
            request_id=task.request_id, prompt=prompt if self.settings.store_prompts else None,
            prompt_hash=prompt_hash(prompt), category=task.category, router_version=task.router_version,
            served_role=served_role, weak_model=weak_name, strong_model=strong_name,
            p_strong_wins=task.p_strong_wins, alpha=task.alpha,
            propensity=task.propensity, explore_propensity=task.explore_propensity, status="pending", cost_usd=0.0)
        setattr(row, f"{served_role}_answer", task.served_answer)
        t0 = time.perf_counter()
        try:
            gen = backend.generate(task.messages, task.params)
        except BackendError as exc:
            row.status, row.error = "failed", str(exc)[:1000]
            self.failed += 1
            self._count("failed")
        else:
            setattr(row, f"{other}_answer", gen.text)
            ptok = gen.prompt_tokens or max(1, round(sum(len(m.get("content") or "") for m in task.messages) / 4))
            ctok = gen.completion_tokens or count_tokens(backend, gen.text)
            row.cost_usd = cost(ptok, ctok)
            self.stored += 1
            self._count("stored")
            if self.metrics is not None:
                self.metrics.exploration_cost.inc(row.cost_usd)
        row.latency_ms = (time.perf_counter() - t0) * 1000
        with session_scope(self.settings) as session:
            session.add(row)
        return row
