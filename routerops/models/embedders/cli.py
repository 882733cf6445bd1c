"""`routerops embedder build static|onnx`: build an embedder folder once (data directory or image build)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from routerops.models.embedders.onnx import OnnxBuildConfig, OnnxEmbedder, build_onnx
from routerops.models.embedders.static import StaticBuildConfig, StaticEmbedder, build_static
from routerops.models.embeddings import BUILT_BACKENDS, built_embedder_path, get_embedder
from routerops.settings import get_settings


@click.group()
def embedder() -> None:
    """Build and inspect the fast embedders (static table, ONNX int8)."""


@embedder.group()
def build() -> None:
    """Build an embedder folder from the shipped MiniLM (offline)."""


@build.command("static")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder to write (default: embedding_static_path, else data_dir/embedders/...).")
@click.option("--dim", type=int, default=256, show_default=True, help="PCA dimensions.")
@click.option("--max-tokens", type=int, default=512, show_default=True,
              help="A longer prompt keeps its last tokens.")
@click.option("--vocab-limit", type=int, default=None, help="Distil only the N most frequent multi-character tokens (quick tests).")
@click.option("--threads", type=int, default=1, show_default=True, help="torch threads for the distillation.")
def build_static_command(out: Path | None, dim: int, max_tokens: int, vocab_limit: int | None,
                         threads: int) -> None:
    """Distil a static token-vector table from all-MiniLM-L6-v2 (a few minutes on 2 cores)."""

    settings = get_settings()
    out = out or settings.resolved_static_embedder_path
    manifest = build_static(out, StaticBuildConfig(dim=dim, max_tokens=max_tokens, vocab_limit=vocab_limit),
                            threads=threads)
    name = StaticEmbedder(out).name
    click.echo(json.dumps({"path": str(out), "name": name, "build_seconds": manifest["build_seconds"],
                           "tokens_distilled": manifest["tokens_distilled"]}))


@build.command("onnx")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder to write (default: embedding_onnx_path, else data_dir/embedders/...).")
@click.option("--per-tensor", is_flag=True, help="Per-tensor int8 (smaller loss of speed, more of accuracy).")
def build_onnx_command(out: Path | None, per_tensor: bool) -> None:
    """Export MiniLM to ONNX and quantize its weights to int8 (per channel)."""

    settings = get_settings()
    out = out or settings.resolved_onnx_embedder_path
    manifest = build_onnx(out, OnnxBuildConfig(per_channel=not per_tensor))
    name = OnnxEmbedder(out).name
    click.echo(json.dumps({"path": str(out), "name": name, "build_seconds": manifest["build_seconds"],
                           "cosine_vs_torch": manifest.get("cosine_vs_torch")}))


@embedder.command("info")
@click.option("--backend", type=click.Choice(["static", "onnx"]), default=None,
              help="Default: the configured embedding_backend.")
def info_command(backend: str | None) -> None:
    """The configured embedder's name (what routers and the cache record) and folder."""

    settings = get_settings()
    backend = backend or settings.embedding_backend
    emb = get_embedder(settings, backend=backend)
    out = {"backend": backend, "name": emb.name, "dim": emb.dim}
    if backend in BUILT_BACKENDS:
        out["path"] = str(built_embedder_path(settings, backend))
    click.echo(json.dumps(out))
