"""The one interface every LLM backend implements (local transformers, OpenAI-compatible HTTP,
replay of recorded outputs). Serving, monitoring and training all talk to backends through it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Message = dict[str, str]  # OpenAI chat format: {"role": "user", "content": "..."}


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Generation:
    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    latency_ms: float = 0.0
    token_logprobs: list[float] | None = None  # log p of each generated token, where known
    extra: dict[str, Any] = field(default_factory=dict)


class BackendError(RuntimeError):
    """A backend could not answer (unreachable, timed out, no record for a prompt...).

    `unavailable` marks the backend itself as down or overloaded (connection error, timeout, 5xx or
    429 after retries, a broken stream): serving fails over and counts it against the backend's
    circuit breaker. Other errors (a prompt with no record, a malformed answer) are per request.
    `kind` is a short label for logs, reasons and metrics (ConnectError, HTTP 500, ...).
    """

    def __init__(self, message: str, *, unavailable: bool = False, kind: str = "error"):
        super().__init__(message)
        self.unavailable = unavailable
        self.kind = kind


@runtime_checkable
class Backend(Protocol):
    name: str  # the model name this backend answers as

    def generate(self, messages: list[Message], params: GenerationParams) -> Generation: ...

    def stream(self, messages: list[Message], params: GenerationParams) -> Iterator[str]:
        """Text deltas; the concatenation equals generate(...).text for the same seed."""
        ...


def last_user_prompt(messages: list[Message]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return str(message.get("content") or "")
    raise ValueError("messages contain no user message")
