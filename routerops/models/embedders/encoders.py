"""The encoders behind routerops.models.embeddings: the Embedder protocol, sentence-transformers and
OpenAI-compatible backends, and the reference a trained router records of its embedder."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import httpx
import numpy as np

from routerops.local_models import resolve_embedding_model

log = logging.getLogger(__name__)


@runtime_checkable
class Embedder(Protocol):
    name: str  # stable id: the embedding cache key, recorded with every trained router

    @property
    def dim(self) -> int: ...

    def encode(self, texts: list[str]) -> np.ndarray: ...


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class SentenceTransformerEmbedder:
    """A sentence-transformers model; "all-MiniLM-L6-v2" is the copy shipped on PyPI (no hub)."""

    def __init__(self, model: str = "all-MiniLM-L6-v2", batch_size: int = 64, device: str | None = None,
                 truncation_side: str = "left"):
        from sentence_transformers import SentenceTransformer

        if truncation_side not in {"left", "right"}:
            raise ValueError(f"truncation_side must be 'left' or 'right', got {truncation_side!r}")
        self.model_ref = model
        self.truncation_side = truncation_side
        # Different truncation gives different vectors for long prompts: part of the cache key.
        suffix = ":keep-end" if truncation_side == "left" else ""
        self.name = f"sentence-transformers:{model}{suffix}"
        self.batch_size = batch_size
        self._model = SentenceTransformer(resolve_embedding_model(model), device=device or "cpu")
        # Long few-shot prompts share their start; only their end tells them apart.
        self._model.tokenizer.truncation_side = truncation_side
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self._dim = int(get_dim())

    @property
    def dim(self) -> int:
        return self._dim

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        vectors = self._model.encode(
            list(texts), batch_size=self.batch_size, convert_to_numpy=True, normalize_embeddings=True,
            show_progress_bar=False,
        )
        return l2_normalize(vectors)


class EmbeddingAPIError(RuntimeError):
    pass


class OpenAIEmbedder:
    """An OpenAI-compatible /v1/embeddings endpoint, with batching and retries with backoff.

    `base_url` is the API root including /v1 (as the OpenAI client expects it).
    """

    RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}

    def __init__(self, model: str, base_url: str, api_key: str | None = None, *, batch_size: int = 64,
                 timeout: float = 30.0, max_retries: int = 4, backoff_s: float = 0.5):
        self.model_ref = model
        self.base_url = base_url.rstrip("/")
        self.name = f"openai:{self.base_url}:{model}"
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout, headers=headers)
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        if self._dim is None:  # the endpoint tells us its width on first use
            self.encode(["dimension probe"])
        assert self._dim is not None
        return self._dim

    def _post(self, texts: list[str]) -> np.ndarray:
        url = f"{self.base_url}/embeddings"
        last: str = ""
        for attempt in range(self.max_retries + 1):
            try:
                resp = self._client.post(url, json={"model": self.model_ref, "input": texts})
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code == 200:
                    data = sorted(resp.json()["data"], key=lambda d: d["index"])
                    if len(data) != len(texts):
                        raise EmbeddingAPIError(f"{url} returned {len(data)} vectors for {len(texts)} inputs")
                    return np.asarray([d["embedding"] for d in data], dtype=np.float32)
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                if resp.status_code not in self.RETRY_STATUS:
                    break
            if attempt < self.max_retries:
                delay = self.backoff_s * (2**attempt)
                log.warning("embedding request failed (%s); retrying in %.1fs", last, delay)
                time.sleep(delay)
        raise EmbeddingAPIError(f"embedding request to {url} failed: {last}")

    def encode(self, texts: list[str]) -> np.ndarray:
        chunks = [self._post(list(texts[i : i + self.batch_size])) for i in range(0, len(texts), self.batch_size)]
        if not chunks:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        vectors = l2_normalize(np.concatenate(chunks))
        self._dim = int(vectors.shape[1])
        return vectors


@dataclass(frozen=True)
class EmbeddingRef:
    """What a trained router records about its embedder, enough to rebuild it elsewhere."""

    backend: str  # "sentence-transformers" | "openai" | "static" | "onnx"
    model: str
    name: str
    dim: int
    truncation_side: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"backend": self.backend, "model": self.model, "name": self.name, "dim": self.dim,
                "truncation_side": self.truncation_side}
