"""Any OpenAI-compatible /v1/chat/completions endpoint (OpenAI, vLLM, Ollama, llama.cpp server...).

Retries with exponential backoff (honouring Retry-After) on 429, 5xx and connection errors; a stream
is retried only before its first byte, never after text has been handed out.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx

from routerops.backends.base import BackendError, Generation, GenerationParams, Message

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
CLIENT_ERROR_STATUS = {400, 413, 422}  # the request's fault: no failover, no breaker count


class OpenAIHTTPBackend:
    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, name: str | None = None,
                 timeout_s: float = 60.0, max_retries: int = 3, backoff_s: float = 0.5,
                 request_logprobs: bool = False):
        if not base_url:
            raise ValueError(f"OpenAI-compatible backend for {model!r} needs a base URL (e.g. http://host:8000/v1)")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = name or model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.request_logprobs = request_logprobs
        self._client: httpx.Client | None = None  # created on first use, never at import

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._client = httpx.Client(base_url=self.base_url, headers=headers,
                                        timeout=httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s)))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _body(self, messages: list[Message], params: GenerationParams, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": params.max_new_tokens,
                                "temperature": params.temperature, "top_p": params.top_p, "stream": stream}
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        if self.request_logprobs and not stream:
            body["logprobs"] = True
        return body

    def _sleep(self, attempt: int, response: httpx.Response | None) -> None:
        delay = self.backoff_s * (2**attempt)
        if response is not None and response.headers.get("retry-after", "").replace(".", "", 1).isdigit():
            delay = min(max(delay, float(response.headers["retry-after"])), 30.0)
        time.sleep(delay)

    def _with_retries(self, send):  # noqa: ANN001, ANN202 - send() -> httpx.Response (open)
        last, kind, unavailable = "", "error", True
        for attempt in range(self.max_retries + 1):
            response = None
            try:
                response = send()
            except httpx.TransportError as exc:
                last, kind = f"{type(exc).__name__}: {exc}", type(exc).__name__
            else:
                if response.status_code < 400:
                    return response
                response.read()
                last, kind = f"HTTP {response.status_code}: {response.text[:300]}", f"HTTP {response.status_code}"
                response.close()
                if response.status_code not in RETRY_STATUS:
                    # 400/413/422 refuse this request; 401/403/404 mean this backend is misconfigured
                    unavailable = response.status_code not in CLIENT_ERROR_STATUS
                    break
            if attempt < self.max_retries:
                log.warning("%s: attempt %d failed (%s); retrying", self.base_url, attempt + 1, last)
                self._sleep(attempt, response)
        raise BackendError(f"{self.name} at {self.base_url} failed after {attempt + 1} attempt(s): {last}",
                           unavailable=unavailable, kind=kind)

    def generate(self, messages: list[Message], params: GenerationParams) -> Generation:
        t0 = time.perf_counter()
        body = self._body(messages, params, stream=False)
        response = self._with_retries(lambda: self.client.post("/chat/completions", json=body))
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise BackendError(f"{self.name}: malformed chat completion from {self.base_url}: {exc!r}") from None
        usage = data.get("usage") or {}
        logprobs = None
        content = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
        if content:
            logprobs = [float(t["logprob"]) for t in content if "logprob" in t]
        return Generation(
            text=text, model=self.name, prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason=choice.get("finish_reason") or "stop",
            latency_ms=(time.perf_counter() - t0) * 1000, token_logprobs=logprobs,
            extra={"upstream_model": data.get("model")},
        )

    def stream(self, messages: list[Message], params: GenerationParams) -> Iterator[str]:
        body = self._body(messages, params, stream=True)

        def send() -> httpx.Response:
            request = self.client.build_request("POST", "/chat/completions", json=body)
            return self.client.send(request, stream=True)

        response = self._with_retries(send)
        finished = False  # [DONE] or a finish_reason: anything else is a truncated stream
        try:
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments (": keep-alive"), event names
                payload = line[5:].strip()
                if payload == "[DONE]":
                    finished = True
                    return
                try:
                    chunk = json.loads(payload)
                except ValueError:
                    raise BackendError(f"{self.name}: malformed SSE chunk: {payload[:200]!r}") from None
                if "error" in chunk:
                    raise BackendError(f"{self.name}: upstream error mid-stream: {chunk['error']}",
                                       unavailable=True, kind="stream error")
                for choice in chunk.get("choices") or []:
                    finished = finished or bool(choice.get("finish_reason"))
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        yield delta
        except httpx.TransportError as exc:
            raise BackendError(f"{self.name}: stream from {self.base_url} broke: {type(exc).__name__}: {exc}",
                               unavailable=True, kind=type(exc).__name__) from None
        finally:
            response.close()
        if not finished:
            raise BackendError(f"{self.name}: stream from {self.base_url} ended without a finish_reason or [DONE]",
                               unavailable=True, kind="truncated stream")
