"""Log a trained cascade scorer to MLflow and register it as `challenger`."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from routerops import registry
from routerops.models.cascade_scorer.model import META_FILE, CascadeScorer
from routerops.models.cascade_scorer.registry import ARTIFACT_NAME, PYFUNC_CODE, SCORER_MODEL_NAME
from routerops.redact import redact_values
from routerops.settings import Settings


def log_cascade_scorer(scorer: CascadeScorer, settings: Settings, *, metrics: dict[str, float],
                       params: dict[str, Any], register: bool = True, plots: list[Path] | None = None
                       ) -> tuple[str, str | None]:
    """Log the scorer and its figures to one run; register it and point `challenger` at it.
    Returns (run_id, registered version or None)."""

    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    registry.configure_mlflow(settings)
    with mlflow.start_run(run_name="cascade-scorer") as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params(redact_values({k: v for k, v in params.items() if v is not None}))
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
