"""`routerops router score` end to end against a real MLflow store, and the router loader / pyfunc.

One router is trained for the module (on the fixture preferences) and registered as version 1."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SESSION_ENV

from routerops.model_names import UnknownModelError
from routerops.orchestration.cli import cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "router"
PROMPTS = [
    "Solve for x: 7x - 3 = 25.",
    "Write a Python function that merges two sorted lists.",
    "Hey! How is your weekend going?",
    "Tell me something nice about otters.",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):  # noqa: ANN001, ANN201
    """An isolated data dir (SQLite DB + MLflow store) with the fixture imported and a router trained."""
    from routerops.db import dispose_engines, migrate
    from routerops.importers.core import import_file
    from routerops.settings import get_settings
    from routerops.training.train_router import train_router

    tmp = tmp_path_factory.mktemp("score")
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith("ROUTEROPS_") and key not in SESSION_ENV:
                mp.delenv(key)
        mp.setenv("ROUTEROPS_DATA_DIR", str(tmp / "data"))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'data' / 'mlflow.db'}")
        mp.chdir(tmp)
        settings = get_settings()
        settings.ensure_data_dir()
        migrate.upgrade("head", settings=settings)
        import_file(settings, "native", FIXTURES / "prefs.jsonl", progress=False)
        result = train_router(settings, val_fraction=0.3, progress=False)
        (tmp / "in.jsonl").write_text(
            "\n".join(json.dumps({"id": f"q{i}", "prompt": p}) for i, p in enumerate(PROMPTS)) + "\n"
        )
        yield settings, result, tmp
        dispose_engines()


def _score(tmp: Path, uri: str, strong: str, weak: str, name: str = "out.jsonl", input_name: str = "in.jsonl"):  # noqa: ANN202
    result = CliRunner().invoke(cli, ["router", "score", "--model-uri", uri, "--strong", strong, "--weak", weak,
                                      "--input", str(tmp / input_name), "--output", str(tmp / name)])
    rows = [json.loads(line) for line in (tmp / name).read_text().splitlines()] if result.exit_code == 0 else []
    return result, rows


def test_score_by_every_uri_form_and_alias(trained) -> None:  # noqa: ANN001
    _, result, tmp = trained
    res, by_alias = _score(tmp, "models:/mf-router@challenger", "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1")
    assert res.exit_code == 0, res.output
    assert [r["id"] for r in by_alias] == ["q0", "q1", "q2", "q3"]
    p = np.array([r["p_strong_wins"] for r in by_alias])
    assert ((p > 0) & (p < 1)).all()
    assert min(p[:2]) > max(p[2:]), p  # math/code prompts need the strong model more than chit-chat
    assert "version 1" in res.output

    for uri, strong, weak in [
        ("models:/mf-router/1", "gpt4_1106_preview", "mistralai/mixtral-8x7b-chat"),  # AlpacaEval / RouterBench names
        (f"runs:/{result.run_id}/router", "openai/gpt-4-1106-preview", "Mixtral-8x7B-Instruct-v0.1"),
    ]:
        res, rows = _score(tmp, uri, strong, weak, name="other.jsonl")
        assert res.exit_code == 0, res.output
        np.testing.assert_allclose([r["p_strong_wins"] for r in rows], p, atol=1e-6)

    res, swapped = _score(tmp, "models:/mf-router/1", "mixtral-8x7b-chat", "gpt-4-1106-preview", name="swap.jsonl")
    np.testing.assert_allclose([r["p_strong_wins"] for r in swapped], 1 - p, atol=1e-5)


def test_unknown_model_and_missing_alias(trained) -> None:  # noqa: ANN001
    _, _, tmp = trained
    res, _ = _score(tmp, "models:/mf-router@challenger", "gpt-5", "mixtral-8x7b-chat", name="bad.jsonl")
    assert res.exit_code != 0
    assert "unknown model 'gpt-5'" in res.output
    assert "gpt-3.5-turbo-1106, gpt-4-1106-preview, mixtral-8x7b-instruct-v0.1" in res.output
    assert not (tmp / "bad.jsonl").exists()

    res, _ = _score(tmp, "models:/mf-router@champion", "gpt-4-1106-preview", "mixtral-8x7b-chat", name="bad.jsonl")
    assert res.exit_code != 0 and "no router at models:/mf-router@champion" in res.output


def test_bad_lines_are_reported_and_skipped(trained) -> None:  # noqa: ANN001
    _, _, tmp = trained
    (tmp / "mixed.jsonl").write_text(
        '{"id": "a", "prompt": "What is 12 * 13?"}\n'
        "{not json\n"
        '{"id": "c"}\n'
        '{"id": "d", "prompt": "   "}\n'
        "\n"
        '{"id": "f", "prompt": "Good morning!"}\n'
    )
    res, rows = _score(tmp, "models:/mf-router/1", "gpt-4-1106-preview", "mixtral-8x7b-chat",
                       name="mixed_out.jsonl", input_name="mixed.jsonl")
    assert res.exit_code == 0, res.output
    assert [r["id"] for r in rows] == ["a", "f"]
    assert "line 2: bad JSON" in res.output and "line 3: no prompt" in res.output
    assert "line 4: no prompt" in res.output and "skipped 3 bad lines" in res.output


def test_loader_and_pyfunc_agree(trained) -> None:  # noqa: ANN001
    import mlflow
    import pandas as pd

    from routerops.models.router import load_router

    settings, result, _ = trained
    router = load_router("models:/mf-router@challenger", settings)
    assert router.version == "1" and router.run_id == result.run_id
    assert load_router("models:/mf-router/1", settings) is router  # cached per version
    assert router.vocabulary == ["gpt-3.5-turbo-1106", "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"]
    # the default embedder (static; the session's 32-d build) is recorded with the router
    assert router.embedding_model["backend"] == "static" and router.embedding_model["dim"] == 32
    assert router.embedding_model["name"].startswith("static:all-MiniLM-L6-v2-32d:")
    assert router.resolve("gpt4_1106_preview") == router.resolve("gpt-4-1106-preview") == "gpt-4-1106-preview"
    with pytest.raises(UnknownModelError, match="known models: gpt-3.5-turbo-1106"):
        router.resolve("claude-3-opus")
    direct = router.score(PROMPTS, "gpt-4-1106-preview", "mixtral-8x7b-chat")

    pyfunc = mlflow.pyfunc.load_model("models:/mf-router/1")
    out = pyfunc.predict(pd.DataFrame({"prompt": PROMPTS}),
                         params={"strong": "gpt-4-1106-preview", "weak": "mixtral-8x7b-chat"})
    np.testing.assert_allclose(out["p_strong_wins"].to_numpy(), direct, atol=1e-6)
    # per-row pairs override: the last two rows ask about a different weak model
    per_row = pyfunc.predict(pd.DataFrame({"prompt": PROMPTS, "strong": ["gpt-4-1106-preview"] * 4,
                                           "weak": ["mixtral-8x7b-chat"] * 2 + ["gpt-3.5-turbo-1106"] * 2}))
    np.testing.assert_allclose(per_row["p_strong_wins"].to_numpy()[:2], direct[:2], atol=1e-6)
    np.testing.assert_allclose(per_row["p_strong_wins"].to_numpy()[2:],
                               router.score(PROMPTS[2:], "gpt-4-1106-preview", "gpt-3.5-turbo-1106"), atol=1e-6)
