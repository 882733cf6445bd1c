"""The fast embedders (issue 12): the static table and ONNX int8 build offline through the real CLI,
load from their folders, give the same vectors in another process, and travel with the routers
trained on them; a router refuses to serve with an embedder it was not trained with.

The static table is distilled from a 3,000-token subset (the most frequent words) of MiniLM's vocabulary (same code path as
the full build, which takes minutes); the ONNX build is the real one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from routerops.models.embedders.files import EmbedderFilesError

ROOT = Path(__file__).resolve().parents[2]
PREFS = Path(__file__).resolve().parents[1] / "fixtures" / "router" / "prefs.jsonl"
PROMPTS = ["What is the capital of France?", "Write a Python function that reverses a list.",
           "hello there", "", "Prove that the square root of two is irrational, step by step."]


def _build(kind: str, out: Path, *extra: str) -> dict:
    from routerops.orchestration.cli import cli

    result = CliRunner().invoke(cli, ["embedder", "build", kind, "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("static") / "static-small"
    info = _build("static", out, "--vocab-limit", "3000", "--dim", "32")
    assert info["tokens_distilled"] == 3000 and info["name"].startswith("static:all-MiniLM-L6-v2-32d:")
    return out


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "onnx-int8"
    info = _build("onnx", out)
    # int8 per-channel weights keep MiniLM's geometry (the probe sentences include a long few-shot one)
    assert info["cosine_vs_torch"]["min"] > 0.97, info
    return out


def _vectors_in_subprocess(kind: str, path: Path, out: Path) -> np.ndarray:
    code = ("import sys, numpy as np; from routerops.models.embeddings import load_built_embedder; "
            f"e = load_built_embedder({kind!r}, sys.argv[1]); "
            f"np.save(sys.argv[2], e.encode({PROMPTS!r})); print(e.name)")
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(out)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return np.load(out)


@pytest.mark.parametrize("kind", ["static", "onnx"])
def test_built_embedder_loads_offline_and_is_deterministic(kind: str, static_dir: Path, onnx_dir: Path,
                                                           tmp_path: Path) -> None:
    from routerops.models.embeddings import load_built_embedder

    path = static_dir if kind == "static" else onnx_dir
    emb = load_built_embedder(kind, path)
    vecs = emb.encode(PROMPTS)
    assert vecs.dtype == np.float32 and vecs.shape == (len(PROMPTS), emb.dim)
    norms = np.linalg.norm(vecs, axis=1)
    if kind == "static":  # an empty prompt has no tokens: the zero vector (router score 0.5)
        np.testing.assert_allclose(norms[[0, 1, 2, 4]], 1.0, atol=1e-5)
        assert norms[3] == 0.0
    else:
        np.testing.assert_allclose(norms, 1.0, atol=1e-4)
    # one at a time (the serving path) equals the batch path
    singles = np.concatenate([emb.encode([p]) for p in PROMPTS])
    np.testing.assert_allclose(singles, vecs, atol=1e-5)
    # another process reads the same files and gets exactly the same vectors
    np.testing.assert_array_equal(_vectors_in_subprocess(kind, path, tmp_path / "v.npy"), vecs)
    # meaning survives: a paraphrase is closer than an unrelated prompt
    a, b, c = emb.encode(["what is the capital of france", "paris is the capital city of france",
                          "write a computer program function"])
    assert float(a @ b) > float(a @ c) + 0.2


def test_static_keeps_the_end_of_long_prompts(static_dir: Path) -> None:
    from routerops.models.embedders.static import StaticEmbedder

    emb = StaticEmbedder(static_dir)
    body = " ".join(f"the answer is {i % 4}." for i in range(200))  # 1,000 tokens: over the 512 kept
    a, b, c = emb.encode(["paris france city " + body + " what is the capital of france",
                          "computer program code " + body + " what is the capital of france",
                          "paris france city " + body + " write a computer program function"])
    np.testing.assert_allclose(a, b, atol=1e-6)  # only the start differs: it was dropped
    assert float(a @ c) < 0.9999  # the end differs: kept


def test_changed_or_missing_files_fail_clearly(static_dir: Path, tmp_path: Path) -> None:
    from routerops.models.embedders.static import StaticEmbedder

    with pytest.raises(EmbedderFilesError, match="routerops embedder build static"):
        StaticEmbedder(tmp_path / "nowhere")
    copy = tmp_path / "copy"
    shutil.copytree(static_dir, copy)
    table = np.load(copy / "vectors.npy")
    table[2000] += np.float16(0.5)
    np.save(copy / "vectors.npy", table)
    with pytest.raises(EmbedderFilesError, match="changed after the build"):
        StaticEmbedder(copy)


def test_static_name_and_settings_backend(settings, static_dir: Path) -> None:  # noqa: ANN001
    from routerops.models.embeddings import embedding_ref, get_embedder
    from routerops.settings import Settings

    s = Settings(data_dir=settings.data_dir, embedding_backend="static", embedding_static_path=static_dir)
    emb = get_embedder(s)
    manifest = json.loads((static_dir / "manifest.json").read_text())
    assert emb.name == f"static:all-MiniLM-L6-v2-32d:{manifest['sha256'][:12]}"
    assert get_embedder(s) is emb  # once per process
    ref = embedding_ref(emb)
    assert (ref.backend, ref.dim, ref.name) == ("static", 32, emb.name)
    missing = Settings(data_dir=settings.data_dir, embedding_backend="static",
                       embedding_static_path=None)  # default folder: not built
    with pytest.raises(EmbedderFilesError, match="build it with `routerops embedder build static`"):
        get_embedder(missing)


def _train(settings_obj) -> str:  # noqa: ANN001
    from routerops.importers.core import import_file
    from routerops.training.train_router import train_router

    import_file(settings_obj, "native", PREFS, progress=False)
    return train_router(settings_obj, max_iter=60, progress=False).model_version


def test_router_ships_its_embedder_and_refuses_another(settings, static_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    from routerops.models.embedders.router_files import EmbedderMismatchError
    from routerops.models.embeddings import get_embedder
    from routerops.models.router import MFRouter, load_router
    from routerops.settings import Settings

    own = tmp_path / "trained-with"
    shutil.copytree(static_dir, own)
    s = Settings(data_dir=settings.data_dir, embedding_backend="static", embedding_static_path=own)
    version = _train(s)
    trained_name = get_embedder(s).name
    expected = get_embedder(s).encode(PROMPTS[:2])

    # serving: this server's own static folder is gone; the router brings its embedder with it
    shutil.rmtree(own)
    serving = Settings(data_dir=settings.data_dir)
    router = load_router(f"models:/{serving.router_model_name}/{version}", serving)
    assert router.embedding_model["name"] == trained_name
    assert router.embedder.name == trained_name
    np.testing.assert_array_equal(router.embedder.encode(PROMPTS[:2]), expected)
    assert router.score(PROMPTS[:2]).shape == (2,)

    # a copy of the router without its embedder, on a server whose static embedder is another build
    bare = tmp_path / "bare"
    shutil.copytree(router.artifact_dir, bare)
    shutil.rmtree(bare / "embedder")
    other = tmp_path / "other"
    _build("static", other, "--vocab-limit", "500", "--dim", "32")
    other_settings = Settings(data_dir=settings.data_dir, embedding_static_path=other)
    with pytest.raises(EmbedderMismatchError) as err:
        MFRouter.from_dir(bare, settings=other_settings).score(["hi"])
    message = str(err.value)
    assert trained_name in message and get_embedder(other_settings, backend="static").name in message
