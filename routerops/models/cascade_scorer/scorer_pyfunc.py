"""MLflow "models from code" entry for the cascade scorer: MLflow runs this file to build the pyfunc."""

import mlflow

from routerops.models.cascade_scorer.registry import ScorerPyfunc

mlflow.models.set_model(ScorerPyfunc())
