"""The live router: the registry's `champion` MF router and the live alpha, reloaded in the background.

Every `reload_interval_s` (and on POST /admin/reload) the state asks MLflow which version
`models:/<router_model_name>@champion` points at and reads the live alpha from the database. A new
version is loaded and checked (it must know the configured pair and score a warm-up prompt) before it
replaces the old one in a single reference swap, so a request sees either the old or the new router,
never a mix. If MLflow is unreachable or the new version fails, the last good router keeps serving
and the error is reported at /healthz.

No champion yet (documented behaviour): every `router` request goes to the strong model with reason
"no champion router: routing to strong". With the registry unreachable before any router was loaded
(MLflow down at start-up) the same happens with reason "model registry unreachable ...: routing to
strong", and the champion goes live at the first reload that reaches the registry.

Exact repeats of a prompt (retries, templated traffic, the monitor's golden replays) are answered from
an LRU of scores (`routing_cache_size`), which belongs to one router: a swap starts it afresh.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime

from routerops import registry
from routerops.alpha import live_alpha
from routerops.db import session_scope
from routerops.models.router import load_router
from routerops.redact import redact
from routerops.settings import Settings
from routerops.text import prompt_hash

log = logging.getLogger(__name__)

NO_CHAMPION = "no champion router: routing to strong"


def registry_unreachable(uri: str) -> str:
    # this reason is on every routed response: the URI's credentials never are
    return f"model registry unreachable ({redact(uri)}), no router loaded yet: routing to strong"


@dataclass(frozen=True)
class Snapshot:
    router: object | None  # routerops.models.router.MFRouter
    version: str | None
    alpha: float
    alpha_source: str
    loaded_at: str | None = None
    alpha_reason: str = ""
    no_router_reason: str = NO_CHAMPION  # why every request goes to strong while router is None


@dataclass(frozen=True)
class Decision:
    role: str  # weak | strong
    p_strong_wins: float | None
    alpha: float
    router_version: str | None
    reason: str
    routing_ms: float
    cached: bool | None = None  # scored: whether from the routing cache (an exact repeat of a recent prompt)
    alpha_source: str | None = None  # where alpha came from (routerops/alpha.py)


class ScoreCache:
    """LRU of routing scores, valid for one router object; a different router empties it. Keyed by the
    prompt's hash, so long prompts cost 64 bytes each."""

    def __init__(self, size: int):
        self.size = size
        self._router: object | None = None
        self._scores: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, router: object, prompt: str) -> float | None:
        if self.size <= 0:
            return None
        key = prompt_hash(prompt)
        with self._lock:
            score = self._scores.get(key) if router is self._router else None
            if score is None:
                self.misses += 1
                return None
            self._scores.move_to_end(key)
            self.hits += 1
            return score

    def put(self, router: object, prompt: str, score: float) -> None:
        if self.size <= 0:
            return
        key = prompt_hash(prompt)
        with self._lock:
            if router is not self._router:  # a new champion: the old scores mean nothing
                self._router = router
                self._scores.clear()
            self._scores[key] = score
            self._scores.move_to_end(key)
            while len(self._scores) > self.size:
                self._scores.popitem(last=False)

    def __len__(self) -> int:
        return len(self._scores)


@dataclass(frozen=True)
class _Prepared:
    """What one router needs per decision, worked out once: its embedder, the resolved pair, and
    whether its embedder gains from batching."""

    router: object
    embedder: object
    strong: str
    weak: str
    inline: bool


