"""A trained router carries its embedder: built embedder folders travel inside the logged MLflow model,
and loading a router checks that the embedder it gets is the one it was trained with.

Two calls, kept here so the training and loading code need one line each:
- `embedder_artifacts(embedder, model_dir)`: extra pyfunc artifacts for `mlflow.pyfunc.log_model`
  (the static/ONNX folder copied to model_dir/embedder; nothing for sentence-transformers/OpenAI,
  which rebuild from their recorded model reference);
- `embedder_from_router_metadata(ref, router_dir, settings)`: the embedder for a loaded router, from
  its own artifact when it has one, else from this process's configuration; EmbedderMismatchError,
  naming both embedders, when that is not the embedder the router was trained with.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from routerops.models.embeddings import BUILT_BACKENDS, Embedder, get_embedder
from routerops.settings import Settings

EMBEDDER_ARTIFACT = "embedder"  # pyfunc artifact key, and the folder name inside the model's artifacts


class EmbedderMismatchError(RuntimeError):
    """The embedder available here is not the one the router was trained with."""


def embedder_artifacts(embedder: Embedder, model_dir: Path | str) -> dict[str, str]:
    """{"embedder": folder} for a built embedder (copied into model_dir), else {}."""
    src = getattr(embedder, "path", None)
    if getattr(embedder, "backend", None) not in BUILT_BACKENDS or src is None:
        return {}
    dst = Path(model_dir) / EMBEDDER_ARTIFACT
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    return {EMBEDDER_ARTIFACT: str(dst)}


def embedder_from_router_metadata(ref: dict[str, Any], router_dir: Path | str | None,
                                  settings: Settings) -> Embedder:
    """The embedder a router recorded (metadata["embedding"]); refuses any other one."""
    backend = ref["backend"]
    shipped = Path(router_dir) / EMBEDDER_ARTIFACT if router_dir is not None else None
    if backend in BUILT_BACKENDS:
        if shipped is not None and shipped.is_dir():
            source, model = f"the router's own {EMBEDDER_ARTIFACT}/ artifact", str(shipped)
        else:
            source, model = f"this server's embedding_{backend}_path", None
        embedder = get_embedder(settings, backend=backend, model=model)
    else:
        truncation = ref.get("truncation_side")
        if backend == "sentence-transformers" and truncation is None:
            # routers from before truncation was recorded: ":keep-end" in the name says which end
            truncation = "left" if str(ref.get("name", "")).endswith(":keep-end") else "right"
        source = "the recorded model reference"
        embedder = get_embedder(settings, backend=backend, model=ref["model"], truncation_side=truncation)
    # OpenAI names carry the base URL, which may legitimately differ between training and serving
    same = (embedder.name == ref["name"]) if backend != "openai" else (
        getattr(embedder, "model_ref", None) == ref["model"])
    if not same or int(embedder.dim) != int(ref["dim"]):
        raise EmbedderMismatchError(
            f"this router was trained with embedder {ref['name']} ({ref['dim']}-d) but would be served "
            f"with {embedder.name} ({embedder.dim}-d, from {source}): its scores would be meaningless. "
            f"Serve it with the embedder it was trained with (retrain, or restore that embedder's files)")
    return embedder
