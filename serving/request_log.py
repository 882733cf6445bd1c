"""The request log: one RequestLog row per served chat completion (the decision and what it cost).

Prices per 1M tokens come from the settings (ROUTEROPS_{WEAK,STRONG}_PRICE_IN/OUT) when either is
set, else from the model catalog (builtin models and the models table), else zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from routerops.db import session_scope
from routerops.db.models import RequestLog
from routerops.model_names import ModelCatalog, load_catalog
from routerops.settings import Settings
from routerops.text import prompt_hash


@dataclass
class Prices:
    by_role: dict[str, tuple[float, float]]

    @classmethod
    def from_settings(cls, settings: Settings, weak_name: str, strong_name: str) -> Prices:
        try:
            with session_scope(settings) as session:
                catalog = load_catalog(session)
        except Exception:  # noqa: BLE001 - a missing table must not stop serving; builtins suffice
            catalog = ModelCatalog.builtin()
        by_role = {}
        for role, name, p_in, p_out in (("weak", weak_name, settings.weak_price_in, settings.weak_price_out),
                                        ("strong", strong_name, settings.strong_price_in, settings.strong_price_out)):
            if not (p_in or p_out):
                try:
                    p_in, p_out = catalog.prices.get(catalog.resolve(name), (None, None))
                except KeyError:
                    p_in, p_out = None, None
            by_role[role] = (float(p_in or 0.0), float(p_out or 0.0))
        return cls(by_role)

    def cost(self, role: str, prompt_tokens: int, completion_tokens: int) -> float:
        p_in, p_out = self.by_role.get(role, (0.0, 0.0))
        return (prompt_tokens * p_in + completion_tokens * p_out) / 1e6


@dataclass
class LogEntry:
    request_id: str
    prompt: str
    completion: str
    strategy: str
    model_requested: str
    model_chosen: str
    p_strong_wins: float | None
    alpha: float | None
    router_version: str | None
    latency_ms: float
    routing_latency_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    api_key_name: str | None
    escalated: bool | None = None
    probe_score: float | None = None
    spec: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def write_entry(settings: Settings, entry: LogEntry) -> None:
    """Blocking: run in a threadpool."""
    spec = entry.spec or {}
    extra = dict(entry.extra)
    steps = extra.pop("cascade_steps", None)
    with session_scope(settings) as session:
        if steps:
            from serving.cascade_log import write_steps

            write_steps(session, entry.request_id, extra.get("cascade_models") or [s["model"] for s in steps], steps)
        session.add(RequestLog(
            id=entry.request_id, prompt_hash=prompt_hash(entry.prompt),
            prompt=entry.prompt if settings.store_prompts else None, completion=entry.completion,
            strategy=entry.strategy, model_requested=entry.model_requested, model_chosen=entry.model_chosen,
            p_strong_wins=entry.p_strong_wins, alpha=entry.alpha, router_version=entry.router_version,
            latency_ms=entry.latency_ms, routing_latency_ms=entry.routing_latency_ms,
            prompt_tokens=entry.prompt_tokens, completion_tokens=entry.completion_tokens, cost_usd=entry.cost_usd,
            escalated=entry.escalated, probe_score=entry.probe_score,
            spec_acceptance_rate=spec.get("acceptance_rate"), spec_tokens_per_pass=spec.get("tokens_per_target_pass"),
            spec_speedup=spec.get("speedup"), api_key_name=entry.api_key_name, extra=extra,
        ))