class ScoreBatcher:
    """Scores routing requests. Embedders for which batching pays (MiniLM on torch) score concurrent
    requests together: one embedder call for every prompt that arrived while the previous batch was
    being scored (no added wait when traffic is light); a batch costs little more than one prompt.
    Embedders for which it does not (static: ~0.1 ms a prompt; ONNX int8: one prompt per run) score in
    the caller's thread, at most one per core at a time: a hand-off to the batch thread would cost more
    than the embedding.
    """

    def __init__(self, strong: str, weak: str, max_batch: int = 64, cache_size: int = 0):
        self.strong, self.weak, self.max_batch = strong, weak, max_batch
        self.cache = ScoreCache(cache_size)
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._prepared: _Prepared | None = None
        self._inline_slots = threading.BoundedSemaphore(os.cpu_count() or 1)
        self.batches = 0
        self.scored = 0

    def prepare(self, router) -> _Prepared:  # noqa: ANN001
        """Once per router object (a swap prepares the new one): embedder, resolved pair, path."""
        prep = self._prepared
        if prep is None or prep.router is not router:
            strong, weak = router.pair(self.strong, self.weak)
            embedder = router.embedder
            prep = _Prepared(router, embedder, strong, weak, inline=not getattr(embedder, "batching_pays", True))
            self._prepared = prep
        return prep

    def score(self, router, prompt: str) -> tuple[float, bool]:  # noqa: ANN001
        """(P(strong wins), whether it came from the cache)."""
        cached = self.cache.get(router, prompt)
        if cached is not None:
            return cached, True
        prep = self.prepare(router)
        if prep.inline:
            with self._inline_slots:
                vec = prep.embedder.encode([prompt])
            score = float(router.score_embeddings(vec, prep.strong, prep.weak, prompts=[prompt])[0])
            self.cache.put(router, prompt, score)
            with self._lock:
                self.scored += 1  # prompts the router scored, inline or batched
            return score, False
        future: Future = Future()
        self._queue.put((router, prompt, future))
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="router-batcher", daemon=True)
                self._thread.start()
        score = future.result()
        self.cache.put(router, prompt, score)
        return score, False

    def close(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            groups: dict[int, tuple[object, list]] = {}
            for router, prompt, future in batch:  # a router swap mid-batch: score each with its own
                groups.setdefault(id(router), (router, []))[1].append((prompt, future))
            for router, items in groups.values():
                try:
                    scores = router.score([p for p, _ in items], self.strong, self.weak)
                    for (_, future), value in zip(items, scores, strict=True):
                        future.set_result(float(value))
                except Exception as exc:  # noqa: BLE001 - every waiter hears about it
                    for _, future in items:
                        future.set_exception(exc)
            self.batches += 1
            self.scored += len(batch)


class RouterState:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.snapshot = Snapshot(router=None, version=None, alpha=settings.alpha, alpha_source="default")
        self.last_error: str | None = None
        self.last_check: str | None = None
        self.reloads = 0
        self._reload_lock = threading.Lock()
        self.batcher = ScoreBatcher(settings.strong_router_name, settings.weak_router_name,
                                    cache_size=settings.routing_cache_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_change: list = []  # callbacks(snapshot) e.g. metrics
        self.load_checks: list = []  # check(router) raising when a new version must not go live (the fleet's names)

    # --- reload ---------------------------------------------------------------------------------
    def _load(self, version: str):  # noqa: ANN202
        uri = f"models:/{self.settings.router_model_name}/{version}"
        router = load_router(uri, self.settings)
        # must know our pair and score, or it does not go live
        router.score(["warm-up prompt"], self.settings.strong_router_name, self.settings.weak_router_name)
        for check in self.load_checks:
            check(router)
        return router

    def reload(self) -> dict:
        """Check the champion alias and alpha; swap if either changed. Never raises."""
        with self._reload_lock:
            current = self.snapshot
            errors: list[str] = []
            router, version, loaded_at = current.router, current.version, current.loaded_at
            no_router_reason = current.no_router_reason
            try:
                live = registry.version_by_alias(self.settings.router_model_name, registry.CHAMPION, self.settings)
            except Exception as exc:  # noqa: BLE001 - MLflow down: keep serving, report it
                errors.append(f"cannot read {self.settings.router_model_name}@champion from "
                              f"{self.settings.resolved_registry_uri}: {type(exc).__name__}: {str(exc)[:300]}")
                if router is None:  # never loaded one: say why, not "no champion"
                    no_router_reason = registry_unreachable(self.settings.resolved_registry_uri)
            else:
                no_router_reason = NO_CHAMPION
                if live is None:
                    router, version, loaded_at = None, None, None
                elif live.version != current.version:
                    try:
                        router, version = self._load(live.version), live.version
                        loaded_at = datetime.now(UTC).isoformat()
                        log.info("router version %s is live (was %s)", version, current.version)
                    except Exception as exc:  # noqa: BLE001 - a bad version must not take serving down
                        errors.append(f"router version {live.version} failed to load; still serving "
                                      f"{current.version}: {type(exc).__name__}: {str(exc)[:300]}")
            alpha, alpha_source, alpha_reason = current.alpha, current.alpha_source, current.alpha_reason
            try:
                with session_scope(self.settings) as session:
                    live_a = live_alpha(session, self.settings, router)
                alpha, alpha_source, alpha_reason = live_a.alpha, live_a.source, live_a.reason
            except Exception as exc:  # noqa: BLE001
                errors.append(f"cannot read the live alpha: {type(exc).__name__}: {str(exc)[:200]}")
            new = Snapshot(router, version, alpha, alpha_source, loaded_at, alpha_reason, no_router_reason)
            changed = (new.version, new.alpha) != (current.version, current.alpha) or new.router is not current.router
            if changed:
                self.snapshot = new  # one reference assignment: atomic for readers
                self.reloads += 1
                for callback in self.on_change:
                    callback(new)
            elif new.no_router_reason != current.no_router_reason:  # only the reason: no callbacks
                self.snapshot = new
            self.last_error = redact("; ".join(errors)) if errors else None
            self.last_check = datetime.now(UTC).isoformat()
            return {"changed": changed, "router_version": new.version, "alpha": new.alpha,
                    "error": self.last_error}

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.reload_interval_s):
            self.reload()

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="router-reloader", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self.batcher.close()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # --- decide ---------------------------------------------------------------------------------
    def decide(self, prompt: str) -> Decision:
        """Route one prompt (blocking: embeds the prompt; call from a threadpool)."""
        t0 = time.perf_counter()
        snap = self.snapshot
        if snap.router is None:
            return Decision("strong", None, snap.alpha, None, snap.no_router_reason, (time.perf_counter() - t0) * 1000,
                            alpha_source=snap.alpha_source)
        try:
            p, cached = self.batcher.score(snap.router, prompt)
        except Exception as exc:  # noqa: BLE001 - a scoring failure degrades to the safe choice
            log.warning("routing failed, sending to strong: %s", exc)
            return Decision("strong", None, snap.alpha, snap.version,
                            f"routing failed ({type(exc).__name__}): routing to strong",
                            (time.perf_counter() - t0) * 1000, alpha_source=snap.alpha_source)
        role = "strong" if p >= snap.alpha else "weak"
        op = ">=" if role == "strong" else "<"
        return Decision(role, p, snap.alpha, snap.version,
                        f"P(strong wins)={p:.3f} {op} alpha={snap.alpha:.3f} ({snap.alpha_source}): routing to {role}",
                        (time.perf_counter() - t0) * 1000, cached=cached, alpha_source=snap.alpha_source)
