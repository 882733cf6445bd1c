"""The cascade scorer in MLflow: logged as a pyfunc, registered as `cascade-scorer` with alias
`challenger` (a person moves `champion`: `routerops approve --model cascade-scorer N`), loaded back
by serving from any models:/, runs:/ URI or a local folder."""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel

from routerops.registry import pyfunc_artifact_dir
from routerops.settings import Settings, get_settings
from training.cascade_scorer.model import META_FILE, CascadeScorer

SCORER_MODEL_NAME = "cascade-scorer"
ARTIFACT_NAME = "cascade_scorer"
PYFUNC_CODE = Path(__file__).with_name("scorer_pyfunc.py")

_scorers: dict[tuple[str, ...], CascadeScorer] = {}
_lock = threading.Lock()


def load_cascade_scorer(model_uri: str, settings: Settings | None = None) -> CascadeScorer:
    """models:/NAME@ALIAS, models:/NAME/N, runs:/ID/PATH or a folder CascadeScorer.save wrote;
    cached per process and resolved version."""
    from routerops import registry

    settings = settings or get_settings()
    pinned = registry.pin_model_uri(model_uri, "cascade scorer", settings)
    with _lock:
        if pinned.cache_key in _scorers:
            return _scorers[pinned.cache_key]
        local = registry.download_model(pinned, "cascade scorer", settings)
        folder = local if pinned.local_dir is not None else pyfunc_artifact_dir(local, "scorer_meta", "a cascade scorer")
        scorer = CascadeScorer.from_dir(folder, version=pinned.version, uri=model_uri)
        _scorers[pinned.cache_key] = scorer
        return scorer


class ScorerPyfunc(PythonModel):
    """Input: DataFrame with `rung` (int), `query`, `answer`, optional `previous` (JSON list of the
    earlier rungs' answers), `second_sample`, `token_logprobs` (JSON list). Output: `p_correct`."""

    def load_context(self, context) -> None:  # noqa: ANN001
        self.scorer = CascadeScorer.from_dir(Path(context.artifacts["scorer_meta"]).parent)

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:  # noqa: ANN001
        from training.cascade_scorer.features import StepInput

        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        missing = {"rung", "query", "answer"} - set(df.columns)
        if missing:
            raise ValueError(f"input lacks columns {sorted(missing)}")

        def opt_json(row: pd.Series, col: str) -> Any:
            v = row.get(col)
            return json.loads(v) if isinstance(v, str) and v else None

        out = []
        for _, row in df.iterrows():
            rung = int(row["rung"])
            step = StepInput(query=str(row["query"]), answer=str(row["answer"]), model=self.scorer.models[rung],
                             previous=opt_json(row, "previous") or [],
                             second_sample=row.get("second_sample") if isinstance(row.get("second_sample"), str) else None,
                             token_logprobs=opt_json(row, "token_logprobs"))
            out.append(float(self.scorer.score(rung, [step])[0]))
        return pd.DataFrame({"p_correct": out})


def log_cascade_scorer(scorer: CascadeScorer, settings: Settings, *, metrics: dict[str, float],
                       params: dict[str, Any], register: bool = True, plots: list[Path] | None = None
                       ) -> tuple[str, str | None]:
    """Log the scorer and its figures to one run; register it and point `challenger` at it.
    Returns (run_id, registered version or None)."""
    import math

    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from routerops import registry

    registry.configure_mlflow(settings)
    with mlflow.start_run(run_name="cascade-scorer") as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params({k: v for k, v in params.items() if v is not None})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))})
        for p in plots or []:
            mlflow.log_artifact(str(p), "plots")
        folder = scorer.save(Path(tmp) / "scorer")
        artifacts = {"scorer_meta": str(folder / META_FILE)}
        for f in folder.iterdir():
            if f.name != META_FILE:
                artifacts[f"scorer_{f.name.replace('.', '_')}"] = str(f)
        info = mlflow.pyfunc.log_model(
            name=ARTIFACT_NAME, python_model=str(PYFUNC_CODE), artifacts=artifacts,
            signature=ModelSignature(
                inputs=Schema([ColSpec("long", "rung"), ColSpec("string", "query"), ColSpec("string", "answer"),
                               ColSpec("string", "previous", required=False),
                               ColSpec("string", "second_sample", required=False),
                               ColSpec("string", "token_logprobs", required=False)]),
                outputs=Schema([ColSpec("double", "p_correct")])),
            pip_requirements=[f"mlflow=={mlflow.__version__}", "numpy", "pandas", "scikit-learn", "torch",
                              "transformers", "routerops"],
            registered_model_name=SCORER_MODEL_NAME if register else None)
        version = None
        if register:
            version = str(info.registered_model_version)
            registry.set_challenger(SCORER_MODEL_NAME, version, settings)
            c = registry.client(settings)
            c.set_model_version_tag(SCORER_MODEL_NAME, version, "ladder", json.dumps(scorer.models))
            for k, v in metrics.items():
                if k.startswith("test_auroc_rung"):
                    c.set_model_version_tag(SCORER_MODEL_NAME, version, k, f"{v:.4f}")
        return run.info.run_id, version
