"""Query embeddings: one protocol, four backends (two built into folders, see routerops.models.embedders), and a database cache keyed by (embedder, prompt hash).

Every vector leaving this module is float32 and L2-normalized, so routers trained on one backend see
the same geometry at serving time. Embedders are created on first use and kept per process (keyed by
the settings that define them); nothing is loaded at import time.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sqlalchemy import select
from tqdm.auto import tqdm

from routerops.db.models import EmbeddingCache
from routerops.models.embedders.encoders import (  # noqa: F401 - the embedders' public names live here too
    Embedder,
    EmbeddingAPIError,
    EmbeddingRef,
    OpenAIEmbedder,
    SentenceTransformerEmbedder,
    l2_normalize,
)
from routerops.models.embedders.files import manifest_sha
from routerops.models.embedders.onnx import OnnxEmbedder
from routerops.models.embedders.static import StaticBuildConfig, StaticEmbedder, build_static
from routerops.settings import Settings
from routerops.text import prompt_hash

log = logging.getLogger(__name__)


BUILT_BACKENDS = ("static", "onnx")  # embedders that live in a folder built by `routerops embedder build`


def built_embedder_path(settings: Settings, backend: str, model: str | None = None) -> Path:
    """`model` when it names a folder, else the configured (or default) folder for the backend."""
    if model and Path(model).is_dir():
        return Path(model)
    return settings.resolved_static_embedder_path if backend == "static" else settings.resolved_onnx_embedder_path


def load_built_embedder(backend: str, path: Path, threads: int = 1) -> Embedder:
    if backend == "static":
        return StaticEmbedder(path)
    if backend == "onnx":
        return OnnxEmbedder(path, threads=threads)
    raise ValueError(f"{backend!r} is not a built embedder backend ({' | '.join(BUILT_BACKENDS)})")


def ensure_built_embedder(settings: Settings) -> Path | None:
    """Build the configured static embedder once if its folder is missing (the default embedder, so a
    fresh install needs it; `routerops init`, `up` and training call this, never an import). Returns
    the folder, or None for backends that need no build. ONNX stays an explicit `embedder build onnx`."""
    if settings.embedding_backend != "static":
        return None

    path = settings.resolved_static_embedder_path
    if manifest_sha(path) is None:
        log.warning("building the static embedder at %s (once; a few minutes on 2 cores)", path)
        # threads=None: the build runs before anything serves, so it may use every core
        build_static(path, StaticBuildConfig(), threads=None)
    return path


_embedders: dict[tuple, Embedder] = {}
_lock = threading.Lock()


def get_embedder(settings: Settings, backend: str | None = None, model: str | None = None,
                 truncation_side: str | None = None) -> Embedder:
    """The embedder the settings describe (or the arguments overriding them), once per process."""
    backend = backend or settings.embedding_backend
    model = model or settings.embedding_model
    truncation_side = truncation_side or settings.embedding_truncation_side
    if backend == "openai":
        base_url = settings.embedding_base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        key = (settings.embedding_api_key.get_secret_value() if settings.embedding_api_key
               else os.environ.get("OPENAI_API_KEY"))
        cache_key: tuple = (backend, model, base_url, settings.embedding_batch_size)
    elif backend == "sentence-transformers":
        cache_key = (backend, model, settings.embedding_batch_size, truncation_side)
    elif backend in BUILT_BACKENDS:
        path = built_embedder_path(settings, backend, model)
        # the files' hash is part of the key: a rebuilt folder is a different embedder
        cache_key = (backend, str(path.resolve()), manifest_sha(path), settings.embedding_onnx_threads)
    else:
        raise ValueError(f"unknown embedding backend {backend!r} (sentence-transformers | openai | static | onnx)")
    with _lock:
        embedder = _embedders.get(cache_key)
        if embedder is None:
            if backend in BUILT_BACKENDS:
                embedder = load_built_embedder(backend, path, threads=settings.embedding_onnx_threads)
            elif backend == "openai":
                embedder = OpenAIEmbedder(model, base_url, key, batch_size=settings.embedding_batch_size)
            else:
                embedder = SentenceTransformerEmbedder(model, batch_size=settings.embedding_batch_size,
                                                       truncation_side=truncation_side)
            _embedders[cache_key] = embedder
        return embedder


def embedding_ref(embedder: Embedder) -> EmbeddingRef:
    backend = getattr(embedder, "backend", None) or (
        "openai" if isinstance(embedder, OpenAIEmbedder) else "sentence-transformers")
    model = getattr(embedder, "model_ref", embedder.name)
    return EmbeddingRef(backend=backend, model=model, name=embedder.name, dim=int(embedder.dim),
                        truncation_side=getattr(embedder, "truncation_side", None))


def embed_cached(session, embedder: Embedder, prompts: Sequence[str], *, batch_size: int = 256,  # noqa: ANN001
                 progress: bool | None = None) -> np.ndarray:
    """Embeddings of `prompts` in input order; only prompts missing from EmbeddingCache are encoded.

    New vectors are added to the session (committed by the caller's transaction).
    """

    hashes = [prompt_hash(p) for p in prompts]
    text_by_hash: dict[str, str] = {}
    for h, p in zip(hashes, prompts, strict=True):
        text_by_hash.setdefault(h, p)
    found: dict[str, np.ndarray] = {}
    unique = list(text_by_hash)
    for i in range(0, len(unique), 500):  # stay under SQL parameter limits
        rows = session.execute(
            select(EmbeddingCache.prompt_hash, EmbeddingCache.vector, EmbeddingCache.dim).where(
                EmbeddingCache.embedder == embedder.name, EmbeddingCache.prompt_hash.in_(unique[i : i + 500])
            )
        )
        for h, blob, dim in rows:
            found[h] = np.frombuffer(blob, dtype="<f4", count=dim)
    missing = [h for h in unique if h not in found]
    if missing:
        show = progress if progress is not None else len(missing) > 500
        bar = tqdm(total=len(missing), desc=f"embedding ({embedder.name})", unit="prompt", disable=not show)
        for i in range(0, len(missing), batch_size):
            chunk = missing[i : i + batch_size]
            vectors = np.asarray(embedder.encode([text_by_hash[h] for h in chunk]), dtype=np.float32)
            for h, vec in zip(chunk, vectors, strict=True):
                found[h] = vec
                session.add(EmbeddingCache(embedder=embedder.name, prompt_hash=h, dim=int(vec.shape[0]),
                                           vector=vec.astype("<f4").tobytes()))
            session.flush()
            bar.update(len(chunk))
        bar.close()
        log.info("embedded %d new prompts (%d from cache)", len(missing), len(unique) - len(missing))
    if not hashes:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    return np.stack([found[h] for h in hashes]).astype(np.float32)
