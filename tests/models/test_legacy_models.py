"""Models the pre-restructure code registered (top-level `training` package, commit a0ffc9c) load
through today's loaders and give the numbers the old code gave, and loading them imports no
`training` module (routerops.models.legacy renames the old paths their pickles name).

The fixtures in tests/fixtures/legacy_models were written by the old code (make_fixtures.py there, see
its README); expected.json holds fixed inputs and what the old loaders returned for them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, ROOT, clean_env
from joblib import numpy_pickle

from routerops.models.cascade_scorer.combiner import ConstantCombiner
from routerops.models.cascade_scorer.features import StepInput
from routerops.models.cascade_scorer.registry import load_cascade_scorer
from routerops.models.legacy import LegacyModelError, load_joblib, renamed
from routerops.models.probes.model import load_probe
from routerops.models.router import load_router

LEGACY = FIXTURES / "legacy_models"
EXPECTED = json.loads((LEGACY / "expected.json").read_text())
OLD_PICKLES = [LEGACY / "cascade_scorer" / "artifacts" / "combiners.joblib",
               LEGACY / "cascade_scorer" / "artifacts" / "answer_scorer" / "answer_models.joblib"]


def _close(actual, expected) -> None:  # noqa: ANN001
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64),
                               rtol=1e-9, atol=1e-12)


def _training_modules() -> set[str]:
    return {m for m in sys.modules if m.split(".", 1)[0] == "training"}


def _steps(rows: list[list], queries: list[str], models: list[str]) -> list[StepInput]:
    """make_fixtures._steps: (query index, answer, rung) rows as expected.json records them."""
    bad = EXPECTED["cascade_scorer"]["bad_answers"]
    return [StepInput(query=queries[q], answer=a, model=models[r], previous=[bad[q]] * r,
                      second_sample=(a if q % 3 == 0 else None), token_logprobs=[-0.1 * (q + 1), -0.05])
            for q, a, r in rows]


def check_router(router) -> None:  # noqa: ANN001
    exp = EXPECTED["router"]
    prompts, emb = exp["prompts"], np.asarray(exp["embeddings"], dtype=np.float32)
    assert router.embedder.name == exp["embedder_name"]  # its own embedder/ artifact, as trained
    _close(router.score(prompts), exp["score_default_pair"])
    _close(router.score(prompts, "legacy-medium", "small"), exp["score_medium_vs_small"])
    _close(router.score_embeddings(emb, "large", "legacy-medium", prompts=prompts), exp["score_embeddings"])
    _close(router.difficulty_embeddings(emb, prompts=prompts), exp["difficulty_embeddings"])
    _close(router.reference_scores(), exp["reference_scores"])
    _close(router.alpha_for_share(0.3), exp["alpha_for_share_0.3"])


def check_probe(probe) -> None:  # noqa: ANN001
    exp = EXPECTED["probe"]
    _close(probe.score_features(np.asarray(exp["features"], dtype=np.float32)), exp["score_features"])


def check_cascade_scorer(scorer) -> None:  # noqa: ANN001
    exp = EXPECTED["cascade_scorer"]
    assert isinstance(scorer.combiners[1], ConstantCombiner)  # pickled as training.cascade_scorer.model's
    assert isinstance(scorer.answer_scorer.models["legacy-medium"], ConstantCombiner)
    for rung in ("0", "1"):
        _close(scorer.score(int(rung), _steps(exp["steps"][rung], exp["queries"], scorer.models)),
               exp["score"][rung])
    a = exp["answer_scorer"]
    _close(scorer.answer_scorer.predict(a["queries"], a["judged"], a["answers"]), a["predict"])


def test_the_fixtures_pickle_classes_under_the_old_module_paths() -> None:
    for path in OLD_PICKLES:
        assert b"training.cascade_scorer.model" in path.read_bytes(), path
    assert "training.router_model" in (LEGACY / "router" / "router_pyfunc.py").read_text()  # the old code's


def test_old_paths_are_renamed_to_where_the_classes_live_now() -> None:
    assert renamed("training.cascade_scorer.model", "ConstantCombiner") == (
        "routerops.models.cascade_scorer.combiner", "ConstantCombiner")
    assert renamed("training.probes.probe", "KeyResult") == ("routerops.models.probes.probe", "KeyResult")
    assert renamed("routerops.embedders.static", "StaticEmbedder") == (
        "routerops.models.embedders.static", "StaticEmbedder")
    assert renamed("sklearn.pipeline", "Pipeline") == ("sklearn.pipeline", "Pipeline")
    with pytest.raises(LegacyModelError, match="training.cascade_refit.Refit"):
        renamed("training.cascade_refit", "Refit")


def test_an_old_path_without_a_new_home_is_refused_without_importing_training(tmp_path: Path) -> None:
    # GLOBAL 'training.cascade_refit Refit', EMPTY_TUPLE, NEWOBJ, STOP: the default lookup would import
    # this checkout's top-level training/ (it is on sys.path here) as a second copy of routerops.training
    path = tmp_path / "old.joblib"
    path.write_bytes(b"\x80\x02ctraining.cascade_refit\nRefit\n)\x81.")
    before = _training_modules()
    with pytest.raises(LegacyModelError, match="pre-restructure"):
        load_joblib(path)
    assert _training_modules() == before
    assert numpy_pickle.NumpyUnpickler.__module__ == "joblib.numpy_pickle"  # joblib's own again


def test_legacy_folders_load_through_todays_loaders(settings) -> None:
    before = _training_modules()
    # the router loads from a model folder (its pyfunc layout); probe and scorer from the folder their
    # save() wrote, which is the pyfunc model's artifacts/
    check_router(load_router(str(LEGACY / "router"), settings))
    check_probe(load_probe(str(LEGACY / "probe" / "artifacts"), settings))
    check_cascade_scorer(load_cascade_scorer(str(LEGACY / "cascade_scorer" / "artifacts"), settings))
    assert _training_modules() == before


def _register_old_version(settings, folder: Path, name: str) -> str:  # noqa: ANN001
    """A registry version whose files are the old code's model folder, as a pre-restructure
    registration left it."""
    import mlflow

    from routerops import registry

    registry.configure_mlflow(settings)
    with mlflow.start_run(run_name=f"legacy-{name}") as run:
        mlflow.log_artifacts(str(folder), name)
    c = registry.client(settings)
    c.create_registered_model(name)
    mv = c.create_model_version(name, f"{run.info.artifact_uri}/{name}", run_id=run.info.run_id)
    return f"models:/{name}/{mv.version}"


def test_legacy_registered_versions_load_from_models_uris(settings) -> None:
    before = _training_modules()
    router = load_router(_register_old_version(settings, LEGACY / "router", settings.router_model_name), settings)
    assert router.version == "1"
    check_router(router)
    check_probe(load_probe(_register_old_version(settings, LEGACY / "probe", settings.probe_model_name), settings))
    scorer = load_cascade_scorer(_register_old_version(settings, LEGACY / "cascade_scorer", "cascade-scorer"),
                                 settings)
    check_cascade_scorer(scorer)
    assert _training_modules() == before


def test_outside_the_repository_loading_leaves_training_unimportable(tmp_path: Path) -> None:
    """A process outside the checkout (routerops on its path, not the checkout root) loads all three
    legacy models and scores with them; `training` never becomes importable."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "routerops").symlink_to(ROOT / "routerops", target_is_directory=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    code = textwrap.dedent(f"""
        import importlib.util, sys
        from pathlib import Path
        import numpy as np
        import routerops
        assert Path(routerops.__file__).resolve().parent == Path({str(ROOT / "routerops")!r}).resolve()
        from routerops.models.cascade_scorer.registry import load_cascade_scorer
        from routerops.models.probes.model import load_probe
        from routerops.models.router import load_router
        legacy = Path({str(LEGACY)!r})
        router = load_router(str(legacy / "router"))
        probe = load_probe(str(legacy / "probe" / "artifacts"))
        scorer = load_cascade_scorer(str(legacy / "cascade_scorer" / "artifacts"))
        print(router.score(["What is the capital of France?"])[0])
        print(probe.score_features(np.zeros((1, 6), np.float32))[0])
        print(scorer.combiners[1].predict_proba(np.zeros((1, 1)))[0, 1], type(scorer.combiners[1]).__module__)
        assert not [m for m in sys.modules if m.split(".")[0] == "training"], "a training module was imported"
        assert importlib.util.find_spec("training") is None
        try:
            import training
        except ModuleNotFoundError:
            print("import training: ModuleNotFoundError")
        else:
            raise SystemExit("import training succeeded: " + str(training))
    """)
    env = clean_env() | {"PYTHONPATH": str(site), "ROUTEROPS_DATA_DIR": str(tmp_path / "data"),
                         "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}"}
    env.pop("PYTHONSAFEPATH", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    _close(float(lines[0]), EXPECTED["router"]["score_default_pair"][0])
    assert lines[2].split() == ["1.0", "routerops.models.cascade_scorer.combiner"]
    assert lines[-1] == "import training: ModuleNotFoundError"
    assert os.path.isdir(ROOT / "training")  # the checkout has one: only the package path kept it out
