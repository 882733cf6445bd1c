"""Backends from settings: `make_backend(settings, "weak" | "strong")` and `make_pair(settings)`.

Per role: ROUTEROPS_{WEAK,STRONG}_BACKEND = local | openai | replay and _MODEL, _GGUF_FILE,
_BASE_URL, _API_KEY (or OPENAI_API_KEY), _REPLAY_FILE (else ROUTEROPS_REPLAY_FILE, filtered by model).
A local strong model with ROUTEROPS_STRONG_SAMPLES > 1 is best-of-k over its weights (the embedded
default: SmolLM2 greedy as weak, SmolLM2 best-of-5 as strong). Set STRONG_SAMPLES=1 for a real
second model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from routerops.backends.base import Backend
from routerops.backends.local import BestOfKBackend, LocalBackend
from routerops.backends.openai_http import OpenAIHTTPBackend
from routerops.backends.replay import ReplayBackend
from routerops.local_models import LLMSpec
from routerops.settings import Settings

Role = Literal["weak", "strong"]


@dataclass
class BackendPair:
    weak: Backend
    strong: Backend

    def by_role(self, role: str) -> Backend:
        return self.weak if role == "weak" else self.strong


def make_backend(settings: Settings, role: Role) -> Backend:
    if role not in ("weak", "strong"):
        raise ValueError(f"role must be 'weak' or 'strong', not {role!r}")
    kind = getattr(settings, f"{role}_backend")
    model = getattr(settings, f"{role}_model")
    if kind == "local":
        spec = LLMSpec.resolve(model, getattr(settings, f"{role}_gguf_file"), settings.device)
        base = LocalBackend(spec, name=model)
        if role == "strong" and settings.strong_samples > 1:
            return BestOfKBackend(base, k=settings.strong_samples)
        return base
    if kind == "openai":
        key = getattr(settings, f"{role}_api_key")
        api_key = key.get_secret_value() if key is not None else os.environ.get("OPENAI_API_KEY")
        base_url = getattr(settings, f"{role}_base_url")
        if not base_url:
            raise ValueError(f"ROUTEROPS_{role.upper()}_BASE_URL is required for the openai backend")
        return OpenAIHTTPBackend(base_url, model, api_key, timeout_s=settings.http_timeout_s,
                                 max_retries=settings.http_max_retries, backoff_s=settings.http_backoff_s,
                                 request_logprobs=settings.http_request_logprobs)
    if kind == "replay":
        path = getattr(settings, f"{role}_replay_file") or settings.replay_file
        if path is None:
            raise ValueError(f"ROUTEROPS_{role.upper()}_REPLAY_FILE or ROUTEROPS_REPLAY_FILE is required "
                             "for the replay backend")
        return ReplayBackend(path, model)
    raise ValueError(f"unknown backend kind {kind!r} for {role}")


def make_pair(settings: Settings) -> BackendPair:
    return BackendPair(weak=make_backend(settings, "weak"), strong=make_backend(settings, "strong"))
