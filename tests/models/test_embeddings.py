"""Query embeddings: the database cache, the sentence-transformers backend, the OpenAI-compatible
backend against a real local HTTP server (with a 500 first, to exercise the retry)."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from sqlalchemy import func, select

from routerops.db import session_scope
from routerops.db.models import EmbeddingCache
from routerops.models.embeddings import (
    EmbeddingAPIError,
    OpenAIEmbedder,
    SentenceTransformerEmbedder,
    embed_cached,
    get_embedder,
)


class CountingEmbedder:
    """Wraps a real embedder and records every text it is asked to encode."""

    def __init__(self, inner, name: str | None = None):  # noqa: ANN001
        self.inner = inner
        self.name = name or inner.name
        self.calls: list[list[str]] = []

    @property
    def dim(self) -> int:
        return self.inner.dim

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return self.inner.encode(texts)

    @property
    def encoded(self) -> list[str]:
        return [t for call in self.calls for t in call]


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder("all-MiniLM-L6-v2")


def test_sentence_transformer_vectors_are_normalized_float32(minilm: SentenceTransformerEmbedder) -> None:
    vecs = minilm.encode(["What is 2 + 2?", "Tell me a joke about cats."])
    assert vecs.dtype == np.float32 and vecs.shape == (2, 384) and minilm.dim == 384
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert minilm.name == "sentence-transformers:all-MiniLM-L6-v2:keep-end"


def test_long_prompts_keep_their_end(minilm: SentenceTransformerEmbedder) -> None:
    # few-shot prompts share a long prefix; only the end (the question) tells them apart
    prefix = " ".join(f"Example {i}: the answer is {i % 4}." for i in range(120))
    prompts = [prefix + " Question: what is the capital of France?", prefix + " Question: write a sorting function."]
    left = minilm.encode(prompts)
    assert float(left[0] @ left[1]) < 0.99
    right = SentenceTransformerEmbedder("all-MiniLM-L6-v2", truncation_side="right")
    assert right.name == "sentence-transformers:all-MiniLM-L6-v2"
    kept_start = right.encode(prompts)
    assert float(kept_start[0] @ kept_start[1]) > 0.9999


def test_cache_embeds_each_prompt_once(settings, minilm) -> None:  # noqa: ANN001
    counting = CountingEmbedder(minilm)
    first = ["Solve 3x + 1 = 10", "Hello there!", "Solve 3x + 1 = 10", "Write a haiku about rain"]
    with session_scope(settings) as session:
        vecs = embed_cached(session, counting, first)
    assert sorted(counting.encoded) == sorted(set(first))  # the duplicate is encoded once
    assert vecs.shape == (4, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(vecs[0], vecs[2])
    np.testing.assert_allclose(vecs, minilm.encode(first), atol=1e-5)  # input order kept

    counting.calls.clear()
    second = ["Write a haiku about rain", "  Hello there!  ", "A brand new prompt"]
    with session_scope(settings) as session:  # a new transaction: the vectors came from the database
        again = embed_cached(session, counting, second)
    assert counting.encoded == ["A brand new prompt"]  # " Hello there! " normalizes to a cached prompt
    np.testing.assert_allclose(again[0], vecs[3], atol=1e-6)
    np.testing.assert_allclose(again[1], vecs[1], atol=1e-6)
    with session_scope(settings) as session:
        assert session.scalar(select(func.count()).select_from(EmbeddingCache)) == 4

    other = CountingEmbedder(minilm, name="another-embedder")  # the cache is per embedder name
    with session_scope(settings) as session:
        embed_cached(session, other, ["Hello there!"])
    assert other.encoded == ["Hello there!"]


def test_get_embedder_is_cached_per_process(settings) -> None:  # noqa: ANN001
    assert get_embedder(settings) is get_embedder(settings)
    with pytest.raises(ValueError, match="unknown embedding backend"):
        get_embedder(settings, backend="word2vec")


# --- OpenAI-compatible endpoint -------------------------------------------------------------------
def fake_vector(text: str, dim: int = 8) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [b - 128.0 for b in digest[:dim]]


class EmbeddingServer:
    """A tiny OpenAI-style /v1/embeddings server; fails the first `fail_first` requests with 500."""

    def __init__(self, fail_first: int = 1, status: int = 500):
        self.requests: list[dict] = []
        self.auth: list[str | None] = []
        self.fail_first = fail_first
        self.status = status
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.auth.append(self.headers.get("Authorization"))
                if self.path != "/v1/embeddings":
                    self._send(404, {"error": "not found"})
                elif len(server.requests) <= server.fail_first:
                    self._send(server.status, {"error": {"message": "overloaded"}})
                else:
                    data = [{"object": "embedding", "index": i, "embedding": fake_vector(t)}
                            for i, t in enumerate(body["input"])]
                    data.reverse()  # clients must order by index, not by position
                    self._send(200, {"object": "list", "data": data, "model": body["model"],
                                     "usage": {"prompt_tokens": 1, "total_tokens": 1}})

            def _send(self, status: int, payload: dict) -> None:
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> EmbeddingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self.httpd.shutdown()
        self.httpd.server_close()


def test_openai_embedder_retries_batches_and_normalizes() -> None:
    texts = ["alpha", "beta", "gamma", "delta", "epsilon"]
    with EmbeddingServer(fail_first=1) as server:
        emb = OpenAIEmbedder("text-embedding-3-small", server.url, "sk-test", batch_size=2, backoff_s=0.01)
        vecs = emb.encode(texts)
    expected = np.asarray([fake_vector(t) for t in texts], dtype=np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(vecs, expected, atol=1e-6)
    assert vecs.dtype == np.float32 and emb.dim == 8
    # 1 failed + 3 batches (2 + 2 + 1); the failed batch was resent whole
    assert [r["input"] for r in server.requests] == [["alpha", "beta"], ["alpha", "beta"], ["gamma", "delta"],
                                                     ["epsilon"]]
    assert all(r["model"] == "text-embedding-3-small" for r in server.requests)
    assert set(server.auth) == {"Bearer sk-test"}
    assert emb.name == f"openai:{server.url}:text-embedding-3-small"


def test_openai_embedder_gives_up_with_a_clear_error() -> None:
    with EmbeddingServer(fail_first=100, status=400) as server:  # 400 is not retried
        emb = OpenAIEmbedder("m", server.url, None, backoff_s=0.01)
        with pytest.raises(EmbeddingAPIError, match="HTTP 400"):
            emb.encode(["x"])
        assert len(server.requests) == 1
    with EmbeddingServer(fail_first=100, status=503) as server:  # 503 is retried, then reported
        emb = OpenAIEmbedder("m", server.url, None, max_retries=2, backoff_s=0.01)
        with pytest.raises(EmbeddingAPIError, match="HTTP 503"):
            emb.encode(["x"])
        assert len(server.requests) == 3


def test_openai_embedder_through_settings_and_cache(settings, monkeypatch) -> None:  # noqa: ANN001
    with EmbeddingServer(fail_first=0) as server:
        monkeypatch.setenv("ROUTEROPS_EMBEDDING_BACKEND", "openai")
        monkeypatch.setenv("ROUTEROPS_EMBEDDING_MODEL", "text-embedding-3-small")
        monkeypatch.setenv("ROUTEROPS_EMBEDDING_BASE_URL", server.url)
        monkeypatch.setenv("ROUTEROPS_EMBEDDING_API_KEY", "sk-from-env")
        from routerops.settings import get_settings

        emb = get_embedder(get_settings())
        assert isinstance(emb, OpenAIEmbedder)
        with session_scope(settings) as session:
            embed_cached(session, emb, ["one", "two"])
            embed_cached(session, emb, ["two", "one"])
        assert [r["input"] for r in server.requests] == [["one", "two"]]
        assert server.auth == ["Bearer sk-from-env"]
