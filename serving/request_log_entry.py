"""One served request as the request log stores it (database row, buffer entry or spill-file line)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


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
    # when the request was served: a row written later (from the buffer or a spill file) keeps it
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
