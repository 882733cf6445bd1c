"""MLflow "models from code" entry for the deferral probe: MLflow runs this file to build the pyfunc."""

import mlflow

from routerops.models.probes.model import ProbePyfunc

mlflow.models.set_model(ProbePyfunc())
